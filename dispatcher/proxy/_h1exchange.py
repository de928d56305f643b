"""One request/response exchange on a pooled HTTP/1.1 connection (see ``_h1pool``).

The exchange writes the request head, streams a request body (in a task of its own, so an
early answer is seen while the body is still going), parses the response with a fresh
``httptools`` parser (callbacks below), and hands out the response body chunk by chunk as
parsed, with flow control both ways. It ends in one of two ways: ``_settle`` after a complete
response (the connection goes back to the pool when it is clean) or ``_fail`` (the connection
is closed), so a connection is never reused after anything unfinished.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import httptools

from dispatcher.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from dispatcher.proxy.transport import Headers, RequestBody, UpstreamBodyError

if TYPE_CHECKING:
    from dispatcher.proxy._h1pool import Connection

__all__ = ["H1Exchange", "StaleConnection", "wake"]

_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_PAUSE_ABOVE: Final = 256 * 1024  # unread response bytes above which reading pauses
_RESUME_BELOW: Final = 64 * 1024  # ... and below which it resumes

# Exchange states, in order.
_HEAD, _BODY, _DONE, _FAILED = 0, 1, 2, 3


class _BadStatus(Exception):
    """Raised from a parser callback: a status code the dispatcher does not relay."""


class StaleConnection(UpstreamUnavailable):
    """A reused keep-alive connection closed before sending a byte: safe to retry once."""


class H1Exchange:
    """One request and its response: the ``UpstreamResponse`` and the parser's callbacks."""

    __slots__ = (
        "_body_sent",
        "_body_task",
        "_buffered",
        "_chunks",
        "_conn",
        "_deadlines",
        "_error",
        "_head_left",
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
        self,
        conn: Connection,
        *,
        head_only: bool,
        reused: bool,
        idle_timeout: float,
        max_head: int = 65536,
    ) -> None:
        self.status = 0
        self.headers: Headers = []
        self._conn: Connection | None = conn
        self._loop = conn.loop
        # A fresh parser per exchange: after a HEAD response llhttp would wait for a body.
        self._parser: Any = httptools.HttpResponseParser(self)  # None once the exchange ends
        self._state = _HEAD
        self._head_left = max_head  # bytes the response head (with interim ones) may still take
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
        if status < 200 or status > 599:
            if status < 100 or status > 599 or status == 101:
                # Outside RFC 9110's range, or switching protocols on a request that never
                # asked to (WebSockets have their own client): not a response to relay.
                raise _BadStatus
            # Interim (100 Continue, 103 Early Hints): the final response follows.
            self._interim = True
            self.headers = []
            return
        self.status = status
        self._state = _BODY
        self._cancel_timer()
        if self._head_only or status in (204, 304):
            self._finish(self._parser.should_keep_alive())
        wake(self._waiter)

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
        wake(self._waiter)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._state == _BODY:
            self._finish(self._parser.should_keep_alive())

    # -- connection events -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._received = True
        try:
            if self._state == _HEAD:
                left = self._head_left - len(data)
                if left < 0:
                    self._feed_head_at_most(data)
                    return
                self._head_left = left
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # never a 101 (refused at its head); llhttp's view of an upgrade ends here
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

    def _feed_head_at_most(self, data: bytes) -> None:
        """Parse no more than the head's remaining allowance; fail if the head goes on.

        llhttp keeps an unfinished header value in memory: without this a single header of
        many megabytes would be gathered (and copied) whole before anything could refuse it.
        """
        room = self._head_left
        self._head_left = 0
        self._parser.feed_data(data[:room])
        if self._state == _HEAD:
            self._fail(UpstreamUnavailable("The worker's upstream sent a response head too large"))
            return
        self.feed(data[room:])

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _HEAD:
            if self._reused and not self._received:
                error: BaseException = StaleConnection("The idle upstream connection was closed")
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

    async def wait_head(self) -> H1Exchange:
        if self._state == _HEAD:
            # ``_wait``, inlined: every request waits here (no coroutine layer for it).
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

    async def _drain(self, conn: Connection) -> None:
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
        task = self._body_task
        return self._state == _DONE and not self._chunks and (task is None or task.done())

    def body(self) -> H1Exchange:
        return self

    def __aiter__(self) -> H1Exchange:
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
            timer = self._loop.call_later(self._idle_timeout, self._on_body_idle)
            try:
                await self._wait()
            finally:
                timer.cancel()

    async def _wait(self) -> None:
        """Until the parser's next event; a wait given up (cancelled) ends the exchange."""
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        except BaseException:
            self._abandon()
            raise
        finally:
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
        wake(self._waiter)

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
        wake(self._waiter)

    def _abandon(self) -> None:
        if self._state < _DONE:
            self._fail(UpstreamBodyError("The response was closed before it finished"))

    def expire(self) -> None:
        """The response deadline passed (``CoarseTimers``)."""
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


def wake(waiter: asyncio.Future[None] | None) -> None:
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
