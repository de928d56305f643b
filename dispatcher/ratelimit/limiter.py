"""``RateLimiter``: the per-worker and per-client request-rate limits (DESIGN.md, "Rate limits").

The data plane calls ``admit`` for a routed request whose worker has a limit (and only then:
a worker without one costs nothing here). ``admit`` returns when the request may go on and
raises otherwise:

- ``RateLimited`` (429 ``rate_limited``) with ``Retry-After`` and the httpapi ratelimit
  draft's ``RateLimit-Policy`` (every limit of the worker) and ``RateLimit`` (the limit that
  refused, ``r=0`` and ``t`` the seconds until it admits again) headers. Admitted responses
  carry none of these (they would cost a header on every response of the worker).
- ``RateLimitUnavailable`` (503 ``rate_limit_unavailable``) when Redis cannot answer and
  ``rate_limit_fail_open`` is off; with it on (the default) the request goes through.

Both limits of a request are charged together or not at all: a request one limit refuses
does not use up the other's budget. Keys are ``dispatcher:rl:{<worker>}`` and
``dispatcher:rl:{<worker>}:<client>``; the braces keep a worker's keys in one Redis Cluster
slot, so one script can take both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dispatcher.asgi import Exchange, Scope
from dispatcher.errors import RateLimited, RateLimitUnavailable
from dispatcher.proxy.headers import TrustPolicy
from dispatcher.ratelimit.client import client_key
from dispatcher.ratelimit.gcra import Limit, Verdict
from dispatcher.ratelimit.local import LocalCounters
from dispatcher.routing import Route
from dispatcher.settings import Settings
from workers_registry.entries import WorkerEntry

if TYPE_CHECKING:
    from dispatcher.ratelimit.counters import RedisCounters

__all__ = ["RateLimiter"]

_PREFIX = "dispatcher:rl:"


class RateLimiter(Collector):
    """Counts requests of rate-limited workers: in Redis with ``rate_limit_url``, else in this
    process alone. Built with the gateway; ``aclose`` it on shutdown. Its figures are a
    Prometheus collector (registered with the gateway's metrics)."""

    def __init__(self, settings: Settings, trust: TrustPolicy) -> None:
        self._trust = trust  # (the header policy's: which peers are proxies)
        self._fail_open = settings.rate_limit_fail_open
        self._local = LocalCounters()
        url = settings.rate_limit_url
        self._redis: RedisCounters | None = None
        if url is not None:
            # The Redis client is a tenth of a second of every start: only when it is used.
            from dispatcher.ratelimit.counters import RedisCounters

            self._redis = RedisCounters(url.get_secret_value(), timeout=settings.rate_limit_timeout)
        # The limits of each worker object last seen (snapshots replace the objects).
        self._limits: dict[str, _WorkerLimits] = {}
        self.limited = {"worker": 0, "client": 0}  # requests refused 429, by the limit
        self.unavailable = {"allowed": 0, "refused": 0}  # no verdict: fail open / closed

    async def admit(self, scope: Scope, route: Route, exchange: Exchange) -> None:
        """Charge one request of ``route``'s worker (which has a limit); raise if it may not
        go on. Most requests are answered without awaiting anything: in-process counters, a
        lease or a remembered refusal."""
        worker = route.worker
        exchange.worker = worker.name  # for the access line of a refused request
        exchange.route = route.kind
        cached = self._limits.get(worker.name)
        if cached is None or cached.worker is not worker:
            cached = self._limits[worker.name] = _WorkerLimits(worker)
        keys, limits = cached.keys, cached.limits
        if cached.per_client:
            client = scope.get("client")
            peer = client[0] if client else None
            keys = [*keys, f"{cached.tag}:{client_key(scope['headers'], peer, self._trust)}"]
        redis = self._redis
        if redis is None:
            verdict = self._local.take(keys, limits)
        else:
            answer = redis.known(keys)
            if answer is None:
                answer = await redis.take(keys, limits)
                if answer is None:
                    if self._fail_open:
                        self.unavailable["allowed"] += 1
                        return
                    self.unavailable["refused"] += 1
                    raise RateLimitUnavailable(headers={"Retry-After": "1"})
            verdict = answer
        if verdict.refused < 0:
            return
        raise self._refusal(worker, limits, verdict)

    def _refusal(self, worker: WorkerEntry, limits: list[Limit], verdict: Verdict) -> RateLimited:
        refused = limits[verdict.refused]
        self.limited[refused.name] += 1
        retry = max(1, math.ceil(verdict.wait / 1_000_000))
        message = (
            f"Worker '{worker.name}' is over its rate limit"
            if refused.name == "worker"
            else f"Too many requests from this client to worker '{worker.name}'"
        )
        return RateLimited(
            message,
            headers={
                "Retry-After": str(retry),
                "RateLimit-Policy": ", ".join(limit.policy() for limit in limits),
                "RateLimit": f'"{refused.name}";r=0;t={retry}',
            },
        )

    def forget(self, worker: str | None = None) -> None:
        """Drop the remembered limits of ``worker`` (it changed), or of every worker (a full
        load replaced them all)."""
        if worker is None:
            self._limits.clear()
        else:
            self._limits.pop(worker, None)

    async def probe(self) -> None:
        """Let an unavailable Redis be tried again now, within the backoff (health checks)."""
        if self._redis is not None:
            await self._redis.probe()

    def state(self) -> dict[str, Any]:
        """The limiter's state for ``/health/detailed``."""
        store = self._redis or self._local
        return {
            **store.state(),
            "fail_open": self._fail_open,
            "limited": dict(self.limited),
            "unavailable": dict(self.unavailable),
        }

    def collect(self) -> Iterator[Metric]:
        limited = CounterMetricFamily(
            "dispatcher_rate_limited",
            "Requests refused 429 rate_limited, by the limit that refused them",
            labels=["limit"],
        )
        for name, value in self.limited.items():
            limited.add_metric([name], value)
        yield limited
        unavailable = CounterMetricFamily(
            "dispatcher_rate_limit_unavailable",
            "Rate-limited requests Redis gave no verdict for, by outcome (allowed, refused)",
            labels=["outcome"],
        )
        for outcome, value in self.unavailable.items():
            unavailable.add_metric([outcome], value)
        yield unavailable
        redis = self._redis
        if redis is not None:
            yield CounterMetricFamily(
                "dispatcher_rate_limit_store_failures",
                "Redis calls of the rate limiter that failed or timed out",
                value=redis.failures,
            )
            yield CounterMetricFamily(
                "dispatcher_rate_limit_store_outages",
                "Periods in which the rate limiter's Redis was unavailable",
                value=redis.outages,
            )
            yield GaugeMetricFamily(
                "dispatcher_rate_limit_store_up",
                "1 while the rate limiter's Redis answers, 0 during an outage",
                value=int(redis.available),
            )

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


class _WorkerLimits:
    """A worker's limits, keys and key prefix, made once per worker object."""

    __slots__ = ("keys", "limits", "per_client", "tag", "worker")

    def __init__(self, worker: WorkerEntry) -> None:
        self.worker = worker
        self.tag = f"{_PREFIX}{{{worker.name}}}"
        self.keys: list[str] = []
        self.limits: list[Limit] = []
        if worker.rate_limit is not None:
            burst = worker.rate_burst or _one_second(worker.rate_limit)
            self.keys.append(self.tag)
            self.limits.append(Limit("worker", worker.rate_limit, burst))
        self.per_client = worker.client_rate_limit is not None
        if worker.client_rate_limit is not None:
            rate = worker.client_rate_limit
            self.limits.append(Limit("client", rate, _one_second(rate)))


def _one_second(rate: float) -> int:
    """The default burst: one second's worth of the rate (at least one request)."""
    return max(1, math.ceil(rate))
