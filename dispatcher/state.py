"""The running dispatcher's state: lifecycle, the routing snapshot, what the control plane reads.

``DispatcherState`` owns the long-lived parts of one process: the registry store, the follower
that keeps the worker snapshot current (and the Postgres listener that wakes it), the
custom-domain resolver, the routing table built from the snapshot, the metrics, the
custom-domain verifier, and the upstream transport it closes on shutdown. It runs the ASGI
lifespan and implements the control plane's ``ControlState`` (health, metrics, ``/tls/ask``,
the registry and the verifier for the admin API).

It makes the route decision for the data plane and for ``/tls/ask`` alike (``route``): the
custom-domain answer from the cache, then the same pure routing the CLI's ``routing.resolve``
dispatches to (``resolve_control`` or ``resolve_tenant``, the host judged once).
It does not forward anything and writes no response: that is the gateway's job.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import structlog

from dispatcher.asgi import LIMITS_STATE_KEY, Receive, Scope, Send, ServerLimits
from dispatcher.domains import CustomDomainResolver
from dispatcher.errors import RegistryUnavailable, RoutingError
from dispatcher.hosts import normalize_wire_host
from dispatcher.logging import batched_logs
from dispatcher.metrics import LoopLagProbe, Metrics, StateReading
from dispatcher.onboarding import DomainVerifier, OnboardingMetrics
from dispatcher.proxy.headers import TrustPolicy
from dispatcher.proxy.transport import UpstreamTransport
from dispatcher.proxy.upstreams import UpstreamSelector
from dispatcher.ratelimit import RateLimiter
from dispatcher.routing import Route, RoutingTable, resolve_control, resolve_tenant
from dispatcher.settings import Settings
from workers_registry.announcements import PostgresListener
from workers_registry.changes import RegistryFollower, RegistrySnapshot
from workers_registry.entries import WorkerEntry
from workers_registry.store import RegistryStore

__all__ = ["DispatcherState"]

_log = structlog.get_logger("dispatcher")

#: ``/health/detailed`` waits this long for the registry before calling it unavailable.
_PROBE_TIMEOUT = 1.0


class DispatcherState:
    """One dispatcher process's state and lifecycle (the control plane's ``ControlState``)."""

    def __init__(
        self,
        settings: Settings,
        transport: UpstreamTransport,
        selector: UpstreamSelector,
        trust: TrustPolicy,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.selector = selector
        self.table = self._table(RegistrySnapshot(version=-1, workers=()))
        self.store: RegistryStore | None = None
        self.follower: RegistryFollower | None = None
        self.domains: CustomDomainResolver | None = None
        self.listener: PostgresListener | None = None
        self.metrics = Metrics(self._state_reading, per_worker=settings.metrics_per_worker)
        #: Move every full load out of the cyclic collector's view (``gc.freeze``): set by the
        #: server process (``dispatcher.cli.app_factory``), never in tests or embedding apps.
        self.freeze_loaded = False
        self.loop_lag: LoopLagProbe | None = None
        if settings.loop_lag_probe:
            self.loop_lag = LoopLagProbe()
            self.metrics.registry.register(self.loop_lag)
        self.limiter = RateLimiter(settings, trust)
        self.metrics.registry.register(self.limiter)
        self.onboarding_metrics = OnboardingMetrics()
        self.metrics.registry.register(self.onboarding_metrics)
        self.domain_verifier: DomainVerifier | None = None

    # -- the route decision -------------------------------------------------------------------

    async def route(
        self, host_header: str, raw_path: bytes, query: bytes, method: str
    ) -> Route | None:
        """The route of a request, or ``None`` for the control plane.

        Raises what ``routing.resolve`` raises (``RoutingError``, ``RegistryUnavailable``,
        ``InvalidRequest``) and ``InvalidHost``.
        """
        host = normalize_wire_host(host_header)
        table = self.table
        if table.is_control_host(host):  # a path or query route, or the control plane
            decision = resolve_control(raw_path, query, table, method=method)
            return decision if isinstance(decision, Route) else None
        domains = self.domains  # a tenant host: the custom-domain registry's answer first
        assert domains is not None, "lifespan has not run"
        cached = domains.cached(host)  # no coroutine at all when it is cached
        answer = await domains.resolve(host) if cached is False else cached
        return resolve_tenant(host, raw_path, query, table, answer)

    # -- what the control plane reads (``ControlState``) ---------------------------------------

    @property
    def worker_count(self) -> int:
        return len(self.table.workers)

    @property
    def registry(self) -> RegistryStore:
        if self.store is None:
            raise RegistryUnavailable("The worker registry is not open yet")
        return self.store

    @property
    def verifier(self) -> DomainVerifier:
        if self.domain_verifier is None:
            raise RegistryUnavailable("The worker registry is not open yet")
        return self.domain_verifier

    async def may_issue_certificate(self, domain: str) -> bool:
        """May Caddy get a certificate for ``domain``? (``/tls/ask``)

        Yes exactly when a request to that host would be forwarded to a worker: the same
        routing decision, from the same cache. Raises ``RegistryUnavailable`` when that
        cannot be known now (Caddy asks again later).
        """
        try:
            return await self.route(domain, b"/", b"", "GET") is not None
        except RoutingError:
            return False

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def _state_reading(self) -> StateReading:
        domains, follower = self.domains, self.follower
        return StateReading(
            cache_hits=domains.hits if domains else 0,
            cache_misses=domains.misses if domains else 0,
            cache_size=len(domains) if domains else 0,
            registry_reloads=follower.reloads if follower else 0,
            registry_version=follower.applied if follower else -1,
            workers=len(self.table.workers),
            registry_changes_applied=follower.changes_applied if follower else 0,
            registry_resyncs=follower.resyncs if follower else 0,
            registry_lag=follower.lag if follower else 0,
            registry_lag_seconds=follower.lag_seconds if follower else 0.0,
        )

    async def health_report(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: a registry probe with a short timeout, snapshot, cache and listener."""
        checks: dict[str, Any] = {}
        ok = True
        if self.store is None or self.follower is None or self.domains is None:
            return False, {"registry": {"status": "starting"}}
        started = time.perf_counter()
        try:
            version = await asyncio.wait_for(self.store.version(), _PROBE_TIMEOUT)
        except (RegistryUnavailable, TimeoutError):
            ok = False
            checks["registry"] = {"status": "unavailable", "backend": self.store.dialect}
        else:
            checks["registry"] = {
                "status": "ok",
                "backend": self.store.dialect,
                "version": version,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        follower = self.follower
        checks["snapshot"] = {
            "version": follower.applied,
            "applied_seq": follower.applied,
            "head_seq": follower.head,
            "confirmed_seq": follower.confirmed,
            "announcements_refuted": follower.refuted,
            "lag": follower.lag,
            "lag_seconds": round(follower.lag_seconds, 3),
            "workers": len(self.table.workers),
            "age_seconds": round(time.monotonic() - follower.applied_at, 3),
            "reloads": follower.reloads,
            "resyncs": follower.resyncs,
            "changes_applied": follower.changes_applied,
        }
        domains = self.domains
        checks["domain_cache"] = {
            "size": len(domains),
            "hits": domains.hits,
            "misses": domains.misses,
            "queries": domains.queries,
            "hit_ratio": round(domains.hit_ratio, 4),
        }
        checks["upstreams"] = {"ejected": self.selector.ejected()}
        # Reported, not judged: every replica shares the one Redis, so taking replicas out of
        # rotation for it would not help; rate_limit_fail_open decides what requests see.
        await self.limiter.probe()
        checks["rate_limit"] = self.limiter.state()
        if self.listener is not None:
            checks["listener"] = {"connected": self.listener.connected}
            ok = ok and self.listener.connected
        else:
            checks["listener"] = {"connected": None, "mechanism": "poll"}
        return ok, checks

    # -- lifecycle ------------------------------------------------------------------------------

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI lifespan: ``startup`` on start, ``shutdown`` on stop.

        It also tells the HTTP server the request deadlines to hold clients to, through the
        lifespan state the server hands every connection (``dispatcher.asgi.ServerLimits``).
        """
        state = scope.get("state")
        if state is not None:
            state[LIMITS_STATE_KEY] = ServerLimits(
                request_head_timeout=self.settings.request_head_timeout,
                request_body_timeout=self.settings.request_body_timeout,
                stream_idle_timeout=self.settings.stream_idle_timeout,
            )
        async with batched_logs():
            await self._lifespan_events(receive, send)

    async def _lifespan_events(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    _log.exception("startup_failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Open the registry, load the snapshot, start following it and start the verifier."""
        settings = self.settings
        if self.loop_lag is not None:
            self.loop_lag.start()  # first, so that the initial load is measured too
        self.store = RegistryStore.from_url(
            settings.async_database_url, connect_timeout=settings.connect_timeout
        )
        self.domains = CustomDomainResolver(
            self.store.lookup_domain,
            self.store.domains_named,
            ttl=settings.domain_cache_ttl,
            negative_ttl=settings.domain_negative_ttl,
            maxsize=settings.domain_cache_size,
        )
        self.follower = RegistryFollower(
            self.store,
            poll_interval=settings.registry_poll_interval,
            on_load=self._apply_snapshot,
            on_worker=self._apply_worker,
            on_domains=self.domains.refresh,
            retention=settings.registry_change_retention,
        )
        await self.follower.start()
        if not self.follower.healthy:
            _log.warning("registry_unreachable_at_start")
        if self.store.dialect == "postgresql":
            self.listener = PostgresListener(
                settings.async_database_url,
                on_notify=self.follower.heard,
                on_reconnect=self.follower.wake,
                connect_timeout=settings.connect_timeout,
            )
            await self.listener.start()
        self.domain_verifier = DomainVerifier(self.store, settings, metrics=self.onboarding_metrics)
        await self.domain_verifier.start()

    async def shutdown(self) -> None:
        if self.loop_lag is not None:
            await self.loop_lag.aclose()
        if self.domain_verifier is not None:
            await self.domain_verifier.aclose()
        if self.listener is not None:
            await self.listener.aclose()
        if self.follower is not None:
            await self.follower.aclose()
        await self.transport.aclose()
        await self.limiter.aclose()
        if self.store is not None:
            await self.store.aclose()

    def _apply_snapshot(self, snapshot: RegistrySnapshot) -> None:
        """A full load: a new table swapped in whole (the follower refreshes cached hosts)."""
        self.table = self._table(snapshot)
        self.limiter.forget()
        if self.freeze_loaded:
            # 100,000 workers are a million long-lived objects: a full collection walking
            # them holds the loop for hundreds of ms. The old table is still freed (by
            # reference counting) when it goes.
            gc.freeze()

    def _apply_worker(self, name: str, worker: WorkerEntry | None) -> None:
        """One worker changed: the table's entry and that worker's upstream and rate-limit
        state only."""
        old = self.table.workers.get(name)
        self.table.put_worker(name, worker)
        self.limiter.forget(name)
        if old is not None:
            self.selector.forget(old, worker)

    def _table(self, snapshot: RegistrySnapshot) -> RoutingTable:
        return RoutingTable.build(
            base_domains=self.settings.base_domains,
            control_hosts=self.settings.control_hosts,
            reserved=self.settings.reserved,
            workers=snapshot.workers,
        )
