"""The dispatcher's HTTP/1.1 server protocol (``dispatcher.h1server.H1Protocol``).

Small ASGI applications written here run under a real uvicorn (``ThreadedServer``) with
``http="dispatcher.h1server:H1Protocol"`` on 127.0.0.1; the tests speak HTTP over raw sockets
so that they see the bytes exactly as the protocol wrote them. Nothing sleeps: the tests block
on socket reads with a timeout as the deadline, or poll a condition with ``wait_until``; the
applications wait on events the tests set through ``ThreadedServer.call``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

from dispatcher.asgi import LIMITS_STATE_KEY, ServerLimits
from dispatcher.h1server import H1Protocol
from dispatcher.h1server.cycle import HeadFlusher
from tests.servers import ThreadedServer, wait_until
from tests.tenant import answer_lifespan

H1 = "dispatcher.h1server:H1Protocol"

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

MIB = 1024 * 1024
PIECE = bytes(range(256)) * 256  # 64 KiB
BIG = 16 * MIB  # well over what the socket buffers of both ends hold

# Header variants that would split the response if written as they are.
SPLITTERS: dict[str, tuple[bytes, bytes]] = {
    "crlf-in-value": (b"x-note", b"x\r\nSet-Cookie: evil=1"),
    "lf-in-value": (b"x-note", b"x\nSet-Cookie: evil=1"),
    "cr-in-value": (b"x-note", b"x\rSet-Cookie: evil=1"),
    "crlf-in-name": (b"x-note: x\r\nSet-Cookie", b"evil=1"),
}


# -- the application ------------------------------------------------------------------------------


async def respond(send: Send, body: bytes, status: int = 200, headers: Headers = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> tuple[bytes, list[bool]]:
    """The whole request body and the ``more_body`` flag of every message that carried it."""
    parts: list[bytes] = []
    flags: list[bool] = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        parts.append(message["body"])
        flags.append(message.get("more_body", False))
        if not flags[-1]:
            return b"".join(parts), flags


class App:
    """One route per behaviour, chosen by path; it records what it saw for the tests."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}  # created and set on the server's loop
        self.reached: set[str] = set()  # keys whose request got to its gate
        self.received: dict[str, list[Message]] = defaultdict(list)
        self.scopes: dict[str, Scope] = {}  # by the request's X-Key header
        self.seen: list[str] = []  # paths of /path/... requests, in the order they started
        self.sent: dict[str, int] = defaultdict(int)  # body bytes /big has sent, by key

    def _gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    async def _hold(self, key: str) -> None:
        self.reached.add(key)
        await self._gate(key).wait()

    def release(self, server: ThreadedServer, key: str) -> None:
        """Open the gate ``key`` (on the server's loop) for the request waiting at it."""

        async def open_gate() -> None:
            self._gate(key).set()

        server.call(open_gate())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        assert scope["type"] == "http"
        query = parse_qs(scope["query_string"].decode("latin-1"))
        key = query.get("key", [""])[0]
        for name, value in scope["headers"]:
            if name == b"x-key":
                self.scopes[value.decode("latin-1")] = scope
        await self.route(scope["path"], key, query, receive, send)

    async def route(
        self, path: str, key: str, query: dict[str, list[str]], receive: Receive, send: Send
    ) -> None:
        if path == "/hello":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", b"5"),
                        (b"X-Custom", b"Mixed Case"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"hello", "more_body": False})
        elif path == "/stream":
            start = {"type": "http.response.start", "status": 200}
            await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
            await self._hold(key)
            await send({"type": "http.response.body", "body": b"data: late\n\n"})
        elif path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"abc", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            await send({"type": "http.response.body", "body": b"defgh", "more_body": False})
        elif path == "/status":
            code = int(query["code"][0])
            headers = [(b"x-status", b"%d" % code)]
            await send({"type": "http.response.start", "status": code, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif path in ("/over", "/over-split", "/under"):
            length = b"10" if path == "/under" else b"3"
            headers = [(b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if path == "/over":
                await send({"type": "http.response.body", "body": b"abcdef"})
            elif path == "/over-split":
                await send({"type": "http.response.body", "body": b"abc", "more_body": True})
                await send({"type": "http.response.body", "body": b"def"})
            else:
                await send({"type": "http.response.body", "body": b"abc"})
        elif path == "/split":
            headers = [(b"content-type", b"text/plain"), SPLITTERS[query["variant"][0]]]
            await respond(send, b"split", headers=headers)
        elif path == "/echo":
            body, _ = await read_body(receive)
            await respond(send, body)
        elif path == "/gated-echo":
            await self._hold(key)
            body, _ = await read_body(receive)
            await respond(send, body)
        elif path == "/digest":
            body, flags = await read_body(receive)
            digest = {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            await respond(send, json.dumps({**digest, "flags": flags}).encode())
        elif path == "/wait-disconnect":
            while True:
                message = await receive()
                self.received[key].append(message)
                if message["type"] == "http.disconnect":
                    return
        elif path == "/raise-before":
            raise RuntimeError("boom before the response")
        elif path == "/raise-after":
            headers = [(b"content-length", b"10")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"abc", "more_body": True})
            raise RuntimeError("boom in the middle of the response")
        elif path == "/no-response":
            return
        elif path == "/hold":
            await self._hold(key)
            await respond(send, b"held")
        elif path == "/big":
            headers = [(b"content-length", b"%d" % BIG)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while self.sent[key] < BIG:
                self.sent[key] += len(PIECE)
                more = self.sent[key] < BIG
                await send({"type": "http.response.body", "body": PIECE, "more_body": more})
        elif path.startswith("/path/"):
            self.seen.append(path)
            await respond(send, path.encode())
        else:
            await respond(send, b"not found", status=404)


# -- a raw client ---------------------------------------------------------------------------------


@dataclass
class Head:
    raw: bytes
    status: int
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name]
        assert len(values) <= 1, f"{name} appears {len(values)} times in {self.raw!r}"
        return values[0] if values else None


@dataclass
class Response:
    head: Head
    body: bytes
    chunks: list[bytes] = field(default_factory=list)
    raw_body: bytes = b""

    @property
    def status(self) -> int:
        return self.head.status


def parse_head(raw: bytes) -> Head:
    lines = raw.removesuffix(b"\r\n\r\n").split(b"\r\n")
    version, status, _reason = lines[0].split(b" ", 2)
    assert version == b"HTTP/1.1", lines[0]
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        assert colon, f"not a header line: {line!r}"
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return Head(raw, int(status), headers)


class Peer:
    """One client connection to the server: writes raw bytes, parses what comes back.

    Every read blocks at most ``timeout`` seconds: that is the deadline of the test.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, what: str) -> bytes:
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; received so far: {bytes(self.buffer[:300])!r}"
            ) from None

    def _fill(self, what: str) -> None:
        chunk = self._recv(what)
        if not chunk:
            raise AssertionError(
                f"connection closed before {what}; got {bytes(self.buffer[:300])!r}"
            )
        self.buffer += chunk

    def read_until(self, marker: bytes, what: str) -> bytes:
        while (index := self.buffer.find(marker)) < 0:
            self._fill(what)
        return self._take(index + len(marker))

    def read_exactly(self, size: int, what: str) -> bytes:
        while len(self.buffer) < size:
            self._fill(what)
        return self._take(size)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_head(self) -> Head:
        return parse_head(self.read_until(b"\r\n\r\n", "a response head"))

    def read_chunked(self) -> tuple[list[bytes], bytes]:
        """The chunks of a chunked body (strict framing) and the body's raw bytes."""
        chunks: list[bytes] = []
        raw = b""
        while True:
            line = self.read_until(b"\r\n", "a chunk size line")
            raw += line
            size = int(line[:-2], 16)
            if size == 0:
                end = self.read_exactly(2, "the end of the chunked body")
                assert end == b"\r\n", f"no CRLF after the last chunk: {end!r}"
                return chunks, raw + end
            chunk = self.read_exactly(size + 2, "a chunk")
            assert chunk.endswith(b"\r\n"), f"a chunk not followed by CRLF: {chunk[-10:]!r}"
            chunks.append(chunk[:-2])
            raw += chunk

    def read_response(self, method: str = "GET") -> Response:
        head = self.read_head()
        if method == "HEAD" or head.status in (204, 304) or head.status < 200:
            return Response(head, b"")
        if head.get("transfer-encoding") == "chunked":
            chunks, raw = self.read_chunked()
            return Response(head, b"".join(chunks), chunks, raw)
        length = head.get("content-length")
        if length is not None:
            body = self.read_exactly(int(length), "the response body")
            return Response(head, body, raw_body=body)
        body = self.read_to_eof()
        return Response(head, body, raw_body=body)

    def read_to_eof(self) -> bytes:
        """Everything until the server closes the connection; fails if it does not."""
        while True:
            try:
                chunk = self._recv("the server to close the connection")
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return self._take(len(self.buffer))
            self.buffer += chunk

    def assert_quiet(self) -> None:
        """Nothing more has arrived and the connection is open (checked without waiting)."""
        assert not self.buffer, f"unexpected bytes: {bytes(self.buffer[:300])!r}"
        self.sock.settimeout(0)
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            return
        finally:
            self.sock.settimeout(5.0)
        raise AssertionError(f"unexpected bytes: {data[:300]!r}" if data else "connection closed")


def get(path: str, *extra: bytes, version: bytes = b"1.1") -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/" + version, b"Host: test", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post_head(path: str, *extra: bytes) -> bytes:
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: test", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def new_key() -> str:
    return uuid.uuid4().hex


# -- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> App:
    return App()


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[ThreadedServer]:
    # Idle connections stay open far longer than any read deadline here, so that a close the
    # tests wait for cannot be the keep-alive timeout's.
    with ThreadedServer(app, http=H1, timeout_keep_alive=30) as running:
        yield running


@pytest.fixture(scope="module")
def short_keep_alive(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, http=H1, timeout_keep_alive=1) as running:
        yield running


@pytest.fixture(scope="module")
def small_heads(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, http=H1, h11_max_incomplete_event_size=4096) as running:
        yield running


def test_the_server_speaks_through_h1protocol(server: ThreadedServer) -> None:
    # Guards every other test: they must exercise H1Protocol, not uvicorn's own protocol.
    state = server.server.server_state
    with Peer(server.port) as peer:
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"
        assert len(state.connections) == 1
        assert all(isinstance(conn, H1Protocol) for conn in tuple(state.connections))


# -- responses ------------------------------------------------------------------------------------


def test_small_response_is_complete_and_the_connection_kept_alive(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        for _ in range(2):
            peer.send(get("/hello"))
            response = peer.read_response()
            assert response.head.raw == (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n"
                b"X-Custom: Mixed Case\r\n\r\n"
            )
            assert response.body == b"hello"
        peer.assert_quiet()


def test_server_default_headers_come_first(app: App) -> None:
    with (
        ThreadedServer(app, http=H1, server_header=True, date_header=True) as server,
        Peer(server.port) as peer,
    ):
        peer.send(get("/hello"))
        response = peer.read_response()
    names = [name for name, _ in response.head.headers]
    assert sorted(names[:2]) == ["date", "server"]  # uvicorn's, in uvicorn's order
    assert names[2:] == ["content-type", "content-length", "X-Custom"]
    assert response.head.get("server") == "uvicorn"
    assert response.body == b"hello"


def test_streaming_head_arrives_before_the_body_is_sent(app: App, server: ThreadedServer) -> None:
    key = new_key()
    try:
        with Peer(server.port, timeout=3) as peer:
            peer.send(get(f"/stream?key={key}"))
            # The application sits at its gate until the test opens it: the head must be out.
            head = peer.read_head()
            assert key in app.reached
            assert head.status == 200
            assert head.get("content-type") == "text/event-stream"
            assert head.get("transfer-encoding") == "chunked"
            peer.assert_quiet()
            app.release(server, key)
            chunks, raw = peer.read_chunked()
            assert chunks == [b"data: late\n\n"]
            assert raw == b"c\r\ndata: late\n\n\r\n0\r\n\r\n"
    finally:
        app.release(server, key)


def test_response_without_content_length_is_chunked(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/chunked"))
        response = peer.read_response()
        assert response.head.get("transfer-encoding") == "chunked"
        assert response.head.get("content-length") is None
        # The empty body message in the middle must not become the terminating 0 chunk.
        assert response.raw_body == b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"
        assert response.body == b"abcdefgh"
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"


@pytest.mark.parametrize("path", ["/hello", "/chunked"])
def test_head_request_gets_the_head_and_no_body(server: ThreadedServer, path: str) -> None:
    with Peer(server.port) as peer:
        peer.send(get(path).replace(b"GET", b"HEAD", 1))
        head = peer.read_head()
        assert head.status == 200
        if path == "/hello":
            assert head.get("content-length") == "5"
        # No body bytes: the next thing on the connection is the next response's status line.
        peer.assert_quiet()
        peer.send(get("/hello"))
        assert not peer.buffer
        response = peer.read_response()
        assert response.head.raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.body == b"hello"


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_status_has_no_body_and_no_framing(server: ThreadedServer, code: int) -> None:
    with Peer(server.port) as peer:
        peer.send(get(f"/status?code={code}"))
        head = peer.read_head()
        phrase = b"No Content" if code == 204 else b"Not Modified"
        assert head.raw == b"HTTP/1.1 %d %b\r\nx-status: %d\r\n\r\n" % (code, phrase, code)
        peer.assert_quiet()
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"


@pytest.mark.parametrize("path", ["/over", "/over-split"])
def test_body_longer_than_content_length_is_cut_and_closed(
    server: ThreadedServer, path: str
) -> None:
    with Peer(server.port) as peer:
        peer.send(get(path))
        data = peer.read_to_eof()  # keep-alive otherwise: the close is the assertion
    assert b"def" not in data, data
    if data:
        head, _, body = data.partition(b"\r\n\r\n")
        assert parse_head(head + b"\r\n\r\n").get("content-length") == "3"
        assert len(body) <= 3, data


def test_body_shorter_than_content_length_closes_the_connection(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/under"))
        head = peer.read_head()
        assert head.get("content-length") == "10"
        body = peer.read_to_eof()
    assert body == b"abc"


@pytest.mark.parametrize("variant", sorted(SPLITTERS))
def test_cr_or_lf_in_a_header_never_reaches_the_client(
    server: ThreadedServer, variant: str
) -> None:
    with Peer(server.port) as peer:
        peer.send(get(f"/split?variant={variant}"))
        data = peer.read_to_eof()
    assert b"set-cookie" not in data.lower(), data
    assert data == b"" or data.startswith(b"HTTP/1.1 500 "), data


def test_a_refused_head_still_gets_a_clean_500(server: ThreadedServer) -> None:
    # The bad head is refused before anything is written, so the 500 can still be sent.
    with Peer(server.port) as peer:
        peer.send(get("/split?variant=crlf-in-value"))
        response = peer.read_response()
        assert response.status == 500
        assert response.body == b"Internal Server Error"
        assert response.head.get("transfer-encoding") is None
        assert peer.read_to_eof() == b""


def test_http_1_0_response_of_unknown_length_ends_with_the_connection(
    server: ThreadedServer,
) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/chunked", version=b"1.0"))
        head = peer.read_head()
        assert head.get("transfer-encoding") is None  # HTTP/1.0 has no chunked coding
        assert head.get("connection") == "close"
        assert peer.read_to_eof() == b"abcdefgh"


def test_pipelined_requests_are_answered_in_order_one_at_a_time(
    app: App, server: ThreadedServer
) -> None:
    key = new_key()
    two, three = f"/path/{key}/two", f"/path/{key}/three"
    try:
        with Peer(server.port) as peer:
            peer.send(get(f"/hold?key={key}") + get(two) + get(three))
            wait_until(lambda: key in app.reached, what="the first request to run")
            # Reading stops while requests wait behind the one being answered.
            connections = server.server.server_state.connections
            wait_until(
                lambda: any(
                    isinstance(c, H1Protocol) and c.read_paused for c in tuple(connections)
                ),
                what="reading to pause",
            )
            assert two not in app.seen, "the second request started before the first ended"
            app.release(server, key)
            assert peer.read_response().body == b"held"
            assert peer.read_response().body == two.encode()
            assert peer.read_response().body == three.encode()
            peer.assert_quiet()
        assert [path for path in app.seen if key in path] == [two, three]
    finally:
        app.release(server, key)


def test_unread_request_body_does_not_disturb_the_next_request(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        request = post_head("/hello", b"Content-Length: 5000") + b"G" * 5000
        peer.send(request + get("/path/after"))
        assert peer.read_response().body == b"hello"
        assert peer.read_response().body == b"/path/after"
        peer.assert_quiet()


# -- request bodies -------------------------------------------------------------------------------


def test_expect_100_continue_is_answered_when_the_app_reads(
    app: App, server: ThreadedServer
) -> None:
    key = new_key()
    try:
        with Peer(server.port) as peer:
            head = post_head(
                f"/gated-echo?key={key}", b"Content-Length: 5", b"Expect: 100-continue"
            )
            peer.send(head)
            wait_until(lambda: key in app.reached, what="the application to start")
            peer.assert_quiet()  # the application has not called receive() yet
            app.release(server, key)
            interim = peer.read_until(b"\r\n\r\n", "100 Continue")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            peer.send(b"hello")
            response = peer.read_response()
            assert response.status == 200
            assert response.body == b"hello"
            peer.assert_quiet()
    finally:
        app.release(server, key)


def test_no_100_continue_when_the_app_answers_without_reading(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(post_head("/hello", b"Content-Length: 5", b"Expect: 100-continue"))
        response = peer.read_response()
        assert response.head.raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.body == b"hello"
        # The body never came: it cannot be told apart from the next request, so the
        # connection closes (RFC 9110 section 10.1.1 lets a server close or read it).
        assert response.head.get("connection") == "close"
        assert peer.read_to_eof() == b""


BODY = random.Random(5).randbytes(5 * MIB)


def chunk_encode(data: bytes) -> bytes:
    sizes = [1, 4095, 65536, 100_000, 7, 300_001]
    parts, offset, index = [], 0, 0
    while offset < len(data):
        piece = data[offset : offset + sizes[index % len(sizes)]]
        parts.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        offset, index = offset + len(piece), index + 1
    return b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_request_body_reaches_the_app_complete(server: ThreadedServer, framing: str) -> None:
    if framing == "chunked":
        head = post_head("/digest", b"Transfer-Encoding: chunked")
        payload = chunk_encode(BODY)
    else:
        head = post_head("/digest", b"Content-Length: %d" % len(BODY))
        payload = BODY
    with Peer(server.port, timeout=10) as peer:
        peer.send(head)
        step = 77_777  # pieces that split chunk headers and chunk data alike
        for offset in range(0, len(payload), step):
            peer.send(payload[offset : offset + step])
        response = peer.read_response()
    assert response.status == 200
    result = json.loads(response.body)
    assert result["length"] == len(BODY)
    assert result["sha256"] == hashlib.sha256(BODY).hexdigest()
    flags = result["flags"]
    assert len(flags) > 1, "the body was not streamed to the application"
    assert flags[-1] is False
    assert flags.count(False) == 1


def test_large_response_to_a_slow_reader_arrives_complete(app: App, server: ThreadedServer) -> None:
    key = new_key()
    with Peer(server.port, timeout=10) as peer:
        peer.send(get(f"/big?key={key}"))
        # Read nothing until the server has had to stop writing: the socket buffers are full
        # and the application waits in send() for the transport to drain.
        connections = server.server.server_state.connections
        wait_until(
            lambda: any(isinstance(c, H1Protocol) and c.write_paused for c in tuple(connections)),
            what="the writer to pause",
        )
        assert app.sent[key] < BIG, "the application was not held back while writing was paused"
        response = peer.read_response()
    assert len(response.body) == BIG
    assert response.body == PIECE * (BIG // len(PIECE))


# -- malformed and oversized requests -------------------------------------------------------------


def assert_json_error(data: bytes, status: int, code: str) -> None:
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    head = parse_head(head_bytes + b"\r\n\r\n")
    assert head.status == status, data[:300]
    assert head.get("content-type") == "application/json"
    assert head.get("connection") == "close"
    assert head.get("content-length") == str(len(body))
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == head.get("x-request-id")


def test_malformed_request_is_400_json_and_closed(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        data = peer.read_to_eof()
    assert_json_error(data, 400, "invalid_request")


def test_malformed_request_after_a_good_one_on_the_same_connection(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"
        peer.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        data = peer.read_to_eof()
    assert_json_error(data, 400, "invalid_request")


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(get("/hello", b"X-Big: " + b"a" * 10240), id="one-big-header"),
        pytest.param(
            get("/hello", *(b"X-H%d: %b" % (n, b"v" * 40) for n in range(250))),
            id="many-small-headers",
        ),
        pytest.param(get("/hello?" + "q" * 10240), id="long-target"),
    ],
)
def test_request_head_over_the_limit_is_431_json_and_closed(
    small_heads: ThreadedServer, request_bytes: bytes
) -> None:
    with Peer(small_heads.port) as peer:  # the limit is 4096 bytes; a small head passes
        peer.send(get("/hello", b"X-Fits: " + b"a" * 2048))
        assert peer.read_response().body == b"hello"
    with Peer(small_heads.port) as peer:
        peer.send(request_bytes)
        data = peer.read_to_eof()
    assert_json_error(data, 431, "headers_too_large")


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"GET /" + b"q" * 65536, id="unfinished-target"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536, id="unfinished-header"
        ),
    ],
)
def test_head_growing_past_the_limit_is_rejected_before_it_ends(
    small_heads: ThreadedServer, partial: bytes
) -> None:
    # A client that never finishes its head must not make the server buffer it without bound:
    # 64 KiB of a head whose limit is 4 KiB is answered 431 without waiting for the rest.
    with Peer(small_heads.port, timeout=3) as peer:
        peer.send(partial)
        data = peer.read_to_eof()
    assert_json_error(data, 431, "headers_too_large")


def test_bytes_before_an_unfinished_head_do_not_count_against_it(
    small_heads: ThreadedServer,
) -> None:
    # One read holds a whole request with an 8 KiB body and the start of the next request's
    # head: only that start (a few bytes) is head; both requests are well within the limit.
    body = b"b" * 8192
    with Peer(small_heads.port) as peer:
        peer.send(post_head("/echo", b"Content-Length: %d" % len(body)) + body + b"GET /path/x HT")
        first = peer.read_response()
        assert first.status == 200, first.head.raw + first.body[:300]
        assert first.body == body
        peer.send(b"TP/1.1\r\nHost: test\r\n\r\n")
        assert peer.read_response().body == b"/path/x"


# -- disconnects and application failures ---------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "first"),
    [
        pytest.param(
            post_head("/wait-disconnect?key={key}", b"Content-Length: 10") + b"abc",
            {"type": "http.request", "body": b"abc", "more_body": True},
            id="mid-body",
        ),
        pytest.param(
            get("/wait-disconnect?key={key}"),
            {"type": "http.request", "body": b"", "more_body": False},
            id="after-the-body",
        ),
    ],
)
def test_client_disconnect_reaches_the_app_waiting_in_receive(
    app: App, server: ThreadedServer, request_bytes: bytes, first: Message
) -> None:
    key = new_key()
    with Peer(server.port) as peer:
        peer.send(request_bytes.replace(b"{key}", key.encode()))
        wait_until(lambda: len(app.received[key]) == 1, what="the first receive()")
    wait_until(lambda: len(app.received[key]) == 2, what="http.disconnect")
    assert app.received[key] == [first, {"type": "http.disconnect"}]


def test_exception_before_the_response_is_500(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/raise-before"))
        response = peer.read_response()
        assert response.status == 500
        assert response.body == b"Internal Server Error"
        assert response.head.get("connection") == "close"
        assert peer.read_to_eof() == b""


def test_no_response_at_all_is_500(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/no-response"))
        assert peer.read_response().status == 500


def test_exception_after_the_start_closes_without_a_second_status(server: ThreadedServer) -> None:
    with Peer(server.port) as peer:
        peer.send(get("/raise-after"))
        data = peer.read_to_eof()
    assert data.count(b"HTTP/1.1 ") == 1, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"abc"


# -- keep-alive, concurrency, connection close ----------------------------------------------------


def test_idle_keep_alive_connection_is_closed(short_keep_alive: ThreadedServer) -> None:
    with Peer(short_keep_alive.port) as peer:
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"
        answered = time.monotonic()
        assert peer.read_to_eof() == b""  # within the 5 s read deadline
        idle = time.monotonic() - answered
    assert 0.5 < idle < 4, f"closed after {idle:.2f}s idle, timeout_keep_alive is 1 s"


def test_busy_connection_is_not_cut_by_the_keep_alive_timeout(
    app: App, short_keep_alive: ThreadedServer
) -> None:
    key = new_key()
    try:
        with Peer(short_keep_alive.port) as peer:
            peer.send(get(f"/hold?key={key}"))
            wait_until(lambda: key in app.reached, what="the request to run")
            began = time.monotonic()
            wait_until(lambda: time.monotonic() - began > 1.5, what="the timeout to pass")
            peer.assert_quiet()  # still open
            app.release(short_keep_alive, key)
            assert peer.read_response().body == b"held"
            peer.send(get("/hello"))  # and kept alive once the answer is out
            assert peer.read_response().body == b"hello"
    finally:
        app.release(short_keep_alive, key)


def test_over_the_concurrency_limit_is_503(app: App) -> None:
    # uvicorn counts open connections against limit_concurrency, the one asking included: with
    # 1 every request would be 503. With 2, one held request leaves no room for a second client.
    key = new_key()
    with ThreadedServer(app, http=H1, limit_concurrency=2) as server:
        try:
            with Peer(server.port) as held:
                held.send(get(f"/hold?key={key}"))
                wait_until(lambda: key in app.reached, what="the first request to be admitted")
                with Peer(server.port) as second:
                    second.send(get("/hello"))
                    response = second.read_response()
                    assert response.status == 503
                    assert response.body == b"Service Unavailable"
                    assert second.read_to_eof() == b""
                app.release(server, key)
                assert held.read_response().body == b"held"
        finally:
            app.release(server, key)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(get("/hello", version=b"1.0"), id="http-1.0"),
        pytest.param(get("/hello", b"Connection: close"), id="connection-close"),
    ],
)
def test_request_without_keep_alive_gets_connection_close(
    server: ThreadedServer, request_bytes: bytes
) -> None:
    with Peer(server.port) as peer:
        peer.send(request_bytes)
        response = peer.read_response()
        assert response.head.get("connection") == "close"
        assert response.body == b"hello"
        assert peer.read_to_eof() == b""


# -- the scope ------------------------------------------------------------------------------------


def test_scope_describes_the_request(app: App, server: ThreadedServer) -> None:
    key = new_key()
    with Peer(server.port) as peer:
        peer.send(
            b"GET /path/a%20b/c%2Fd?x=1&y=%20z HTTP/1.1\r\nHost: example.test\r\n"
            b"X-Mixed-Case: Keep This\r\nX-Key: " + key.encode() + b"\r\n\r\n"
        )
        assert peer.read_response().status == 200
        client_port = peer.sock.getsockname()[1]
    scope = app.scopes[key]
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["method"] == "GET"
    assert scope["path"] == "/path/a b/c/d"
    assert scope["raw_path"] == b"/path/a%20b/c%2Fd"
    assert scope["query_string"] == b"x=1&y=%20z"
    assert scope["root_path"] == ""
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "http"
    assert tuple(scope["client"]) == ("127.0.0.1", client_port)
    assert tuple(scope["server"]) == ("127.0.0.1", server.port)
    assert scope["headers"] == [
        (b"host", b"example.test"),
        (b"x-mixed-case", b"Keep This"),
        (b"x-key", key.encode()),
    ]


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_scope_http_version(app: App, server: ThreadedServer, version: str) -> None:
    key = new_key()
    with Peer(server.port) as peer:
        peer.send(get("/path/v", b"X-Key: " + key.encode(), version=version.encode()))
        assert peer.read_response().status == 200
    assert app.scopes[key]["http_version"] == version


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH", "OPTIONS"])
def test_scope_method(app: App, server: ThreadedServer, method: str) -> None:
    key = new_key()
    with Peer(server.port) as peer:
        request = get("/path/m", b"X-Key: " + key.encode(), b"Content-Length: 0")
        peer.send(request.replace(b"GET", method.encode(), 1))
        assert peer.read_response().status == 200
    assert app.scopes[key]["method"] == method


def test_absolute_form_target_gives_path_and_query(app: App, server: ThreadedServer) -> None:
    key = new_key()
    with Peer(server.port) as peer:
        peer.send(
            b"GET http://example.com/path/a?b=1 HTTP/1.1\r\nHost: example.com\r\n"
            b"X-Key: " + key.encode() + b"\r\n\r\n"
        )
        assert peer.read_response().body == b"/path/a"
    scope = app.scopes[key]
    assert scope["path"] == "/path/a"
    assert scope["raw_path"] == b"/path/a"
    assert scope["query_string"] == b"b=1"


# --- HeadFlusher: heads whose body did not follow, written at the end of the loop turn ---------


class _StartedCycle:
    def __init__(self, name: str, flushed: list[str]) -> None:
        self.name = name
        self.flushed = flushed

    def flush_head(self) -> None:
        self.flushed.append(self.name)


@pytest.mark.anyio
async def test_heads_are_flushed_at_the_end_of_the_turn_in_order_and_again_later() -> None:
    loop = asyncio.get_running_loop()
    flusher = HeadFlusher.of(loop)
    assert HeadFlusher.of(loop) is flusher  # one per loop, shared by its connections
    flushed: list[str] = []
    flusher.add(_StartedCycle("a", flushed))  # type: ignore[arg-type]
    flusher.add(_StartedCycle("b", flushed))  # type: ignore[arg-type]
    assert flushed == []  # a body sent in this turn would still go out with its head
    await asyncio.sleep(0)
    assert flushed == ["a", "b"]
    flusher.add(_StartedCycle("c", flushed))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert flushed == ["a", "b", "c"]


# -- deadlines, trailers, refused requests (issue 13) -------------------------------------------

LIMITS = ServerLimits(request_head_timeout=0.3, request_body_timeout=0.3)


class Timed:
    """``App`` behind a lifespan that hands the server short deadlines, as the gateway does."""

    def __init__(self, inner: App) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            scope["state"][LIMITS_STATE_KEY] = LIMITS
        await self.inner(scope, receive, send)


@pytest.fixture(scope="module")
def timed(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(Timed(app), http=H1, timeout_keep_alive=30) as running:
        yield running


def test_an_unfinished_head_is_408_json_and_closed(timed: ThreadedServer) -> None:
    with Peer(timed.port) as peer:
        peer.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        response = peer.read_response()
        assert response.status == 408
        assert json.loads(response.body)["error"]["code"] == "request_timeout"
        assert peer.read_to_eof() == b""


def test_an_idle_connection_is_not_cut_by_the_head_deadline(timed: ThreadedServer) -> None:
    # No byte of a head yet: only keep-alive (30 s here) applies, however often the timer runs.
    with Peer(timed.port) as peer:
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"
        time.sleep(LIMITS.request_head_timeout * 3)  # idle, as a client may be, not a sync
        peer.assert_quiet()
        peer.send(get("/hello"))
        assert peer.read_response().body == b"hello"


def test_a_stalled_body_makes_receive_raise_and_the_answer_408(timed: ThreadedServer) -> None:
    with Peer(timed.port) as peer:
        peer.send(post_head("/echo", b"Content-Length: 10") + b"abc")
        response = peer.read_response()
        assert response.status == 408
        assert json.loads(response.body)["error"]["code"] == "request_timeout"
        assert peer.read_to_eof() == b""


def test_trailers_are_not_request_headers(app: App, timed: ThreadedServer) -> None:
    key = new_key()
    with Peer(timed.port) as peer:
        head = post_head("/echo", b"Transfer-Encoding: chunked", b"X-Key: " + key.encode())
        peer.send(head + b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nHost: evil\r\n\r\n")
        assert peer.read_response().body == b"abc"
    names = [name for name, _ in app.scopes[key]["headers"]]
    assert b"x-trailer" not in names and names.count(b"host") == 1


def test_endless_trailers_are_cut_at_the_head_limit(small_heads: ThreadedServer) -> None:
    with Peer(small_heads.port) as peer:
        peer.send(post_head("/echo", b"Transfer-Encoding: chunked") + b"0\r\nX-Flood: ")
        for _ in range(40):  # far over the 4 KiB limit, never a line end
            try:
                peer.send(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
        response = peer.read_response()
        assert response.status == 431


def test_a_request_refused_after_its_head_never_reaches_the_app(
    app: App, server: ThreadedServer
) -> None:
    key = new_key()
    with Peer(server.port) as peer:
        head = post_head("/echo", b"Transfer-Encoding: identity", b"X-Key: " + key.encode())
        peer.send(head)
        assert peer.read_response().status == 400
    assert key not in app.scopes


class _LongHeadShortBody(Timed):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            scope["state"][LIMITS_STATE_KEY] = ServerLimits(30.0, 0.3)
        await self.inner(scope, receive, send)


def test_a_body_deadline_shorter_than_the_head_deadline_is_kept(app: App) -> None:
    # The timer must wake for the body's own deadline, not only every request_head_timeout.
    with (
        ThreadedServer(_LongHeadShortBody(app), http=H1, timeout_keep_alive=30) as running,
        Peer(running.port) as peer,
    ):
        peer.send(post_head("/echo", b"Content-Length: 10") + b"abc")
        assert peer.read_response().status == 408


def test_the_body_deadline_waits_while_the_client_waits_for_100_continue(
    app: App, timed: ThreadedServer
) -> None:
    # The client may not send the body before "100 Continue", which goes out only when the
    # application reads: until then the silence is the server's, not the client's.
    key = new_key()
    try:
        with Peer(timed.port) as peer:
            head = post_head(
                f"/gated-echo?key={key}", b"Content-Length: 5", b"Expect: 100-continue"
            )
            peer.send(head)
            wait_until(lambda: key in app.reached, what="the application to start")
            time.sleep(LIMITS.request_body_timeout * 3)  # the application is slow: not a sync
            peer.assert_quiet()
            app.release(timed, key)
            assert peer.read_until(b"\r\n\r\n", "100 Continue") == b"HTTP/1.1 100 Continue\r\n\r\n"
            peer.send(b"hello")
            response = peer.read_response()
            assert (response.status, response.body) == (200, b"hello")
    finally:
        app.release(timed, key)
