"""Custom-domain resolver: the registry lookup behind a TTL cache.

- positive answers live ``ttl`` seconds, negative answers (unknown host) ``negative_ttl``;
- the cache is bounded (LRU, ``maxsize`` hosts) so hostile hosts cannot grow memory;
- single-flight: many concurrent misses for one host share one registry query;
- stale-if-error: when the registry cannot answer, the last known answer (even expired) is
  served and the failure logged; with nothing known the answer is ``UNAVAILABLE``. A failure
  is remembered for ``error_ttl`` seconds so an outage does not cost one timeout per request;
- per-host changes: ``refresh(hosts)`` (the registry's change log) re-reads the changed hosts
  that are cached, in one query per thousand, and forgets the others; every other host keeps
  its entry. A lookup that was in flight for a changed host does not write its answer;
  ``refresh(None)`` (a resync: any host may have changed) re-reads every cached host, and no
  lookup in flight and no remembered failure survives it.

The resolver knows nothing about HTTP; routing decides what an answer means.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog

from dispatcher.errors import RegistryUnavailable
from dispatcher.routing import UNAVAILABLE, DomainAnswer
from workers_registry.models import CustomDomain

__all__ = ["CustomDomainResolver", "DomainLookup", "DomainsLookup"]

DomainLookup = Callable[[str], Awaitable[CustomDomain | None]]
#: Many hosts at once: the entries that exist among them.
DomainsLookup = Callable[[Collection[str]], Awaitable[list[CustomDomain]]]

_log = structlog.get_logger("dispatcher.domains")


_V = TypeVar("_V")


class _LRU(OrderedDict[str, _V]):
    """At most ``maxsize`` keys; storing one more forgets the least recently used.

    Lookups are ``dict.get`` in C (cachetools' caches run Python code on every ``get``, and
    this is on every request to a tenant host).
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def use(self, key: str) -> _V | None:
        """The value of ``key`` (now the most recently used), or ``None``."""
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def replace(self, key: str, value: _V) -> None:
        """Give ``key`` a new value where it stands (no change of recency); absent: nothing."""
        if key in self:
            super().__setitem__(key, value)

    def __setitem__(self, key: str, value: _V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)


@dataclass(slots=True)
class _Entry:
    answer: CustomDomain | None
    expires_at: float


class CustomDomainResolver:
    """Answers "which custom domain entry is ``host``?" with as few queries as possible."""

    def __init__(
        self,
        lookup: DomainLookup,
        lookup_many: DomainsLookup,
        *,
        ttl: float,
        negative_ttl: float,
        maxsize: int,
        error_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._lookup_many = lookup_many
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._error_ttl = error_ttl
        self._clock = clock
        self._cache: _LRU[_Entry] = _LRU(maxsize)
        self._failed: _LRU[float] = _LRU(min(maxsize, 10_000))
        # A lookup writes its answer only while it is still the one in flight for its host:
        # a change to the host (``refresh``) drops it from here, so an answer read before the
        # change is never cached.
        self._inflight: dict[str, asyncio.Task[DomainAnswer]] = {}
        self.hits = 0
        self.misses = 0
        self.queries = 0

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def cached(self, host: str) -> CustomDomain | Literal[False] | None:
        """A fresh cached answer for ``host``, or ``False`` when a lookup is needed.

        Synchronous so the hot path pays no ``await`` on a hit.
        """
        entry = self._cache.use(host)
        if entry is not None and entry.expires_at > self._clock():
            self.hits += 1
            return entry.answer
        return False

    async def resolve(self, host: str) -> DomainAnswer:
        """The registry's answer for ``host``: a domain entry, ``None``, or ``UNAVAILABLE``."""
        answer = self.cached(host)
        if answer is not False:
            return answer
        self.misses += 1
        pending = self._inflight.get(host)
        if pending is None:
            # One task per miss, shared by every concurrent request for the host; shielded so
            # a client that disconnects does not cancel the lookup the others wait for.
            pending = asyncio.get_running_loop().create_task(self._refresh(host))
            self._inflight[host] = pending
            pending.add_done_callback(lambda done: self._forget(host, done))
        return await asyncio.shield(pending)

    async def refresh(self, hosts: Collection[str] | None) -> None:
        """The registry changed ``hosts`` (``None``: any host): re-read those that are cached.

        The others are only forgotten (a failure remembered, a lookup in flight), so the next
        request asks. Raises
        ``RegistryUnavailable`` (the cached entries stay, stale) if the registry cannot answer.
        """
        if hosts is None:  # any host: no lookup in flight may write, no failure stands
            self._inflight.clear()
            self._failed.clear()
            cached = list(self._cache)
        else:
            cached = []
            for host in hosts:
                self._failed.pop(host, None)
                self._inflight.pop(host, None)  # its answer may predate the change
                if host in self._cache:
                    cached.append(host)
        if not cached:
            return
        self.queries += 1  # one call, which the store splits into as many queries as it needs
        found = {entry.domain: entry for entry in await self._lookup_many(cached)}
        now = self._clock()
        for host in cached:
            answer = found.get(host)
            ttl = self._ttl if answer is not None else self._negative_ttl
            self._cache.replace(host, _Entry(answer, now + ttl))

    def _forget(self, host: str, task: asyncio.Task[DomainAnswer]) -> None:
        if self._inflight.get(host) is task:
            del self._inflight[host]

    async def _refresh(self, host: str) -> DomainAnswer:
        now = self._clock()
        stale = self._cache.get(host)
        if self._failed.get(host, 0.0) > now:
            return stale.answer if stale is not None else UNAVAILABLE
        self.queries += 1
        try:
            answer = await self._lookup(host)
        except RegistryUnavailable:
            self._failed[host] = self._clock() + self._error_ttl
            if stale is not None:
                _log.warning("domain_cache_stale_answer", host=host)
                return stale.answer
            _log.warning("domain_lookup_failed", host=host)
            return UNAVAILABLE
        if self._inflight.get(host) is asyncio.current_task():
            ttl = self._ttl if answer is not None else self._negative_ttl
            self._cache[host] = _Entry(answer, self._clock() + ttl)
            self._failed.pop(host, None)
        return answer
