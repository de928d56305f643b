"""The gateway: the data plane as one pure-ASGI callable.

For an ``http`` or ``websocket`` scope: the route decision (``DispatcherState.route``), then
either the worker's forwarder (hot path: no Starlette objects, no database round trip when
the custom-domain answer is cached) or the control-plane Starlette app; the contract's JSON
error when the dispatcher itself refuses; exactly one access line and one metrics observation
per request. The ``lifespan`` scope goes to the state, which owns everything long-lived.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import structlog
from starlette.applications import Starlette

from dispatcher.asgi import Exchange, Message, Receive, Scope, Send, header_value, request_id_of
from dispatcher.control.app import REQUEST_ID_KEY
from dispatcher.errors import (
    DispatcherError,
    InvalidHost,
    NotFound,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamTimeout,
)
from dispatcher.logging import access_logger, bind_request_id
from dispatcher.proxy.http import Forwarder
from dispatcher.proxy.websocket import WebSocketForwarder
from dispatcher.responses import deny_websocket, error_body, error_head, send_error
from dispatcher.routing import Route
from dispatcher.settings import Settings
from dispatcher.state import DispatcherState

__all__ = ["Gateway"]

_log = structlog.get_logger("dispatcher")


class Gateway:
    """The dispatcher as one ASGI application (built by ``dispatcher.app.create_app``)."""

    def __init__(
        self,
        settings: Settings,
        state: DispatcherState,
        forwarder: Forwarder,
        websockets: WebSocketForwarder,
        control: Starlette,
    ) -> None:
        self.settings = settings
        self.state = state
        self.forwarder = forwarder
        self.websockets = websockets
        self.control = control
        self.metrics = state.metrics
        self.limiter = state.limiter
        self._route = state.route
        self._access = access_logger()
        # The access line is written at info: below that level, skip building it at all.
        self._log_requests = settings.log_level in ("debug", "info")

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The ASGI entry point: returns the handler's coroutine itself, so a request costs no
        coroutine of its own here (nor a pass through it each time the request resumes)."""
        kind = scope["type"]
        if kind == "http":
            return self._http(scope, receive, send)
        if kind == "websocket":
            return self._websocket(scope, receive, send)
        if kind == "lifespan":
            return self.state.lifespan(scope, receive, send)
        return _nothing()

    def _route_scope(
        self, scope: Scope, host_header: bytes, method: str
    ) -> Coroutine[Any, Any, Route | None]:
        """The route of an ASGI request (the state's coroutine as is: no extra layer)."""
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
                worker = route.worker
                # Two field reads and no call: a worker without limits pays nothing more.
                if worker.rate_limit is not None or worker.client_rate_limit is not None:
                    await self.limiter.admit(scope, route, exchange)
                await self.forwarder.forward(scope, receive, send, route, exchange)
        except DispatcherError as exc:
            await self._fail(scope, send, exc, exchange)
        except Exception:
            _log.exception("unhandled_error", request_id=exchange.request_id)
            await self._fail(scope, send, DispatcherError(), exchange)
        finally:
            self.metrics.in_flight -= 1
            self._log_access(scope, host_header, exchange, started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        exchange = Exchange()
        host_header = header_value(scope["headers"], b"host") or b""
        try:
            route = await self._route_scope(scope, host_header, "GET")
            if route is None:
                raise NotFound("WebSockets are only forwarded to workers")
            worker = route.worker
            if worker.rate_limit is not None or worker.client_rate_limit is not None:
                await self.limiter.admit(scope, route, exchange)  # a handshake is a request
            await self.websockets.forward(scope, receive, send, route, exchange)
        except DispatcherError as exc:
            await self._deny(scope, send, exc, exchange)
        except Exception:
            _log.exception("unhandled_error", request_id=exchange.request_id)
            await self._deny(scope, send, DispatcherError(), exchange)
        finally:
            self._log_access(scope, host_header, exchange, started)

    async def _control(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        exchange.request_id = request_id_of(scope["headers"])
        bind_request_id(exchange.request_id)
        exchange.route = "control"
        if sum(1 for name, _ in scope["headers"] if name == b"host") > 1:
            # Forwarded requests are checked by the header policy (RFC 9112 section 3.2).
            raise InvalidHost("More than one Host header")
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
            exchange.request_id = request_id_of(scope["headers"])
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
            exchange.request_id = request_id_of(scope["headers"])
        body = error_body(exc, exchange.request_id)
        await deny_websocket(
            scope, send, exchange, exc.status, error_head(exc, exchange.request_id, len(body)), body
        )

    def _log_access(
        self, scope: Scope, host_header: bytes, exchange: Exchange, started: float
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
                "method": scope.get("method", "GET"),  # a WebSocket scope has none
                "host": host_header.decode("latin-1"),
                "path": scope["path"],
                "status": exchange.status,
                "duration_ms": round(duration * 1_000_000) / 1000,  # cheaper than round(x, 3)
                "route": exchange.route or None,
                "worker": exchange.worker or None,
                "upstream": exchange.upstream or None,
                "bytes_in": exchange.bytes_in,
                "bytes_out": exchange.bytes_out,
                "client_ip": client[0] if client else None,
            }
        )


async def _nothing() -> None:
    """What the gateway does with an ASGI scope type it does not know."""
