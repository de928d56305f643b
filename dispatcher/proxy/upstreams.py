"""Upstream selection: which of a worker's upstream URLs gets the next request.

URLs are parsed once into ``Target`` objects (origin, base path, the ``Host`` to send) and
remembered (``dispatcher.memo``). Workers with several upstreams are served round-robin.
Passive health: a target that fails to connect is ejected for ``eject_seconds`` and skipped
while others are available (if every target is ejected they are all tried anyway: better a
likely failure than a sure one).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dispatcher.errors import UpstreamConnectFailed
from dispatcher.memo import Memo
from dispatcher.proxy.transport import Origin, RequestBody
from workers_registry.entries import WorkerEntry

__all__ = ["EJECT_SECONDS", "Target", "UpstreamSelector", "parse_target"]

T = TypeVar("T")

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: How long a target that refused a connection is skipped.
EJECT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream base URL, pre-parsed for the hot path."""

    url: str
    origin: Origin
    base_path: bytes  # without a trailing slash; empty for the root
    authority: bytes  # the upstream Host header: host, plus the port when not the default


def parse_target(url: str) -> Target:
    """Parse a (validated) upstream base URL."""
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return Target(
        url=url,
        origin=Origin(scheme, host, port),
        base_path=parts.path.rstrip("/").encode("ascii"),
        authority=authority.encode("ascii"),
    )


class UpstreamSelector:
    """Round-robin over each worker's upstreams, skipping recently failed targets."""

    def __init__(
        self,
        *,
        eject_seconds: float = EJECT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # URLs are parsed once; workers come and go, so the memo is bounded.
        self._targets: Memo[str, Target] = Memo(parse_target, 100_000)
        self._next: dict[str, int] = {}
        self._ejected: dict[str, float] = {}  # url -> until
        self._eject_seconds = eject_seconds
        self._clock = clock

    def candidates(self, worker: WorkerEntry) -> list[Target]:
        """The targets to try for one request, in order: the next in turn first."""
        urls = worker.upstreams
        if len(urls) == 1:
            return [self._targets[urls[0]]]
        turn = self._next.get(worker.name, 0)
        self._next[worker.name] = (turn + 1) % len(urls)
        ordered: Sequence[str] = urls[turn:] + urls[:turn]
        if self._ejected:
            now = self._clock()
            healthy = [url for url in ordered if self._ejected.get(url, 0.0) <= now]
            ordered = healthy or ordered
        return [self._targets[url] for url in ordered]

    def forget(self, old: WorkerEntry, new: WorkerEntry | None) -> None:
        """Worker ``old`` changed to ``new`` (``None``: removed): drop its turn and the
        ejections of the upstreams it no longer has. Nothing of any other worker moves."""
        if new is not None and new.upstreams == old.upstreams:
            return
        self._next.pop(old.name, None)
        kept = set(new.upstreams) if new is not None else set()
        for url in old.upstreams:
            if url not in kept:
                self._ejected.pop(url, None)

    async def first_accepting(
        self,
        targets: list[Target],
        attempt: Callable[..., Awaitable[T]],
        body: RequestBody | None = None,
        *args: Any,
    ) -> T:
        """What ``attempt`` gets from the first of ``targets`` that accepts a connection.

        The failover of both forwarders. ``attempt(target, position, *args)`` raises
        ``UpstreamConnectFailed`` when not a byte reached ``target``: the target is ejected
        for a while, and the request moves on to the next one while it can be replayed (no
        ``body``, or none of it sent yet); after the last target the error is raised. A target
        that accepted is restored. Other errors pass through at once.
        """
        last = len(targets) - 1
        for position, target in enumerate(targets):
            try:
                answer = await attempt(target, position, *args)
            except UpstreamConnectFailed:
                self.eject(target)
                if position == last or (body is not None and body.sent):
                    raise
                continue
            if position or self._ejected:
                self.restore(target)
            return answer
        raise AssertionError("unreachable: a worker has at least one upstream")

    def eject(self, target: Target) -> None:
        """Skip ``target`` for a while: it could not be connected to."""
        self._ejected[target.url] = self._clock() + self._eject_seconds

    def restore(self, target: Target) -> None:
        """``target`` answered: stop skipping it."""
        self._ejected.pop(target.url, None)

    def ejected(self) -> dict[str, float]:
        """Currently ejected targets and the seconds until each is tried again."""
        now = self._clock()
        expired = [url for url, until in self._ejected.items() if until <= now]
        for url in expired:
            del self._ejected[url]
        return {url: round(until - now, 3) for url, until in self._ejected.items()}
