"""``RedisCounters``: the GCRA counters in Redis, shared by every dispatcher process and host
(with no ``rate_limit_url`` they live in the process: ``LocalCounters`` in ``local.py``; this
module, and the Redis client with it, is imported only when a ``rate_limit_url`` is set).

``RedisCounters`` is built so that Redis trouble never takes traffic down:

- every call is bounded by ``rate_limit_timeout`` (connect included); slower is a failure;
- a failure marks the store unavailable, logs ``rate_limit_store_unavailable`` once for the
  whole outage and counts it; while unavailable, calls answer ``None`` at once (no timeout
  paid per request) until the backoff (doubling from 0.1 s to 2 s) lets one call probe Redis
  again; the first call that succeeds ends the outage (``rate_limit_store_recovered``);
- ``None`` means "no verdict": the limiter lets the request through or refuses it
  (``rate_limit_fail_open``).

One round trip per checked request at most, and far fewer at high rates (leases, remembered
refusals: see ``RedisCounters``): the script (``EVALSHA``, loaded on first use and again after
a Redis restart) does every key of the request at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, Final

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from dispatcher.ratelimit.gcra import ADMITTED, LEASE_SECONDS, REDIS_SCRIPT, Limit, Verdict

__all__ = ["RedisCounters"]

_log = structlog.get_logger("dispatcher.ratelimit")

_SCRIPT_SHA: Final = hashlib.sha1(REDIS_SCRIPT.encode("ascii"), usedforsecurity=False).hexdigest()
_MIN_BACKOFF: Final = 0.1
_MAX_BACKOFF: Final = 2.0
_POOL_SIZE: Final = 16
_MAX_REMEMBERED: Final = 100_000


class RedisCounters:
    """GCRA counters in Redis (``rate_limit_url``), shared by every process and host.

    Fewer than one round trip per request where the rate allows it:

    - leases: a call to Redis charges up to ``Limit.lease`` requests at once; the process
      admits the next ones from its lease (for at most ``LEASE_SECONDS``) without asking;
    - remembered refusals: a refusal says how long until the limit admits again; until then
      the process refuses that key by itself (no request could be admitted before anyway), so
      a flood over the limit costs Redis nothing;
    - one call per key at a time: requests arriving while a call for their key is under way
      wait for it and share its lease instead of calling too;
    - at most ``_POOL_SIZE`` connections; a request waiting for one longer than the timeout
      gets the no-verdict answer.
    """

    backend = "redis"

    def __init__(self, url: str, *, timeout: float) -> None:
        self._timeout = timeout
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=_POOL_SIZE,
            timeout=None,  # waiting for a connection is bounded by asyncio.timeout below
            socket_connect_timeout=timeout,
            socket_timeout=None,  # the call as a whole is bounded by asyncio.timeout
            # One immediate retry on a fresh connection (a pooled one may predate a Redis
            # restart), still inside the one timeout; no backoff: a request cannot wait.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self._redis = Redis.from_pool(pool)  # closing the client closes the pool
        self.available = True
        self.outages = 0  # unavailable periods begun
        self.failures = 0  # calls that failed (timeouts, refused connections, errors)
        self.calls = 0  # round trips made (for the benchmark's figures)
        self._since = time.monotonic()  # of the current state
        self._retry_at = 0.0
        self._backoff = _MIN_BACKOFF
        self._probing = False
        self._leases: dict[str, list[float]] = {}  # last key -> [requests left, expiry]
        self._refused: dict[str, tuple[float, int]] = {}  # key -> (until, limit index)
        self._calling: dict[str, asyncio.Future[None]] = {}  # last key -> the call under way

    def known(self, keys: list[str]) -> Verdict | None:
        """The verdict this process can give alone (a remembered refusal, a lease), charging
        the lease; ``None`` when Redis must be asked (``take``)."""
        now = time.monotonic()
        refused = self._refused
        if refused:
            for key in keys:
                entry = refused.get(key)
                if entry is not None:
                    if entry[0] > now:
                        return Verdict(entry[1], round((entry[0] - now) * 1_000_000))
                    del refused[key]
        lease = self._leases.get(keys[-1])
        if lease is not None and lease[0] >= 1 and lease[1] > now:
            lease[0] -= 1
            return ADMITTED
        return None

    async def take(self, keys: list[str], limits: list[Limit]) -> Verdict | None:
        """Charge the request to every key, or to none; ``None`` when Redis cannot say."""
        known = self.known(keys)
        if known is not None:
            return known
        lease_key = keys[-1]
        calling = self._calling.get(lease_key)
        if calling is not None:
            # Share the lease the call under way brings back (or make our own call after).
            await asyncio.shield(calling)
            return await self.take(keys, limits)
        done = self._calling[lease_key] = asyncio.get_running_loop().create_future()
        try:
            return await self._call(keys, limits, lease_key)
        finally:
            del self._calling[lease_key]
            done.set_result(None)

    async def _call(self, keys: list[str], limits: list[Limit], lease_key: str) -> Verdict | None:
        if not self.available:
            if self._probing or time.monotonic() < self._retry_at:
                return None
            self._probing = True
        want = min(limit.lease for limit in limits)
        args: list[int] = [want]
        for limit in limits:
            args += (limit.interval, limit.tolerance)
        self.calls += 1
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    reply = await self._redis.evalsha(_SCRIPT_SHA, len(keys), *keys, *args)
                except NoScriptError:  # first use, or Redis restarted: load it once
                    reply = await self._redis.eval(REDIS_SCRIPT, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._failed(exc)
            return None
        finally:
            self._probing = False
        if not self.available:
            self._recovered()
        index, wait, granted = int(reply[0]), int(reply[1]), int(reply[2])
        now = time.monotonic()
        self._trim(now)
        if index:
            self._refused[keys[index - 1]] = (now + wait / 1_000_000, index - 1)
            return Verdict(index - 1, wait)
        if granted > 1:
            self._leases[lease_key] = [granted - 1, now + LEASE_SECONDS]
        return ADMITTED

    def _trim(self, now: float) -> None:
        """Keep the remembered leases and refusals bounded: drop expired ones when full."""
        leases, refused = self._leases, self._refused
        if len(leases) >= _MAX_REMEMBERED:
            for key in [key for key, (_, expiry) in leases.items() if expiry <= now]:
                del leases[key]
            if len(leases) >= _MAX_REMEMBERED:
                leases.clear()
        if len(refused) >= _MAX_REMEMBERED:
            for key in [key for key, (until, _) in refused.items() if until <= now]:
                del refused[key]
            if len(refused) >= _MAX_REMEMBERED:
                refused.clear()

    async def probe(self) -> None:
        """Try Redis now if it is unavailable and the backoff allows (``/health/detailed``)."""
        if self.available or self._probing or time.monotonic() < self._retry_at:
            return
        self._probing = True
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._failed(exc)
            return
        finally:
            self._probing = False
        self._recovered()

    async def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.available:
            self.available = False
            self.outages += 1
            self._since = now
            self._backoff = _MIN_BACKOFF
            # The idle pooled connections belong to the Redis that failed: the next try after
            # the backoff starts on new ones instead of failing on each stale one in turn.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            # Once per outage, never per request; the exception's type only (no text: it may
            # carry the URL and its password).
            _log.warning("rate_limit_store_unavailable", backend="redis", error=type(exc).__name__)
        else:
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        self._retry_at = now + self._backoff

    def _recovered(self) -> None:
        now = time.monotonic()
        _log.warning(
            "rate_limit_store_recovered",
            backend="redis",
            outage_seconds=round(now - self._since, 3),
        )
        self.available = True
        self._since = now
        self._backoff = _MIN_BACKOFF

    def state(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "status": "ok" if self.available else "unavailable",
            "for_seconds": round(time.monotonic() - self._since, 3),
            "outages": self.outages,
            "failures": self.failures,
        }

    async def aclose(self) -> None:
        await self._redis.aclose()
