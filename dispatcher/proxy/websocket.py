"""The WebSocket forwarder: one routed WebSocket handshake to its worker's upstream, then a relay.

The client side is pure ASGI; the upstream side is ``websockets``' asyncio client used as a plain
transport: no redirects followed, no proxy from the environment, no compression (frames are relayed
as they are; the server may still compress towards the client on its own hop).

- Handshake: request headers follow the HTTP policy (``HeaderPolicy``), minus those the
  client library writes itself (``Host``, ``Sec-WebSocket-*``). The client's subprotocols are
  offered upstream and the client is accepted with the upstream's choice, plus the upstream's
  handshake headers (``Set-Cookie`` ...) and our ``X-Request-ID``.
- Refusals: an upstream's HTTP answer to the handshake (status, headers, body) passes through the
  ASGI denial response (a server without it answers 403). Refused or timed-out connections raise
  ``UpstreamUnavailable`` (502) / ``UpstreamTimeout`` (504); a connection that could not be made
  at all is retried on the worker's next upstream (nothing was sent yet).
- Relay: text stays text, binary stays binary, backpressure is end to end. Either side closing
  closes the other; codes that cannot go on the wire (RFC 6455 section 7.4.1) are mapped:

      client closes with code C, reason R     -> upstream closed with C, R
      client closes without a code (1005)     -> upstream closed with 1000 (uvicorn reports a
                                                 client lost after the handshake as 1005 too)
      client connection lost (1006)           -> upstream closed with 1001 "client went away"
      upstream closes with code C, reason R   -> client closed with C, R
      upstream closes without a code          -> client closed with 1000
      we failed the upstream (message too     -> client closed with the code we sent
        big, protocol error, ping timeout)       (1009, 1002, 1011)
      upstream connection lost                -> client closed with 1011 "upstream connection lost"
      no message either way for               -> both closed with 1001 "idle timeout"
        ``stream_idle_timeout`` seconds

Limits: an upstream message may be at most ``max_body_bytes`` (the worker's or the setting; larger
closes both sides with 1009); client messages are bounded by uvicorn's ``ws_max_size`` (16 MiB).
The TCP and TLS connect is bounded by ``connect_timeout``, the whole handshake by
``upstream_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from typing import Any, NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.http11 import Response
from websockets.typing import Subprotocol

from dispatcher.asgi import Exchange, Message, Receive, Scope, Send, header_value
from dispatcher.errors import (
    InvalidRequest,
    UpstreamConnectFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from dispatcher.networks import UpstreamNetworks
from dispatcher.proxy._addresses import allowed_addresses
from dispatcher.proxy.headers import HeaderPolicy, filter_response_headers, forward_context
from dispatcher.proxy.http import route_prefixes
from dispatcher.proxy.upstreams import Target, UpstreamSelector
from dispatcher.responses import deny_websocket
from dispatcher.routing import Route
from dispatcher.settings import Settings

__all__ = ["WebSocketForwarder"]

# Written by the client library itself (or meaningless on a handshake): never copied.
_HANDSHAKE_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
# A request target carries no fragment and only visible ASCII; anything else is escaped.
_UNSAFE_TARGET = re.compile(rb"[^\x21-\x7e]|#")


class _Ending(NamedTuple):
    """How one side ended: the code and reason to pass to the other side."""

    code: int
    reason: str


class _Dial(connect):
    """``websockets``' connect with our policy: no redirects, TCP connect bounded on its own."""

    def __init__(
        self, uri: str, *, connect_timeout: float, networks: UpstreamNetworks, **options: Any
    ) -> None:
        super().__init__(uri, **options)
        self.connect_timeout = connect_timeout
        self.networks = networks
        self.connected = False  # once true, bytes may have reached the upstream: no retry

    async def open_tcp_connection(self) -> ClientConnection:
        async with asyncio.timeout(self.connect_timeout):
            options = self.create_connection_kwargs
            host, port = options["host"], options["port"]
            loop = asyncio.get_running_loop()
            # The first allowed address: websockets makes one connection attempt.
            options["host"] = (await allowed_addresses(self.networks, host, port, loop))[0]
            connection = await super().open_tcp_connection()
        self.connected = True
        return connection

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc  # a redirect is the client's business (README, "Forwarding rules")


class WebSocketForwarder:
    """Forwards routed WebSocket sessions (the HTTP forwarder's twin for ``websocket`` scopes)."""

    def __init__(
        self, settings: Settings, policy: HeaderPolicy, selector: UpstreamSelector
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._selector = selector
        self._tls: ssl.SSLContext | None = None
        self._networks = settings.upstream_networks
        self._cookie_domains = tuple(domain.encode("ascii") for domain in settings.base_domains)

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, route: Route, exchange: Exchange
    ) -> None:
        """Open the upstream session for ``scope`` and relay it until either side closes."""
        worker = route.worker
        exchange.worker = worker.name
        exchange.route = route.kind
        targets = self._selector.candidates(worker)
        # Host goes in the URI (see _dial), not among the headers.
        prepared = self._policy.prepare(scope["headers"], forward_context(scope, route, b""))
        exchange.request_id = prepared.request_id
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in prepared.headers
            if name not in _HANDSHAKE_HEADERS and not name.startswith(b"sec-websocket-")
        ]
        if (await receive())["type"] != "websocket.connect":
            exchange.status = 499  # the client left before the handshake
            return
        path = route.upstream_path + (b"?" + route.query if route.query else b"")

        async def attempt(target: Target, position: int) -> ClientConnection | Response:
            exchange.upstream = target.url
            host = (
                header_value(scope["headers"], b"host") or b""
                if worker.preserve_host
                else target.authority
            )
            dial = self._dial(target, host, target.base_path + path, headers, scope, route)
            try:
                return await dial
            except InvalidStatus as exc:
                return exc.response  # the upstream answered: its refusal goes to the client
            except Exception as exc:
                if dial.connected:  # bytes may have reached the upstream: no other target
                    raise _upstream_error(exc) from exc
                raise UpstreamConnectFailed() from exc

        upstream = await self._selector.first_accepting(targets, attempt)
        if isinstance(upstream, Response):
            await self._refuse(scope, send, upstream, route, exchange)
            return
        try:
            await self._accept(send, upstream, exchange, route)
            await self._relay(receive, send, upstream, exchange)
        except BaseException:
            upstream.transport.abort()
            raise

    def _dial(
        self,
        target: Target,
        host: bytes,
        path: bytes,
        headers: list[tuple[str, str]],
        scope: Scope,
        route: Route,
    ) -> _Dial:
        settings, worker, origin = self._settings, route.worker, target.origin
        secure = origin.scheme == "https"
        resource = _UNSAFE_TARGET.sub(lambda m: b"%%%02X" % m[0][0], path).decode("ascii")
        tls: dict[str, Any] = {}
        if secure:
            self._tls = self._tls or ssl.create_default_context()
            tls = {"ssl": self._tls, "server_hostname": origin.host}
        limit = worker.max_body_bytes
        offered = scope.get("subprotocols") or None
        try:
            # The URI names the Host to send; host= and port= say where to connect.
            return _Dial(
                f"{'wss' if secure else 'ws'}://{host.decode('latin-1')}{resource}",
                connect_timeout=settings.connect_timeout,
                networks=self._networks,
                host=origin.host,
                port=origin.port,
                additional_headers=headers,
                user_agent_header=None,  # the client's own User-Agent is in ``headers``
                subprotocols=[Subprotocol(p) for p in offered] if offered else None,
                compression=None,
                proxy=None,
                open_timeout=worker.upstream_timeout or settings.upstream_timeout,
                max_size=settings.max_body_bytes if limit is None else limit,
                **tls,
            )
        except (InvalidURI, ValueError) as exc:  # only a preserved client Host can be this bad
            raise InvalidRequest("The Host header cannot be forwarded") from exc

    async def _refuse(
        self, scope: Scope, send: Send, response: Response, route: Route, exchange: Exchange
    ) -> None:
        """Pass the upstream's refusal (status, headers, body) to the client."""
        prefix, cookie_path = route_prefixes(route) if route.prefix else (b"", b"")
        rid = exchange.request_id.encode("ascii")
        headers = filter_response_headers(
            _raw(response.headers), rid, prefix, cookie_path, self._cookie_domains
        )
        await deny_websocket(
            scope, send, exchange, response.status_code, headers, bytes(response.body)
        )

    async def _accept(
        self, send: Send, upstream: ClientConnection, exchange: Exchange, route: Route
    ) -> None:
        assert upstream.response is not None
        rid = exchange.request_id.encode("ascii")
        headers = [
            (name, value)
            for name, value in filter_response_headers(
                _raw(upstream.response.headers),
                rid,
                b"",
                route_prefixes(route)[1] if route.prefix else b"",
                self._cookie_domains,
            )
            if not name.startswith(b"sec-websocket-")  # the server writes its own
        ]
        await send(
            {"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": headers}
        )
        exchange.status = 101
        exchange.response_started = True

    async def _relay(
        self, receive: Receive, send: Send, upstream: ClientConnection, exchange: Exchange
    ) -> None:
        """Pump both ways until one side ends, then close the other one the same way."""
        loop = asyncio.get_running_loop()
        clock = [loop.time()]  # time of the last message, either way
        inbound = asyncio.create_task(_client_to_upstream(receive, upstream, exchange, clock))
        outbound = asyncio.create_task(_upstream_to_client(upstream, send, exchange, clock))
        try:
            idle = self._settings.stream_idle_timeout
            while True:
                left = clock[0] + idle - loop.time()
                done, _ = await asyncio.wait(
                    (inbound, outbound), timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if done or left <= 0:
                    break
            if done:
                first = inbound if inbound in done else outbound
                ending = first.result()
                if ending is None:  # it saw the other side end first: that one tells how
                    first = outbound if first is inbound else inbound
                    ending = await first
                assert ending is not None
                to_client, to_upstream = first is outbound, first is inbound
            else:
                ending, to_client, to_upstream = _Ending(1001, "idle timeout"), True, True
            for task in (inbound, outbound):
                await _stop(task)
            if to_client:
                with contextlib.suppress(OSError):  # the client is gone already
                    await send({"type": "websocket.close", **ending._asdict()})
            if to_upstream:
                await upstream.close(*ending)
        except Exception:
            with contextlib.suppress(OSError, RuntimeError):
                await send({"type": "websocket.close", "code": 1011})
            raise
        finally:
            for task in (inbound, outbound):
                await _stop(task)


async def _client_to_upstream(
    receive: Receive, upstream: ClientConnection, exchange: Exchange, clock: list[float]
) -> _Ending | None:
    """Client messages to the upstream; the client's close, or ``None`` if the upstream ended."""
    loop = asyncio.get_running_loop()
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code: int = message.get("code", 1005)
            if code == 1006:  # the connection dropped without a close frame
                return _Ending(1001, "client went away")
            return _Ending(_sendable(code, 1000), message.get("reason") or "")
        if message["type"] != "websocket.receive":
            continue
        text: str | None = message.get("text")
        data: str | bytes = text if text is not None else message.get("bytes") or b""
        exchange.bytes_in += len(data) if isinstance(data, bytes) else len(data.encode())
        clock[0] = loop.time()
        try:
            await upstream.send(data)
        except ConnectionClosed:
            return None


async def _upstream_to_client(
    upstream: ClientConnection, send: Send, exchange: Exchange, clock: list[float]
) -> _Ending | None:
    """Upstream messages to the client; the upstream's close, or ``None`` if the client left."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await upstream.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                return _Ending(_sendable(exc.rcvd.code, 1000), exc.rcvd.reason)
            if exc.sent is not None:  # we failed the connection (message too big, ...)
                return _Ending(_sendable(exc.sent.code, 1011), exc.sent.reason)
            return _Ending(1011, "upstream connection lost")
        clock[0] = loop.time()
        if isinstance(data, str):
            exchange.bytes_out += len(data.encode())
            message: Message = {"type": "websocket.send", "text": data}
        else:
            exchange.bytes_out += len(data)
            message = {"type": "websocket.send", "bytes": data}
        try:
            await send(message)
        except OSError:  # uvicorn's ClientDisconnected
            return None


def _sendable(code: int, fallback: int) -> int:
    """``code`` if it may appear in a close frame (RFC 6455 section 7.4), else ``fallback``."""
    return code if code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000 else fallback


def _upstream_error(exc: Exception) -> UpstreamUnavailable | UpstreamTimeout:
    """The one boundary where the client library's failures after connecting become ours."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("The worker's upstream did not accept the WebSocket in time")
    return UpstreamUnavailable()


async def _stop(task: asyncio.Task[_Ending | None]) -> None:
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost


def _raw(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.raw_items()]
