"""The connection: parsing requests, keep-alive, pipelining, limits, WebSocket hand-over."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from dispatcher.asgi import DEFAULT_LIMITS, LIMITS_STATE_KEY, REQUEST_IDS, ServerLimits
from dispatcher.errors import DispatcherError, HeadersTooLarge, InvalidRequest, RequestTimeout
from dispatcher.h1server.cycle import (
    CLOSE_HEADER,
    STATUS_LINES,
    Cycle,
    HeadFlusher,
    Message,
    tokens,
)
from dispatcher.responses import error_body, error_head

__all__ = ["H1Protocol"]

_log = logging.getLogger("uvicorn.error")

_CRLF: Final = b"\r\n"
_SEP: Final = b": "
# Requests parsed ahead of the one being answered, at most. The parser reads a whole read at a
# time: without a bound, one 256 KiB read of tiny pipelined requests became thousands of
# queued requests (about 1 KiB each) held while the client reads no answer.
MAX_PIPELINED: Final = 32


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the request head passed the size limit."""


class _InvalidTarget(Exception):
    """Raised from a parser callback: the request target cannot be forwarded."""


class _PipelineFull(Exception):
    """Raised from a parser callback: ``MAX_PIPELINED`` requests already wait their turn."""


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
        self.heads = HeadFlusher.of(self.loop)
        self.server_state = server_state
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.root_path = config.root_path
        self.limit_concurrency = config.limit_concurrency
        self.keepalive_timeout = float(config.timeout_keep_alive)
        limits: ServerLimits = app_state.get(LIMITS_STATE_KEY, DEFAULT_LIMITS)
        self.head_timeout = limits.request_head_timeout
        self.body_timeout = limits.request_body_timeout
        # The longest the timer sleeps while a deadline could start unseen: a head beginning
        # on an idle connection, or a body beginning after a head that began meanwhile.
        self._tick = min(self.head_timeout, self.body_timeout)
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
        self.cycle: Cycle | None = None  # the request being answered
        self.pipeline: deque[Cycle] = deque()  # requests parsed behind it, in order
        self._parsing: Cycle | None = None  # the newest request: its body goes here
        self._idle_since = 0.0
        self._idle = True
        self._timer: asyncio.TimerHandle | None = None  # see "deadlines" below
        self._head_since = 0.0  # when the unfinished head began
        self._read_at = 0.0  # when a read last brought (or could have brought) body bytes
        self._start_next: Cycle | None = None  # parsed in this read, started once it parsed

        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # of the complete parts of the head (URL, headers)
        self._in_head = False  # a request head has begun and not ended
        self._in_body = False  # a request head has ended and its body not
        self._body_in_read = False  # the read being parsed carried body bytes
        self._framing = 0  # bytes of reads inside a body that carried no body bytes
        self._head_received = 0  # bytes received while a head was unfinished
        self._ended = False  # a request ended in the read being parsed
        self._expect_100 = False
        self._reads_stopped = False  # see _stop_reading_requests

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.parser = None  # breaks the parser <-> protocol reference cycle

    def data_received(self, data: bytes) -> None:
        continued = self._in_head  # this read continues an unfinished head
        self._ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._websocket_requested():
                self._start_next = None
                self._upgrade_to_websocket()
                return
            _log.warning("Unsupported upgrade request.")
            if self._unsupported_upgrade():
                return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _PipelineFull):
                self._stop_reading_requests()  # what was parsed is answered, and started
            else:
                # Nothing parsed in this read has started: a request the parser refused after
                # its head (a bad Transfer-Encoding, a bad chunk) never reaches the application.
                self._start_next = None
                if isinstance(exc.__context__, _HeadTooLarge):
                    self._reject(HeadersTooLarge("The request head is too large"))
                else:
                    _log.warning("Invalid HTTP request received.")
                    self._reject(InvalidRequest("Invalid HTTP request received"))
                return
        cycle = self._start_next
        if cycle is not None:
            self._start_next = None
            self._start(cycle)
        if self._in_head:
            if continued and not self._ended:
                # The parser keeps an unfinished header in memory however long it grows:
                # count what arrives until the head ends.
                self._head_received += len(data)
            else:
                # A head began in this read. A read that also ended an earlier request is
                # not counted (how much of it is head is unknown): the limit is then met at
                # most one read late.
                self._head_since = self.loop.time()
                if not self._ended:
                    self._head_received += len(data)
            if self._head_received > self.head_limit:
                self._reject(HeadersTooLarge("The request head is too large"))
        elif self._in_body:
            self._read_at = self.loop.time()
            if self._body_in_read:
                self._body_in_read = False
                self._framing = 0
            else:
                # Chunk sizes, chunk extensions and trailers, which the parser gathers like a
                # head and max_body_bytes does not count: held to the head's limit.
                self._framing += len(data)
                if self._framing > self.head_limit:
                    self._reject(HeadersTooLarge("The request trailers are too large"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle = False
        self._url = b""
        self._head_bytes = 0
        self._in_head = True
        if self._headers:  # trailers of the previous request
            self._headers = []
        if self._timer is None:  # stopped while a request was being answered
            self._timer = self.loop.call_later(self._tick, self._check_deadlines)
        self._head_received = 0
        self._expect_100 = False

    # The parser calls these once per header line: the size check is written out in each
    # (a helper call per header line is a measurable share of a small request's work).

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.head_limit:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.head_limit:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        if parser.should_upgrade() and self._websocket_requested():
            return  # data_received hands the connection over when the parser stops
        current = self.cycle
        if current is not None and not current.complete and len(self.pipeline) >= MAX_PIPELINED:
            raise _PipelineFull
        self._in_body = True  # until on_message_complete, in this read for most requests
        headers = self._headers
        # Header lines parsed from here on are trailers of a chunked body: they go to a list
        # no request sees, and are dropped with it.
        self._headers = []
        version = parser.get_http_version()
        url = self._url
        # find, not "in": in CPython 3.11 "in" on bytes first tries its operand as an integer,
        # raising and clearing a TypeError on every request.
        if url[:1] == b"/" and url.find(b"#") < 0:
            raw_path, _, query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
            if parsed.host:
                # RFC 9112 section 3.2.2: the authority of an absolute-form target is the
                # request's host; the Host header is replaced by it.
                if b"@" in url.partition(b"//")[2].partition(b"/")[0]:
                    raise _InvalidTarget  # userinfo in a request target: never legitimate
                authority = parsed.host
                if b":" in authority:  # an IPv6 literal: bracketed, as in a Host header
                    authority = b"[" + authority + b"]"
                if parsed.port is not None:
                    authority += b":%d" % parsed.port
                headers = [(n, v) for n, v in headers if n != b"host"]
                headers.append((b"host", authority))
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
            "headers": headers,
            "state": self.app_state.copy(),
        }
        cycle = Cycle(
            self,
            scope,
            keep_alive=version != "1.0" and parser.should_keep_alive(),
            expect_100=self._expect_100,
        )
        self._parsing = cycle
        if current is None or current.complete:
            self.cycle = cycle
            self._start_next = cycle  # started when the parser is done with this read
        else:
            # Pipelined: answered in order, one at a time; stop reading meanwhile.
            self.pause_reading()
            self.pipeline.append(cycle)

    def on_body(self, body: bytes) -> None:
        self._body_in_read = True
        cycle = self._parsing
        if cycle is not None and not cycle.complete:
            cycle.body_received(body)

    def on_message_complete(self) -> None:
        self._ended = True
        self._in_body = False
        cycle = self._parsing
        if cycle is not None and not cycle.complete:
            cycle.more_body = False
            cycle.wake()

    # -- requests --------------------------------------------------------------------------

    def _start(self, cycle: Cycle) -> None:
        limit = self.limit_concurrency
        app = self.app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            _log.warning("Exceeded concurrency limit.")
            app = service_unavailable
        task = cycle.task = self.loop.create_task(self._run(cycle, app))
        self.tasks.add(task)

    async def _run(self, cycle: Cycle, app: Any) -> None:
        try:
            result = await app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            if cycle.timed_out and isinstance(exc, RequestTimeout):
                if not cycle.started:
                    self._reject(exc)
                else:
                    self.transport.close()
                return
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
            elif cycle.timed_out and not cycle.started:
                self._reject(RequestTimeout("The request body was not received in time"))
            elif not cycle.started and not cycle.disconnected:
                _log.error("ASGI callable returned without starting response.")
                await cycle.send_500()
            elif not cycle.complete and not cycle.disconnected:
                _log.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.tasks.discard(cycle.task)

    def response_complete(self, cycle: Cycle) -> None:
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
        if self._timer is None:
            self._timer = self.loop.call_later(
                min(self.keepalive_timeout, self._tick), self._check_deadlines
            )

    def _check_deadlines(self) -> None:
        """The connection's one timer: keep-alive, request head and request body deadlines.

        It runs while the connection waits on the client (idle, inside a head, or inside a
        body still due) and stops while a request is being answered; starting a head or
        becoming idle re-arms it if it stopped. Nothing is armed or cancelled per request:
        while idle or inside a head it fires at least every ``min(request_head_timeout,
        request_body_timeout)``, so a head or a body that begins meanwhile is seen, and
        re-armed for its own deadline.
        """
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._in_head:
            current = self.cycle
            if current is not None and not current.complete:
                # Pipelined behind a request still being answered (reading is paused).
                left = self._tick
            else:
                left = self._head_since + self.head_timeout - now
                if left <= 0:
                    self._reject(RequestTimeout("The request head was not received in time"))
                    return
                left = min(left, self._tick)  # the body may begin (and need its deadline)
        elif self._in_body:
            cycle = self._parsing
            if self.read_paused or (cycle is not None and cycle.awaiting_continue):
                left = self.body_timeout  # waiting on us, not on the client
            else:
                left = self._read_at + self.body_timeout - now
                if left <= 0:
                    if cycle is not None:
                        cycle.time_out()  # its receive raises RequestTimeout
                    return  # the connection closes once the request is answered
        elif self._idle:
            left = self._idle_since + self.keepalive_timeout - now
            if left <= 0:
                self.transport.close()
                return
            left = min(left, self._tick)
        else:
            return  # a request is being answered: re-armed by the next head or idle time
        self._timer = self.loop.call_later(left, self._check_deadlines)

    # -- flow control ----------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self._reads_stopped:
            self.read_paused = False
            self._read_at = self.loop.time()  # the body deadline counts from here again
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
        request_id = REQUEST_IDS.new()
        body = error_body(error, request_id)
        parts = [STATUS_LINES[error.status]]
        for name, value in error_head(error, request_id, len(body)):
            parts += (name, _SEP, value, _CRLF)
        parts += (CLOSE_HEADER, _CRLF, body)
        self.transport.write(b"".join(parts))
        self.transport.close()

    def _websocket_requested(self) -> bool:
        if self.config.ws_protocol_class is None:
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in self._headers:
            if name == b"connection":
                connection = tokens(value)
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in connection

    def _stop_reading_requests(self) -> None:
        """``MAX_PIPELINED`` requests wait behind the one being answered: those are answered,
        nothing more is read, and the connection closes after the last answer (RFC 9112
        section 9.3.2: a client retries the requests a closed connection left unanswered).
        """
        self._reads_stopped = True
        self.pause_reading()
        last = self.pipeline[-1] if self.pipeline else self.cycle
        if last is not None:
            last.keep_alive = False

    def _unsupported_upgrade(self) -> bool:
        """An upgrade other than a WebSocket (``h2c``...): answered as a plain request, if it
        can be. Returns whether the request was refused instead.

        The parser ends such a request with its head and hands every byte after it to the new
        protocol: a body the request declared is never read (it would reach the upstream empty,
        or as a head promising bytes that never come), so that request is refused before any
        upstream sees it; and nothing after the head can be read as a next request, so the
        answer is the connection's last.
        """
        cycle = self._parsing
        if cycle is None or cycle.complete:
            return False
        for name, value in cycle.scope["headers"]:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t0")):
                self._start_next = None
                self._reject(InvalidRequest("An upgrade request cannot carry a body"))
                return True
        cycle.keep_alive = False
        return False

    def _upgrade_to_websocket(self) -> None:
        """Replay the request head into uvicorn's WebSocket protocol and hand it the socket."""
        self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
