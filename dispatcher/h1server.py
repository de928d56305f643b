"""The dispatcher's HTTP/1.1 server protocol: uvicorn's server loop, a leaner request cycle.

uvicorn runs the process (sockets, workers, signals, lifespan, graceful shutdown) and hands
each connection to the protocol class named by its ``http`` option; this is that class, used
by ``dispatcher serve`` in place of uvicorn's own ``httptools`` protocol (``http_server =
"uvicorn"`` switches back). The application it runs is still plain ASGI 3; only the cost of
each request differs, which matters when every request of every tenant passes through:

- the response head is not written on ``http.response.start`` but together with the first
  body bytes: a small response leaves in one ``write`` instead of two. A head whose body does
  not follow in the same turn of the event loop (server-sent events, a slow upstream) is
  flushed at the end of that turn, so streaming clients still see it at once;
- header names and values are not matched against regular expressions one by one; the
  rendered head is checked once for stray CR or LF (the response-splitting guard);
- no ``asyncio.Event`` per request (a future only when ``receive`` must wait), no keep-alive
  timer per request (one per connection, re-armed only when it fires), a request body chunk
  is passed on without copying it into a ``bytearray`` first.

Everything else follows uvicorn's protocol: keep-alive, pipelining (one request at a time,
reading paused meanwhile), ``Expect: 100-continue``, flow control both ways, WebSocket upgrades
handed to uvicorn's WebSocket protocol, ``limit_concurrency``, graceful shutdown. A request
head larger than uvicorn's ``h11_max_incomplete_event_size`` is answered 431, a malformed one
400, both in the dispatcher's JSON error shape, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from typing import Any, Final
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from dispatcher.errors import DispatcherError, HeadersTooLarge, InvalidRequest
from dispatcher.proxy.headers import RequestIds
from dispatcher.responses import error_body, error_head

__all__ = ["H1Protocol"]

Message = dict[str, Any]

_log = logging.getLogger("uvicorn.error")
_ids = RequestIds()

_CRLF: Final = b"\r\n"
_SEP: Final = b": "
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CHUNKED_HEADER: Final = b"transfer-encoding: chunked\r\n"
_CLOSE_HEADER: Final = b"connection: close\r\n"
_NO_BODY_STATUS: Final = frozenset((204, 304))
_FRAMING: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}


def _tokens(value: bytes) -> list[bytes]:
    """The lowercased tokens of a comma-separated header value (``Connection``)."""
    return [token.strip() for token in value.lower().split(b",")]


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the request head passed the size limit."""


class _Cycle:
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
                conn.transport.write(_CONTINUE)
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
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
            conn.loop.call_soon(self._flush_head)
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
                body += _LAST_CHUNK
        elif self._remaining >= 0:
            self._remaining -= len(body)
            if self._remaining < 0:
                raise RuntimeError("Response content longer than Content-Length")
        head = self._head
        if head is not None:
            self._head = None
            body = head + body if body else head
        if body:
            conn.transport.write(body)
        if not more_body:
            if self._remaining > 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            if not self.keep_alive:
                conn.transport.close()
            conn.response_complete(self)

    def _flush_head(self) -> None:
        head = self._head
        if head is not None and not self.disconnected:
            self._head = None
            self.conn.transport.write(head)

    def _render_head(self, status: int, headers: Any) -> bytes:
        line = _STATUS_LINES.get(status)
        if line is None:
            raise RuntimeError(f"Invalid HTTP status code {status!r}")
        defaults = self.conn.default_headers
        if defaults:
            headers = [*defaults, *headers]
        elif type(headers) is not list:
            headers = list(headers)  # walked twice below
        self._chunked, self._remaining = False, -1
        framed = self._head_only
        if status in _NO_BODY_STATUS or status < 200:
            framed, self._remaining = True, 0  # no body allowed, whatever the headers say
        close_sent = False
        for name, value in headers:
            lowered = name.lower()
            if lowered not in _FRAMING:
                continue
            if lowered == b"content-length":
                if not framed:
                    framed = True
                    self._remaining = int(value)
            elif lowered == b"transfer-encoding":
                if value.lower() == b"chunked" and not framed:
                    framed = self._chunked = True
            elif b"close" in _tokens(value):  # Connection
                self.keep_alive = False
                close_sent = True
        extra = b""
        if not framed:
            if self.scope["http_version"] == "1.0":
                self.keep_alive = False  # HTTP/1.0 has no chunked coding: the close ends it
            else:
                self._chunked = True
                extra = _CHUNKED_HEADER
        if not self.keep_alive and not close_sent:
            extra += _CLOSE_HEADER
        lines = b"\r\n".join([b": ".join(header) for header in headers])
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


class H1Protocol(asyncio.Protocol):
    """One client connection (pass the class as uvicorn's ``http`` option)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.root_path = config.root_path
        self.limit_concurrency = config.limit_concurrency
        self.keepalive_timeout = float(config.timeout_keep_alive)
        self.head_limit = config.h11_max_incomplete_event_size or 1024 * 1024
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self.parser: Any = httptools.HttpRequestParser(self)
        # Answer the first of pipelined requests even when it asks to close the connection.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.cycle: _Cycle | None = None  # the request being answered
        self.pipeline: deque[_Cycle] = deque()  # requests parsed behind it, in order
        self._parsing: _Cycle | None = None  # the newest request: its body goes here
        self._idle_since = 0.0
        self._idle = True
        self._idle_timer: asyncio.TimerHandle | None = None

        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # of the complete parts of the head (URL, headers)
        self._in_head = False  # a request head has begun and not ended
        self._head_received = 0  # bytes received while a head was unfinished
        self._ended = False  # a request ended in the read being parsed
        self._expect_100 = False

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.server_state.default_headers

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)  # type: ignore[arg-type]
        self.transport = transport  # type: ignore[assignment]
        self.server = get_local_addr(self.transport)
        self.client = get_remote_addr(self.transport)
        self.scheme = "https" if is_ssl(self.transport) else "http"
        self._become_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None:
                if not cycle.complete:
                    cycle.disconnected = True
                cycle.wake()
        self._wake_drain()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.parser = None  # breaks the parser <-> protocol reference cycle

    def data_received(self, data: bytes) -> None:
        continued = self._in_head  # this read continues an unfinished head
        self._ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._websocket_requested():
                self._upgrade_to_websocket()
            else:
                _log.warning("Unsupported upgrade request.")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._reject(HeadersTooLarge("The request head is too large"))
            else:
                _log.warning("Invalid HTTP request received.")
                self._reject(InvalidRequest("Invalid HTTP request received"))
            return
        if self._in_head and (continued or not self._ended):
            # The parser keeps an unfinished header in memory however long it grows: count
            # what arrives until the head ends. A read that also ended an earlier request is
            # not counted (how much of it is head is unknown): the limit is then met at most
            # one read late.
            self._head_received += len(data)
            if self._head_received > self.head_limit:
                self._reject(HeadersTooLarge("The request head is too large"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle = False
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._in_head = True
        self._head_received = 0
        self._expect_100 = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))
        self._count_head(len(name) + len(value) + 4)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.head_limit:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        if parser.should_upgrade() and self._websocket_requested():
            return  # data_received hands the connection over when the parser stops
        version = parser.get_http_version()
        url = self._url
        if url[:1] == b"/" and b"#" not in url:
            raw_path, _, query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root_path = self.root_path
        scope: Message = {
            "type": "http",
            "asgi": self.asgi,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": root_path,
            "path": root_path + path if root_path else path,
            "raw_path": root_path.encode("ascii") + raw_path if root_path else raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.app_state.copy(),
        }
        cycle = _Cycle(
            self,
            scope,
            keep_alive=version != "1.0" and parser.should_keep_alive(),
            expect_100=self._expect_100,
        )
        self._parsing = cycle
        current = self.cycle
        if current is None or current.complete:
            self.cycle = cycle
            self._start(cycle)
        else:
            # Pipelined: answered in order, one at a time; stop reading meanwhile.
            self.pause_reading()
            self.pipeline.append(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is not None and not cycle.complete:
            cycle.body_received(body)

    def on_message_complete(self) -> None:
        self._ended = True
        cycle = self._parsing
        if cycle is not None and not cycle.complete:
            cycle.more_body = False
            cycle.wake()

    # -- requests --------------------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        limit = self.limit_concurrency
        app = self.app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            _log.warning("Exceeded concurrency limit.")
            app = service_unavailable
        task = cycle.task = self.loop.create_task(self._run(cycle, app))
        self.tasks.add(task)

    async def _run(self, cycle: _Cycle, app: Any) -> None:
        try:
            result = await app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            _log.error("Exception in ASGI application\n", exc_info=exc)
            if not cycle.started:
                await cycle.send_500()
            else:
                self.transport.close()
            if not isinstance(exc, Exception):
                raise
        else:
            if result is not None:
                _log.error("ASGI callable should return None, but returned '%s'.", result)
                self.transport.close()
            elif not cycle.started and not cycle.disconnected:
                _log.error("ASGI callable returned without starting response.")
                await cycle.send_500()
            elif not cycle.complete and not cycle.disconnected:
                _log.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.tasks.discard(cycle.task)

    def response_complete(self, cycle: _Cycle) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.resume_reading()
        if self.pipeline:
            self.cycle = self.pipeline.popleft()
            self._start(self.cycle)
        else:
            self._become_idle()

    def shutdown(self) -> None:
        """Called by the server on graceful shutdown: close once the current answer is out."""
        newest = self._parsing
        if newest is None or newest.complete:
            self.transport.close()
        else:
            newest.keep_alive = False  # the last request parsed is the last one answered

    # -- keep-alive: one timer per connection, re-armed only when it fires -----------------

    def _become_idle(self) -> None:
        self._idle = True
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.keepalive_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if not self._idle or self.transport.is_closing():
            return  # a request is in progress: re-armed when it completes
        left = self._idle_since + self.keepalive_timeout - self.loop.time()
        if left <= 0:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_later(left, self._idle_check)

    # -- flow control ----------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the edges -------------------------------------------------------------------------

    def _reject(self, error: DispatcherError) -> None:
        """Answer a request the application cannot see (malformed, too large), then close.

        If a response is already under way for an earlier part of the stream, there is no
        room for another status line: the connection is only closed.
        """
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None and not cycle.complete:
                cycle.disconnected = True
                cycle.wake()
                if cycle.started:
                    self.transport.close()
                    return
        request_id = _ids.new()
        body = error_body(error, request_id)
        parts = [_STATUS_LINES[error.status]]
        for name, value in error_head(error, request_id, len(body)):
            parts += (name, _SEP, value, _CRLF)
        parts += (_CLOSE_HEADER, _CRLF, body)
        self.transport.write(b"".join(parts))
        self.transport.close()

    def _websocket_requested(self) -> bool:
        if self.config.ws_protocol_class is None:
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in self._headers:
            if name == b"connection":
                connection = _tokens(value)
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in connection

    def _upgrade_to_websocket(self) -> None:
        """Replay the request head into uvicorn's WebSocket protocol and hand it the socket."""
        self.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        method = self.parser.get_method()
        parts = [method, b" ", self._url, b" HTTP/1.1\r\n"]
        for name, value in self._headers:
            parts += (name, _SEP, value, _CRLF)
        parts.append(_CRLF)
        protocol = self.config.ws_protocol_class(  # type: ignore[call-arg,misc]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        protocol.data_received(b"".join(parts))
        self.transport.set_protocol(protocol)
