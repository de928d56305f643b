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

- connect refused or timed out, reset/EOF or a malformed answer before the head: UpstreamUnavailable
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
from collections import deque
from typing import Any, Final, cast

import httptools

from dispatcher.errors import (
    InvalidRequest,
    UpstreamConnectFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from dispatcher.proxy.transport import (
    Headers,
    Origin,
    RequestBody,
    UpstreamBodyError,
    UpstreamResponse,
)

__all__ = ["H1Pool"]

_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_PAUSE_ABOVE: Final = 256 * 1024  # unread response bytes above which reading pauses
_RESUME_BELOW: Final = 64 * 1024  # ... and below which it resumes
# A proxy must not retry non-idempotent requests by itself (RFC 9112 section 9.3.1).
_IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

# Response timeouts are checked this often (seconds): they may fire this much late.
_TICK: Final = 0.05

# Exchange states, in order.
_HEAD, _BODY, _DONE, _FAILED = 0, 1, 2, 3


class _Stale(UpstreamUnavailable):
    """A reused keep-alive connection closed before sending a byte: safe to retry once."""


class _Deadlines:
    """Response timeouts, checked on a coarse tick instead of one event-loop timer each.

    Registering and clearing a deadline is a dict insert and delete; a timer handle made and
    cancelled for every request cost ten times that. The tick runs only while deadlines exist.
    """

    __slots__ = ("_due", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[_Exchange, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, exchange: _Exchange, timeout: float) -> None:
        self._due[exchange] = self._loop.time() + timeout
        if self._handle is None:
            self._handle = self._loop.call_later(_TICK, self._tick)

    def discard(self, exchange: _Exchange) -> None:
        self._due.pop(exchange, None)

    def _tick(self) -> None:
        now = self._loop.time()
        due = self._due
        for exchange in [exchange for exchange, when in due.items() if when <= now]:
            del due[exchange]
            exchange.on_response_timeout()
        self._handle = self._loop.call_later(_TICK, self._tick) if due else None


class _Connection(asyncio.Protocol):
    """One socket to an upstream: forwards bytes and events to the exchange that holds it."""

    transport: asyncio.Transport

    def __init__(self, pool: H1Pool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.exchange: _Exchange | None = None
        self.closed = False
        self.write_paused = False
        self.reading_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.lost_waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.deadlines = pool._deadlines_for(loop)

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
        _wake(self.drain_waiter)
        _wake(self.lost_waiter)
        exchange = self.exchange
        if exchange is not None:
            exchange.connection_lost(exc)
        else:
            self.pool._forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        _wake(self.drain_waiter)

    def close(self, *, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class _Exchange:
    """One request and its response: the ``UpstreamResponse`` and the parser's callbacks."""

    __slots__ = (
        "_body_sent",
        "_body_task",
        "_buffered",
        "_chunks",
        "_conn",
        "_deadlines",
        "_error",
        "_head_only",
        "_idle_timeout",
        "_interim",
        "_keep_alive",
        "_loop",
        "_parser",
        "_received",
        "_reused",
        "_state",
        "_timed",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(
        self, conn: _Connection, *, head_only: bool, reused: bool, idle_timeout: float
    ) -> None:
        self.status = 0
        self.headers: Headers = []
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        # A fresh parser per exchange: after a HEAD response llhttp would wait for a body.
        self._parser: Any = httptools.HttpResponseParser(self)  # None once the exchange ends
        self._state = _HEAD
        self._head_only = head_only
        self._reused = reused
        self._idle_timeout = idle_timeout
        self._interim = False
        self._keep_alive = False
        self._received = False
        self._body_sent = True
        self._body_task: asyncio.Task[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._deadlines = conn.deadlines
        self._timed = False  # a response deadline is registered in _deadlines
        self._error: BaseException | None = None

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state == _DONE:
            self._keep_alive = False  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state == _HEAD:  # trailers of a chunked body are dropped
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._state != _HEAD:
            return
        status = self._parser.get_status_code()
        if status < 200 and status != 101:
            # Interim (100 Continue, 103 Early Hints): the final response follows.
            self._interim = True
            self.headers = []
            return
        self.status = status
        self._state = _BODY
        self._cancel_timer()
        if self._head_only or status in (204, 304):
            self._finish(self._parser.should_keep_alive())
        elif status == 101:
            self._finish(False)  # the connection now speaks another protocol
        _wake(self._waiter)

    def on_body(self, body: bytes) -> None:
        if self._state != _BODY:
            self._keep_alive = False  # bytes where no body belongs (e.g. after a HEAD answer)
            return
        self._chunks.append(body)
        self._buffered += len(body)
        conn = self._conn
        if self._buffered > _PAUSE_ABOVE and conn is not None and not conn.reading_paused:
            conn.reading_paused = True
            conn.transport.pause_reading()
        _wake(self._waiter)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._state == _BODY:
            self._finish(self._parser.should_keep_alive())

    # -- connection events -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101: the exchange already ended at its head
        except httptools.HttpParserError as exc:
            if self._state == _HEAD:
                self._fail(
                    UpstreamUnavailable("The worker's upstream sent a malformed response"), exc
                )
            elif self._state == _BODY:
                self._fail(UpstreamBodyError("The upstream sent a malformed response body"), exc)
            else:
                self._keep_alive = False
        if self._state == _DONE:
            self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _HEAD:
            if self._reused and not self._received:
                error: BaseException = _Stale("The idle upstream connection was closed")
            else:
                error = UpstreamUnavailable("The worker's upstream closed the connection")
            self._fail(error, exc)
        elif self._state == _BODY:
            if exc is None and _reads_until_close(self.headers):
                self._finish(False)
                self._settle()
            else:
                self._fail(UpstreamBodyError("The upstream response body was cut short"), exc)

    # -- request side ----------------------------------------------------------------------

    def start(self, head: bytes, body: RequestBody | None, response_timeout: float) -> None:
        conn = self._conn
        assert conn is not None
        conn.exchange = self
        conn.transport.write(head)
        if body is None:
            self._timed = True
            self._deadlines.add(self, response_timeout)
        else:
            self._body_sent = False
            self._body_task = self._loop.create_task(self._send_body(body, response_timeout))

    async def wait_head(self) -> _Exchange:
        if self._state == _HEAD:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except BaseException:
                self._abandon()
                raise
            finally:
                self._waiter = None
        if not self.status:
            assert self._error is not None
            raise self._error
        return self

    async def _send_body(self, body: RequestBody, response_timeout: float) -> None:
        conn = self._conn
        assert conn is not None
        write = conn.transport.write
        length = body.length
        try:
            async for chunk in body.chunks:
                if not chunk:
                    continue
                size = len(chunk)
                if length is None:
                    if self._conn is not conn:
                        return  # the exchange ended (answered early, failed or abandoned)
                    write(b"".join((b"%x\r\n" % size, chunk, _CRLF)))
                else:
                    if body.sent + size > length:
                        raise InvalidRequest("The request body is longer than its Content-Length")
                    if self._conn is not conn:
                        return
                    write(chunk)
                body.sent += size
                if body.sent == length:
                    # Sent in full before any await, so an answer that follows finds it so.
                    self._body_done(response_timeout)
                elif conn.write_paused:
                    await self._drain(conn)
            if length is None:
                if self._conn is conn:
                    write(_LAST_CHUNK)
                    self._body_done(response_timeout)
            elif body.sent < length:
                raise InvalidRequest("The request body is shorter than its Content-Length")
        except Exception as exc:
            self._fail(exc)

    async def _drain(self, conn: _Connection) -> None:
        waiter = conn.drain_waiter = self._loop.create_future()
        timer = self._loop.call_later(self._idle_timeout, self._on_send_stall)
        try:
            await waiter
        finally:
            timer.cancel()
            conn.drain_waiter = None

    def _body_done(self, response_timeout: float) -> None:
        self._body_sent = True
        if self._state == _HEAD and self._conn is not None:
            self._timed = True
            self._deadlines.add(self, response_timeout)

    # -- the response body -----------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._state == _DONE and not self._chunks

    def body(self) -> _Exchange:
        return self

    def __aiter__(self) -> _Exchange:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                # One chunk at a time, as parsed: joining them would copy every byte once more.
                data = chunks.popleft()
                self._buffered -= len(data)
                conn = self._conn
                if conn is not None and conn.reading_paused and self._buffered <= _RESUME_BELOW:
                    conn.reading_paused = False
                    conn.transport.resume_reading()
                return data
            if self._state == _DONE:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(self._idle_timeout, self._on_body_idle)
            try:
                await waiter
            except BaseException:
                self._abandon()
                raise
            finally:
                timer.cancel()
                self._waiter = None

    async def aclose(self) -> None:
        self._abandon()
        task = self._body_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))

    # -- endings ---------------------------------------------------------------------------

    def _finish(self, keep_alive: bool) -> None:
        self._state = _DONE
        self._keep_alive = keep_alive
        _wake(self._waiter)

    def _settle(self) -> None:
        """After a complete response: pool the connection if it is clean, else close it."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.exchange = None
        # The parser and the exchange point at each other: break the cycle so the exchange
        # is freed by reference counting, not by the cyclic collector (whose full passes
        # under load were the p99).
        self._parser = None
        self._cancel_timer()
        if self._keep_alive and self._body_sent and not conn.closed:
            if conn.reading_paused:
                conn.reading_paused = False
                conn.transport.resume_reading()
            conn.pool._checkin(conn)
        else:
            # Answered before the request body was fully sent: stop sending, never reuse.
            conn.close(abort=not self._body_sent)
            self._cancel_body()

    def _fail(self, error: BaseException, cause: BaseException | None = None) -> None:
        if self._state >= _DONE:
            return
        if cause is not None:
            error.__cause__, error.__suppress_context__ = cause, True
        self._state = _FAILED
        self._error = error
        self._parser = None  # see _settle: no reference cycle left behind
        self._cancel_timer()
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.exchange = None
            conn.close(abort=True)
        self._cancel_body()
        _wake(self._waiter)

    def _abandon(self) -> None:
        if self._state < _DONE:
            self._fail(UpstreamBodyError("The response was closed before it finished"))

    def on_response_timeout(self) -> None:
        self._timed = False
        if self._state == _HEAD:
            self._fail(UpstreamTimeout())

    def _on_send_stall(self) -> None:
        if self._state == _HEAD:
            self._fail(UpstreamTimeout("The worker's upstream stopped reading the request body"))
        else:
            self._fail(UpstreamBodyError("The upstream stopped reading the request body"))

    def _on_body_idle(self) -> None:
        self._fail(UpstreamBodyError("The upstream stopped sending the response body"))

    def _cancel_timer(self) -> None:
        if self._timed:
            self._timed = False
            self._deadlines.discard(self)

    def _cancel_body(self) -> None:
        task = self._body_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


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
    ) -> None:
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False
        self._deadlines: _Deadlines | None = None

    def _deadlines_for(self, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        deadlines = self._deadlines
        if deadlines is None or deadlines._loop is not loop:
            deadlines = self._deadlines = _Deadlines(loop)
        return deadlines

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
        lines = b"\r\n".join([b": ".join(header) for header in headers])
        head = (
            b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target, lines)
            if lines
            else (b"%s %s HTTP/1.1\r\n\r\n" % (method, target))
        )
        head_only = method == b"HEAD"
        conn = self._checkout(origin)
        if conn is not None:
            exchange = _Exchange(conn, head_only=head_only, reused=True, idle_timeout=idle_timeout)
            exchange.start(head, body, response_timeout)
            try:
                return await exchange.wait_head()
            except _Stale as exc:
                if body is not None or method not in _IDEMPOTENT:
                    raise UpstreamUnavailable(
                        "The worker's upstream closed the connection"
                    ) from exc
        conn = await self._connect(origin, connect_timeout)
        exchange = _Exchange(conn, head_only=head_only, reused=False, idle_timeout=idle_timeout)
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

    async def _connect(self, origin: Origin, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin, loop)
        context = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError as exc:
            if hasattr(conn, "transport"):
                conn.close(abort=True)  # connected just as the deadline passed
            raise UpstreamConnectFailed("Timed out connecting to the worker's upstream") from exc
        except OSError as exc:
            raise UpstreamConnectFailed("Could not connect to the worker's upstream") from exc
        return conn

    def _checkout(self, origin: Origin) -> _Connection | None:
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

    def _checkin(self, conn: _Connection) -> None:
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

    def _forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _reads_until_close(headers: Headers) -> bool:
    """Whether a response's body is delimited by the end of the connection (RFC 9112 6.3)."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            return False
        if lowered == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            return False
    return True
