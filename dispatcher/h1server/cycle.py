"""One request and its response on a connection: the ``receive`` and ``send`` of ASGI.

The response head is rendered on ``http.response.start`` but written with the first body
bytes (or at the end of the event loop's turn if none follow in it); the rendered head is
checked once for stray CR or LF, the guard against response splitting. Bodies are framed by
the application's ``Content-Length`` (enforced both ways), chunked when it gave none (HTTP/1.1),
or ended by closing the connection (HTTP/1.0).
"""

from __future__ import annotations

import asyncio
import http
import weakref
from typing import TYPE_CHECKING, Any, Final

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from dispatcher.asgi import Message, header_lines
from dispatcher.errors import RequestTimeout

if TYPE_CHECKING:
    from dispatcher.h1server.protocol import H1Protocol

__all__ = ["CLOSE_HEADER", "STATUS_LINES", "Cycle", "HeadFlusher", "Message", "tokens"]

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CHUNKED_HEADER: Final = b"transfer-encoding: chunked\r\n"
CLOSE_HEADER: Final = b"connection: close\r\n"
NO_BODY_STATUS: Final = frozenset((204, 304))
FRAMING: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_FRAMING_LENGTHS: Final = frozenset(len(name) for name in FRAMING)


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


#: Bodies up to this size are joined to the head and written in one piece (the copy is cheaper
#: than a scatter-gather write); larger ones are written beside it.
_JOIN_BELOW: Final = 16 * 1024


STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}


def tokens(value: bytes) -> list[bytes]:
    """The lowercased tokens of a comma-separated header value (``Connection``)."""
    return [token.strip() for token in value.lower().split(b",")]


class HeadFlusher:
    """Writes the response heads whose body did not follow in the same loop turn, at its end.

    One per event loop, shared by its connections: one loop callback per turn however many
    responses started in it, instead of one per response.
    """

    __slots__ = ("_loop", "_pending")

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HeadFlusher] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Cycle] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> HeadFlusher:
        flusher = cls._by_loop.get(loop)
        if flusher is None:
            flusher = cls._by_loop[loop] = cls(loop)
        return flusher

    def add(self, cycle: Cycle) -> None:
        pending = self._pending
        if not pending:
            self._loop.call_soon(self._flush)
        pending.append(cycle)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for cycle in pending:
            cycle.flush_head()


class Cycle:
    """One request and its response: the ``receive`` and ``send`` the application gets."""

    __slots__ = (
        "_buffered",
        "_chunked",
        "_chunks",
        "_delivered",
        "_expect_100",
        "_head",
        "_head_only",
        "_remaining",
        "_waiter",
        "complete",
        "conn",
        "disconnected",
        "keep_alive",
        "more_body",
        "scope",
        "started",
        "task",
        "timed_out",
    )

    def __init__(
        self, conn: H1Protocol, scope: Message, *, keep_alive: bool, expect_100: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.task: asyncio.Task[None] | None = None
        self.disconnected = False
        self.started = False
        self.complete = False
        self.more_body = True
        self.timed_out = False  # the request body stalled past request_body_timeout
        self._expect_100 = expect_100
        self._head_only = scope["method"] == "HEAD"
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._delivered = False  # the last part of the request body went to the application
        self._waiter: asyncio.Future[None] | None = None
        self._head: bytes | None = None
        self._chunked = False
        self._remaining = -1  # Content-Length bytes still to send; -1 when not framed by it

    # -- events from the connection ---------------------------------------------------------

    def body_received(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER_LIMIT:
            self.conn.pause_reading()
        self.wake()

    @property
    def awaiting_continue(self) -> bool:
        """The client waits for ``100 Continue`` before sending the body (not sent yet)."""
        return self._expect_100

    def time_out(self) -> None:
        """The request body stalled: ``receive`` raises ``RequestTimeout`` from now on.

        The application answers that as any error (the gateway: 408 in its JSON shape, under
        its request id, in its access log); the connection closes after the answer, since the
        rest of the body never came.
        """
        self.timed_out = True
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI ------------------------------------------------------------------------------

    async def receive(self) -> Message:
        conn = self.conn
        if self._expect_100:
            self._expect_100 = False
            if not conn.transport.is_closing():
                conn.transport.write(CONTINUE)
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            if self.timed_out:
                raise RequestTimeout("The request body was not received in time")
            chunks = self._chunks
            if chunks or not (self.more_body or self._delivered):
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                more_body = self.more_body
                self._delivered = not more_body  # afterwards, wait for the disconnect
                conn.resume_reading()
                return {"type": "http.request", "body": body, "more_body": more_body}
            conn.resume_reading()
            waiter = self._waiter = conn.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', got '{kind}'")
            # Rendered first: a head refused here leaves room for the 500.
            self._head = self._render_head(message["status"], message.get("headers", ()))
            self.started = True
            self._expect_100 = False
            conn.heads.add(self)
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' after the response completed")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', got '{kind}'")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if self._head_only:
            body = b""
        elif self._chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more_body:
                body += LAST_CHUNK
        elif self._remaining >= 0:
            self._remaining -= len(body)
            if self._remaining < 0:
                raise RuntimeError("Response content longer than Content-Length")
        head = self._head
        if head is not None:
            self._head = None
            if len(body) > _JOIN_BELOW:
                conn.transport.writelines((head, body))  # one writev, no copy of the body
                body = b""
            else:
                body = head + body
        if body:
            conn.transport.write(body)
        if not more_body:
            if self._remaining > 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            if not self.keep_alive:  # also when the request body was still due (_render_head)
                conn.transport.close()
            conn.response_complete(self)

    def flush_head(self) -> None:
        """Write the head if no body took it along (``HeadFlusher``, at the end of the turn)."""
        head = self._head
        if head is not None and not self.disconnected:
            self._head = None
            transport = self.conn.transport
            # A closed transport raises on write; one raising here would hold back the heads
            # of the other connections flushed in the same turn.
            if not transport.is_closing():
                transport.write(head)

    def _render_head(self, status: int, headers: Any) -> bytes:
        line = STATUS_LINES.get(status)
        if line is None:
            raise RuntimeError(f"Invalid HTTP status code {status!r}")
        defaults = self.conn.default_headers
        if defaults:
            headers = [*defaults, *headers]
        elif type(headers) is not list:
            headers = list(headers)  # walked twice below
        self._chunked, self._remaining = False, -1
        if self.more_body:
            # Answered before the request body ended: the rest of it cannot be told apart
            # from a next request, so this is the connection's last answer.
            self.keep_alive = False
        framed = self._head_only
        if status in NO_BODY_STATUS or status < 200:
            framed, self._remaining = True, 0  # no body allowed, whatever the headers say
        close_sent = False
        for name, value in headers:
            if len(name) not in _FRAMING_LENGTHS:
                continue  # most headers: told apart without lowercasing a copy of the name
            lowered = name.lower()
            if lowered not in FRAMING:
                continue
            if lowered == b"content-length":
                if not framed:
                    framed = True
                    self._remaining = int(value)
            elif lowered == b"transfer-encoding":
                if value.lower() == b"chunked" and not framed:
                    framed = self._chunked = True
            elif b"close" in tokens(value):  # Connection
                self.keep_alive = False
                close_sent = True
        extra = b""
        if not framed:
            if self.scope["http_version"] == "1.0":
                self.keep_alive = False  # HTTP/1.0 has no chunked coding: the close ends it
            else:
                self._chunked = True
                extra = CHUNKED_HEADER
        if not self.keep_alive and not close_sent:
            extra += CLOSE_HEADER
        lines = header_lines(headers)
        head = line + lines + b"\r\n" + extra + b"\r\n" if lines else line + extra + b"\r\n"
        # The one check against response splitting: every CR and LF is a line end we wrote.
        ends = len(headers) + 2 + extra.count(b"\n")
        if head.count(b"\n") != ends or head.count(b"\r") != ends:
            raise RuntimeError("Invalid HTTP header name or value (CR or LF inside)")
        return head

    async def send_500(self) -> None:
        body = b"Internal Server Error"
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})
