"""``create_app(settings)``: the outer pure-ASGI gateway and the wiring of everything else.

The only module that wires things together. The gateway is a plain ASGI callable:

- ``lifespan``: opens the registry store, loads the worker snapshot and starts following the
  registry, creates the upstream connection pool; closes them all on shutdown;
- ``http``: normalise the host, route (pure), then either forward to the worker (hot path: no
  Starlette objects, no database round trip when the custom-domain answer is cached) or hand
  the request to the control-plane Starlette app; exactly one access line per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import structlog

from dispatcher.control.app import REQUEST_ID_KEY, create_control_app
from dispatcher.domains import CustomDomainResolver
from dispatcher.errors import (
    DispatcherError,
    NotFound,
    RegistryUnavailable,
    RoutingError,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamTimeout,
)
from dispatcher.hosts import normalize_host
from dispatcher.logging import access_logger, batched_logs, bind_request_id
from dispatcher.metrics import Metrics, StateReading
from dispatcher.proxy._h1pool import H1Pool
from dispatcher.proxy.headers import HeaderPolicy, RequestIds, header_value
from dispatcher.proxy.http import Exchange, Forwarder
from dispatcher.proxy.transport import UpstreamTransport
from dispatcher.proxy.upstreams import UpstreamSelector
from dispatcher.proxy.websocket import WebSocketForwarder
from dispatcher.responses import error_body, error_head, send_error
from dispatcher.routing import (
    Route,
    RoutingTable,
    resolve_control,
    resolve_tenant,
)
from dispatcher.settings import Settings
from workers_registry.changes import PostgresListener, RegistryFollower, RegistrySnapshot
from workers_registry.models import Worker
from workers_registry.store import RegistryStore

__all__ = ["Gateway", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_log = structlog.get_logger("dispatcher")

#: ``/health/detailed`` waits this long for the registry before calling it unavailable.
_PROBE_TIMEOUT = 1.0


class Gateway:
    """The dispatcher as one ASGI application."""

    def __init__(self, settings: Settings, transport: UpstreamTransport | None = None) -> None:
        self.settings = settings
        self.ids = RequestIds()
        self.transport: UpstreamTransport = transport or H1Pool()
        # One header policy and one upstream selector for both kinds of forwarding: the same
        # rules, and a target that refused a connection is skipped by both.
        policy = HeaderPolicy(
            self.ids,
            trusted_networks=settings.trusted_networks,
            via_name=settings.via_name,
            max_hops=settings.max_hops,
            max_header_bytes=settings.max_header_bytes,
        )
        selector = self.selector = UpstreamSelector()
        self.forwarder = Forwarder(settings, self.transport, policy, selector)
        self.websockets = WebSocketForwarder(settings, policy, selector)
        self.table = self._table(RegistrySnapshot(version=-1, workers=()))
        self.store: RegistryStore | None = None
        self.follower: RegistryFollower | None = None
        self.domains: CustomDomainResolver | None = None
        self.listener: PostgresListener | None = None
        self.metrics = Metrics(self._state_reading, per_worker=settings.metrics_per_worker)
        self.control = create_control_app(settings, self)
        self._access = access_logger()
        # The access line is written at info: below that level, skip building it at all.
        self._log_requests = settings.log_level in ("debug", "info")

    # -- state the control plane reads -------------------------------------------------------

    @property
    def worker_count(self) -> int:
        return len(self.table.workers)

    @property
    def registry(self) -> RegistryStore:
        if self.store is None:
            raise RegistryUnavailable("The worker registry is not open yet")
        return self.store

    async def may_issue_certificate(self, domain: str) -> bool:
        """May Caddy get a certificate for ``domain``? (``/tls/ask``)

        Yes exactly when a request to that host would be forwarded to a worker: the same
        routing decision, from the same cache. Raises ``RegistryUnavailable`` when that
        cannot be known now (Caddy asks again later).
        """
        try:
            return await self._route(domain, b"/", b"", "GET") is not None
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
        checks["upstreams"] = {"ejected": self.forwarder.ejected_targets}
        if self.listener is not None:
            checks["listener"] = {"connected": self.listener.connected}
            ok = ok and self.listener.connected
        else:
            checks["listener"] = {"connected": None, "mechanism": "poll"}
        return ok, checks

    # -- ASGI ---------------------------------------------------------------------------------

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The ASGI entry point: returns the handler's coroutine itself, so a request costs no
        coroutine of its own here (nor a pass through it each time the request resumes)."""
        kind = scope["type"]
        if kind == "http":
            return self._http(scope, receive, send)
        if kind == "websocket":
            return self._websocket(scope, receive, send)
        if kind == "lifespan":
            return self._lifespan(receive, send)
        return _nothing()

    async def _route(
        self, host_header: str, raw_path: bytes, query: bytes, method: str
    ) -> Route | None:
        """The route of a request, or ``None`` for the control plane (pure but for the cache)."""
        host = normalize_host(host_header)
        table = self.table
        if table.is_control_host(host):
            decision = resolve_control(raw_path, query, table, method=method)
            return decision if isinstance(decision, Route) else None
        assert self.domains is not None, "lifespan has not run"
        cached = self.domains.cached(host)  # no coroutine at all when it is cached
        answer = await self.domains.resolve(host) if cached is False else cached
        return resolve_tenant(host, raw_path, query, table, answer)

    def _route_scope(
        self, scope: Scope, host_header: bytes, method: str
    ) -> Coroutine[Any, Any, Route | None]:
        """``_route`` for an ASGI request (its coroutine as is: no extra layer per request)."""
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        return self._route(host_header.decode("latin-1"), raw_path, scope["query_string"], method)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        exchange = Exchange()
        host_header = header_value(scope["headers"], b"host") or b""
        self.metrics.in_flight += 1
        try:
            route = await self._route_scope(scope, host_header, scope["method"])
            if route is None:
                await self._control(scope, receive, send, exchange)
            else:
                await self.forwarder.forward(scope, receive, send, route, exchange)
        except DispatcherError as exc:
            await self._fail(scope, send, exc, exchange)
        except Exception:
            _log.exception("unhandled_error", request_id=exchange.request_id)
            await self._fail(scope, send, DispatcherError(), exchange)
        finally:
            self.metrics.in_flight -= 1
            self._log_access(scope, host_header, exchange, started, "GET")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        exchange = Exchange()
        host_header = header_value(scope["headers"], b"host") or b""
        try:
            route = await self._route_scope(scope, host_header, "GET")
            if route is None:
                raise NotFound("WebSockets are only forwarded to workers")
            await self.websockets.forward(scope, receive, send, route, exchange)
        except DispatcherError as exc:
            await self._deny(scope, send, exc, exchange)
        except Exception:
            _log.exception("unhandled_error", request_id=exchange.request_id)
            await self._deny(scope, send, DispatcherError(), exchange)
        finally:
            self._log_access(scope, host_header, exchange, started, "GET")

    async def _control(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        exchange.request_id = self.ids.pick(header_value(scope["headers"], b"x-request-id"))
        bind_request_id(exchange.request_id)
        exchange.route = "control"
        scope[REQUEST_ID_KEY] = exchange.request_id
        rid = exchange.request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_started = True
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                headers.append((b"x-request-id", rid))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                exchange.bytes_out += len(message.get("body", b""))
            await send(message)

        await self.control(scope, receive, send_with_id)

    async def _fail(
        self, scope: Scope, send: Send, exc: DispatcherError, exchange: Exchange
    ) -> None:
        if exchange.response_started:
            return  # too late for a status line; the connection closes when we return
        if not exchange.request_id:
            exchange.request_id = self.ids.pick(header_value(scope["headers"], b"x-request-id"))
        exchange.status = exc.status
        if isinstance(exc, UpstreamError):
            self.metrics.upstream_error(
                "timeout"
                if isinstance(exc, UpstreamTimeout)
                else "connect"
                if isinstance(exc, UpstreamConnectFailed)
                else "unavailable"
            )
        exchange.bytes_out += await send_error(
            send, exc, exchange.request_id, head=scope["method"] == "HEAD"
        )

    async def _deny(
        self, scope: Scope, send: Send, exc: DispatcherError, exchange: Exchange
    ) -> None:
        """Refuse a WebSocket handshake with the status and JSON an HTTP request would get."""
        if exchange.response_started:
            return
        if not exchange.request_id:
            exchange.request_id = self.ids.pick(header_value(scope["headers"], b"x-request-id"))
        if "websocket.http.response" in scope.get("extensions", {}):
            exchange.status = exc.status
            body = error_body(exc, exchange.request_id)
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": exc.status,
                    "headers": error_head(exc, exchange.request_id, len(body)),
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            exchange.bytes_out += len(body)
            # uvicorn's sansio WebSocket server marks the denial complete one loop turn later;
            # returning at once makes it log a false "returned without completing handshake".
            await asyncio.sleep(0)
        else:  # the server cannot send a denial response: it answers 403
            exchange.status = 403
            await send({"type": "websocket.close", "code": 1008})

    def _log_access(
        self, scope: Scope, host_header: bytes, exchange: Exchange, started: float, method: str
    ) -> None:
        duration = time.perf_counter() - started
        if exchange.upstream_error:
            self.metrics.upstream_error(exchange.upstream_error)
        self.metrics.observe(
            exchange.route or "none", exchange.status or 500, duration, exchange.worker
        )
        if not self._log_requests:
            return
        client = scope.get("client")
        self._access.write(
            {
                "request_id": exchange.request_id,
                "method": scope.get("method", method),
                "host": host_header.decode("latin-1"),
                "path": scope["path"],
                "status": exchange.status,
                "duration_ms": round(duration * 1_000_000) / 1000,  # round(x, 3) costs 10x
                "route": exchange.route or None,
                "worker": exchange.worker or None,
                "upstream": exchange.upstream or None,
                "bytes_in": exchange.bytes_in,
                "bytes_out": exchange.bytes_out,
                "client_ip": client[0] if client else None,
            }
        )

    # -- lifespan -----------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
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
        """Open the registry, load the snapshot and start following it."""
        settings = self.settings
        self.store = RegistryStore.from_url(
            settings.async_database_url, connect_timeout=settings.connect_timeout
        )
        self.domains = CustomDomainResolver(
            self.store.lookup_domain,
            ttl=settings.domain_cache_ttl,
            negative_ttl=settings.domain_negative_ttl,
            maxsize=settings.domain_cache_size,
            lookup_many=self.store.domains_named,
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
                on_notify=self.follower.wake,
                on_reconnect=self.follower.wake,
                connect_timeout=settings.connect_timeout,
            )
            await self.listener.start()

    async def shutdown(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
        if self.follower is not None:
            await self.follower.aclose()
        await self.transport.aclose()
        if self.store is not None:
            await self.store.aclose()

    def _apply_snapshot(self, snapshot: RegistrySnapshot) -> None:
        """A full load: a new table swapped in whole (the follower refreshes cached hosts)."""
        self.table = self._table(snapshot)

    def _apply_worker(self, name: str, worker: Worker | None) -> None:
        """One worker changed: the table's entry and that worker's upstream state only."""
        old = self.table.workers.get(name)
        self.table.put_worker(name, worker)
        if old is not None:
            self.selector.forget(old, worker)

    def _table(self, snapshot: RegistrySnapshot) -> RoutingTable:
        return RoutingTable.build(
            base_domains=self.settings.base_domains,
            control_hosts=self.settings.control_hosts,
            reserved=self.settings.reserved,
            workers=snapshot.workers,
        )


def create_app(settings: Settings, *, transport: UpstreamTransport | None = None) -> Gateway:
    """The dispatcher ASGI app for ``settings`` (run it with uvicorn, lifespan on)."""
    return Gateway(settings, transport)


async def _nothing() -> None:
    """What the gateway does with an ASGI scope type it does not know."""
