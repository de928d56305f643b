"""The default ``UpstreamTransport``: a purpose-built HTTP/1.1 client connection pool.

Owns the sockets to the workers' upstreams: one asyncio ``Protocol`` per connection, responses
parsed by ``httptools`` (llhttp, the parser uvicorn uses), idle keep-alive connections kept per
``Origin`` newest first. It writes the request head exactly as given (the caller owns every
header, framing included) and only frames the body bytes. It must not follow redirects, keep
cookies, read proxy settings, decompress, or log: it is the hot path.

A request costs one parser, one future and one timer; a task is started only to stream a request
body, which runs concurrently with waiting for the answer because an upstream may answer early
(413) without reading it. Both directions respect flow control. A connection goes back to the
pool only after a complete exchange (request body sent, response read to its end, keep-alive);
anything unfinished (an error, a timeout, ``aclose()`` mid-body, a cancelled caller) closes it.

Errors, with our own messages and the socket error chained:

- connect refused or timed out, reset/EOF, a malformed answer, a response head (interim heads
  included) larger than ``max_response_head`` bytes, a status outside 100-599 or a ``101``
  (this client never asks to switch protocols): UpstreamUnavailable
  (a reused idle connection found dead is retried once on a new one for a bodiless
  idempotent request)
- no head within ``response_timeout`` of the request being sent (its last body byte written),
  or the upstream stops reading the request body for ``idle_timeout``: UpstreamTimeout
- reset, EOF, bad framing or ``idle_timeout`` of silence after the head: UpstreamBodyError
- a request body longer or shorter than ``RequestBody.length``: InvalidRequest; an exception
  raised by the body iterator itself reaches the caller unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final, cast

from dispatcher.asgi import header_lines
from dispatcher.errors import UpstreamConnectFailed, UpstreamUnavailable
from dispatcher.networks import UpstreamNetworks
from dispatcher.proxy._addresses import allowed_addresses
from dispatcher.proxy._h1exchange import H1Exchange, StaleConnection, wake
from dispatcher.proxy.coarse import CoarseTimers
from dispatcher.proxy.transport import Headers, Origin, RequestBody, UpstreamResponse

__all__ = ["H1Pool"]

# A proxy must not retry non-idempotent requests by itself (RFC 9112 section 9.3.1).
_IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class Connection(asyncio.Protocol):
    """One socket to an upstream: forwards bytes and events to the exchange that holds it."""

    transport: asyncio.Transport

    def __init__(self, pool: H1Pool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.exchange: H1Exchange | None = None
        self.closed = False
        self.write_paused = False
        self.reading_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.lost_waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.deadlines = pool._timers_for(loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: the connection is out of step
        else:
            exchange.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        wake(self.drain_waiter)
        wake(self.lost_waiter)
        exchange = self.exchange
        if exchange is not None:
            exchange.connection_lost(exc)
        else:
            self.pool._forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        wake(self.drain_waiter)

    def close(self, *, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class H1Pool:
    """HTTP/1.1 connections to upstreams, pooled per origin; implements ``UpstreamTransport``.

    At most ``max_idle_per_origin`` idle connections are kept per origin, the most recently
    used first; one idle for longer than ``idle_timeout`` seconds is closed when next seen.
    ``https`` origins use ``ssl_context`` (default: ``ssl.create_default_context()``) with
    SNI and certificate checks against the origin host.
    """

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 64,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_response_head: int = 65536,
        networks: UpstreamNetworks | None = None,
    ) -> None:
        self._networks = networks
        self._max_idle = max_idle_per_origin
        self._max_head = max_response_head
        self._idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._closed = False
        self._timers: CoarseTimers | None = None  # response deadlines

    def _timers_for(self, loop: asyncio.AbstractEventLoop) -> CoarseTimers:
        timers = self._timers
        if timers is None or timers.loop is not loop:
            timers = self._timers = CoarseTimers(loop)
        return timers

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: RequestBody | None,
        *,
        connect_timeout: float,
        response_timeout: float,
        idle_timeout: float,
    ) -> UpstreamResponse:
        """Send a request and return the response once its head arrived (see the protocol)."""
        lines = header_lines(headers)
        head = (
            b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target, lines)
            if lines
            else (b"%s %s HTTP/1.1\r\n\r\n" % (method, target))
        )
        head_only = method == b"HEAD"
        conn = self._checkout(origin)
        if conn is not None:
            exchange = H1Exchange(
                conn,
                head_only=head_only,
                reused=True,
                idle_timeout=idle_timeout,
                max_head=self._max_head,
            )
            exchange.start(head, body, response_timeout)
            try:
                return await exchange.wait_head()
            except StaleConnection as exc:
                if body is not None or method not in _IDEMPOTENT:
                    raise UpstreamUnavailable(
                        "The worker's upstream closed the connection"
                    ) from exc
        conn = await self._connect(origin, connect_timeout)
        exchange = H1Exchange(
            conn,
            head_only=head_only,
            reused=False,
            idle_timeout=idle_timeout,
            max_head=self._max_head,
        )
        exchange.start(head, body, response_timeout)
        return await exchange.wait_head()

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, {}
        waiters: list[asyncio.Future[None]] = []
        for conns in idle.values():
            for conn in conns:
                if not conn.closed:
                    conn.lost_waiter = conn.loop.create_future()
                    waiters.append(conn.lost_waiter)
                    conn.close(abort=True)
        if waiters:
            await asyncio.wait(waiters)

    async def _connect(self, origin: Origin, connect_timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self, origin, loop)
        context = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout(connect_timeout):
                hosts = [origin.host]
                if self._networks is not None:
                    hosts = await allowed_addresses(self._networks, origin.host, origin.port, loop)
                for position, host in enumerate(hosts):
                    try:
                        await loop.create_connection(
                            lambda: conn,
                            host,
                            origin.port,
                            ssl=context,
                            server_hostname=origin.host if context is not None else None,
                        )
                        break
                    except OSError:
                        if position == len(hosts) - 1:
                            raise
        except TimeoutError as exc:
            if hasattr(conn, "transport"):
                conn.close(abort=True)  # connected just as the deadline passed
            raise UpstreamConnectFailed("Timed out connecting to the worker's upstream") from exc
        except OSError as exc:
            raise UpstreamConnectFailed("Could not connect to the worker's upstream") from exc
        return conn

    def _checkout(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport.is_closing():
                continue
            if conn.loop.time() - conn.idle_since >= self._idle_timeout:
                # The newest is too old, so are all the others.
                for old in (conn, *idle):
                    old.close()
                idle.clear()
                return None
            return conn
        return None

    def _checkin(self, conn: Connection) -> None:
        if self._closed or self._max_idle <= 0:
            conn.close()
            return
        now = conn.loop.time()
        conn.idle_since = now
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = []
        oldest_allowed = now - self._idle_timeout
        while idle and (len(idle) >= self._max_idle or idle[0].idle_since < oldest_allowed):
            idle.pop(0).close()
        idle.append(conn)

    def _forget(self, conn: Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
