"""H1Pool against raw asyncio servers on loopback that misbehave on purpose.

Every test runs on both the stdlib loop and uvloop (production runs uvloop). Synchronisation
is by events and end-of-stream, never by sleeping; the few timeouts are the behaviour under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from dispatcher.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from dispatcher.proxy._h1pool import H1Pool
from dispatcher.proxy.transport import (
    Headers,
    Origin,
    RequestBody,
    UpstreamBodyError,
    UpstreamResponse,
    UpstreamTransport,
)

Run = Callable[[Coroutine[Any, Any, None]], None]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HOST = [(b"Host", b"upstream")]
# Timers far beyond the 5 s test deadline, for tests where a timer firing would hide the bug.
PATIENT = 60.0


def _conforms(pool: H1Pool) -> UpstreamTransport:
    return pool  # mypy checks H1Pool against the protocol here


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, 5))

    return run


class Upstream:
    """A raw HTTP/1.1 server on 127.0.0.1 that runs ``handler`` for each connection."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.heads: list[bytes] = []
        self.client_closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.origin = Origin("https" if self.tls else "http", "127.0.0.1", port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # our own teardown; finishing normally keeps 3.11's streams from logging it
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.heads.append(head)
        return head

    async def until_client_closes(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.client_closed.set()


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def read_body(reader: asyncio.StreamReader, head: bytes, sink: Any = None) -> bytes:
    """Read a request body framed by Content-Length or chunked; feed ``sink`` if given."""
    parts: list[bytes] = []
    add = sink.update if sink is not None else parts.append
    length = header(head, b"content-length")
    if length is not None:
        left = int(length)
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            add(data)
            left -= len(data)
    elif header(head, b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            add(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readuntil(b"\r\n") == b"\r\n"
    return b"".join(parts)


def ok(body: bytes = b"", *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def serve_forever(
    answer: Callable[[Upstream, bytes, bytes], bytes],
) -> Callable[[Upstream], Handler]:
    """A keep-alive server answering every request with ``answer(upstream, head, body)``."""

    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (head := await up.read_head(reader)) is not None:
                writer.write(answer(up, head, await read_body(reader, head)))
                await writer.drain()

        return handler

    return bind


def upstream(bind: Callable[[Upstream], Handler], **kwargs: Any) -> Upstream:
    up = Upstream(lambda r, w: handler(r, w), **kwargs)
    handler = bind(up)
    return up


async def fetch(
    pool: H1Pool,
    up: Upstream,
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: Headers = HOST,
    body: RequestBody | None = None,
    *,
    response_timeout: float = 2.0,
    idle_timeout: float = 2.0,
) -> tuple[UpstreamResponse, bytes]:
    response = await send(
        pool,
        up,
        method,
        target,
        headers,
        body,
        response_timeout=response_timeout,
        idle_timeout=idle_timeout,
    )
    try:
        data = b"".join([chunk async for chunk in response.body()])
    finally:
        await response.aclose()
    return response, data


async def send(
    pool: H1Pool,
    up: Upstream,
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: Headers = HOST,
    body: RequestBody | None = None,
    *,
    response_timeout: float = 2.0,
    idle_timeout: float = 2.0,
) -> UpstreamResponse:
    return await pool.request(
        up.origin,
        method,
        target,
        headers,
        body,
        connect_timeout=2.0,
        response_timeout=response_timeout,
        idle_timeout=idle_timeout,
    )


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- keep-alive and response framing ---------------------------------------------------------


def test_request_head_is_sent_as_given_and_the_connection_is_reused(run: Run) -> None:
    answer = serve_forever(lambda up, head, body: ok(b"n=%d" % len(up.heads), b"X-Reply: Yes"))

    async def main() -> None:
        pool = H1Pool()
        async with upstream(answer) as up:
            headers = [(b"Host", b"upstream"), (b"X-Case", b"Kept")]
            for n in (1, 2, 3):
                response, data = await fetch(pool, up, b"GET", b"/a?b=%2F", headers)
                assert (response.status, data) == (200, b"n=%d" % n)
                assert response.headers == [(b"Content-Length", b"3"), (b"X-Reply", b"Yes")]
            assert up.heads[0] == b"GET /a?b=%2F HTTP/1.1\r\nHost: upstream\r\nX-Case: Kept\r\n\r\n"
            assert up.connections == 1
            await pool.aclose()

    run(main())


FRAMINGS = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", 1),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        1,
    ),
    "chunked-with-trailer": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"b\r\nhello world\r\n0\r\nX-Trailer: late\r\n\r\n",
        1,
    ),
    "until-close": (b"HTTP/1.1 200 OK\r\n\r\nhello world", 2),
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_response_body_is_read_by_its_framing(run: Run, framing: str) -> None:
    raw, connections = FRAMINGS[framing]

    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await up.read_head(reader) is not None:
                writer.write(raw)
                if framing == "until-close":
                    return
                await writer.drain()

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            for _ in range(2):
                response, data = await fetch(pool, up)
                assert data == b"hello world"
                assert b"X-Trailer" not in dict(response.headers)  # the head is final
            assert up.connections == connections
            await pool.aclose()

    run(main())


def test_chunked_response_is_yielded_as_it_arrives(run: Run) -> None:
    async def main() -> None:
        go = asyncio.Event()

        def bind(up: Upstream) -> Handler:
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await up.read_head(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                await go.wait()
                writer.write(b"4\r\nlast\r\n0\r\n\r\n")
                await up.until_client_closes(reader)

            return handler

        pool = H1Pool()
        async with upstream(bind) as up:
            response = await send(pool, up)
            chunks = response.body()
            assert await anext(chunks) == b"first"
            assert not response.complete  # more is on its way
            go.set()
            assert await anext(chunks) == b"last"
            if not response.complete:  # the terminating chunk may come in a later read
                with pytest.raises(StopAsyncIteration):
                    await anext(chunks)
            assert response.complete
            await response.aclose()
            await pool.aclose()

    run(main())


def test_head_response_has_no_body_and_keeps_the_connection(run: Run) -> None:
    def answer(up: Upstream, head: bytes, body: bytes) -> bytes:
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        return ok(b"after")

    async def main() -> None:
        pool = H1Pool()
        async with upstream(serve_forever(answer)) as up:
            response, data = await fetch(pool, up, b"HEAD")
            assert (response.status, data) == (200, b"")
            assert response.headers == [(b"Content-Length", b"1000")]
            assert (await fetch(pool, up))[1] == b"after"
            assert up.connections == 1
            await pool.aclose()

    run(main())


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", id="304"),
    ],
)
def test_bodyless_status_has_no_body_and_keeps_the_connection(run: Run, raw: bytes) -> None:
    answer = serve_forever(lambda up, head, body: raw if len(up.heads) == 1 else ok(b"after"))

    async def main() -> None:
        pool = H1Pool()
        async with upstream(answer) as up:
            response, data = await fetch(pool, up)
            assert (response.status, data) == (int(raw[9:12]), b"")
            assert (await fetch(pool, up))[1] == b"after"
            assert up.connections == 1
            await pool.aclose()

    run(main())


def test_interim_responses_are_skipped(run: Run) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await up.read_head(reader) is not None:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                await writer.drain()
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            for _ in range(2):
                response, data = await fetch(pool, up)
                assert (response.status, response.headers, data) == (
                    201,
                    [(b"Content-Length", b"2")],
                    b"ok",
                )
            assert up.connections == 1
            await pool.aclose()

    run(main())


def test_connection_close_response_is_not_reused(run: Run) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            writer.write(ok(b"bye", b"Connection: close"))
            await up.until_client_closes(reader)  # the client must close it, not us

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            assert (await fetch(pool, up, response_timeout=PATIENT, idle_timeout=PATIENT))[
                1
            ] == b"bye"
            await up.client_closed.wait()
            assert (await fetch(pool, up))[1] == b"bye"
            assert up.connections == 2
            await pool.aclose()

    run(main())


def test_large_response_pauses_reading_until_consumed(run: Run) -> None:
    total, block = 64 << 20, bytes(range(256)) * 4096
    written = asyncio.Event()

    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            for sent in range(0, total, len(block)):
                if sent >= 48 << 20:
                    written.set()  # only reachable if the client buffers without limit
                writer.write(block)
                await writer.drain()
            await up.until_client_closes(reader)

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            response = await send(pool, up)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(written.wait(), 0.5)
            received = 0
            async for chunk in response.body():
                assert len(chunk) <= 1 << 20  # what sat in the buffer, never the whole body
                assert chunk[:1] == block[received % len(block) : received % len(block) + 1]
                received += len(chunk)
            assert received == total
            await pool.aclose()

    run(main())


def test_extra_bytes_after_a_response_prevent_reuse(run: Run) -> None:
    extra = b"HTTP/1.1 204 No Content\r\n\r\n"  # a second answer to one request
    answer = serve_forever(
        lambda up, head, body: ok(b"ok") + (extra if len(up.heads) == 1 else b"")
    )

    async def main() -> None:
        pool = H1Pool()
        async with upstream(answer) as up:
            assert (await fetch(pool, up))[1] == b"ok"
            assert (await fetch(pool, up))[1] == b"ok"
            assert up.connections == 2
            await pool.aclose()

    run(main())


# -- request bodies --------------------------------------------------------------------------


def digest_answer(up: Upstream, head: bytes, body: bytes) -> bytes:
    return ok(hashlib.sha256(body).hexdigest().encode() + b" %d" % len(body))


def test_chunked_upload_streams_intact(run: Run) -> None:
    parts = [bytes([n]) * (65536 + n * 7) for n in range(100)]
    parts[3] = parts[50] = b""
    expected = b"".join(parts)

    async def main() -> None:
        pool = H1Pool()
        async with upstream(serve_forever(digest_answer)) as up:
            body = RequestBody(stream(*parts))
            headers = [*HOST, (b"Transfer-Encoding", b"chunked")]
            _, data = await fetch(pool, up, b"POST", b"/up", headers, body)
            assert data == hashlib.sha256(expected).hexdigest().encode() + b" %d" % len(expected)
            assert body.sent == len(expected)
            assert up.heads[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n")
            await pool.aclose()

    run(main())


def test_content_length_upload_is_sent_raw_and_keeps_the_connection(run: Run) -> None:
    parts = [b"a" * 100_000, b"", b"b" * 1_000_003, b"c"]
    expected = b"".join(parts)

    async def main() -> None:
        pool = H1Pool()
        async with upstream(serve_forever(digest_answer)) as up:
            body = RequestBody(stream(*parts), len(expected))
            headers = [*HOST, (b"Content-Length", b"%d" % len(expected))]
            _, data = await fetch(pool, up, b"PUT", b"/up", headers, body)
            assert data == hashlib.sha256(expected).hexdigest().encode() + b" %d" % len(expected)
            assert body.sent == len(expected)
            assert (await fetch(pool, up))[1].endswith(b" 0")
            assert up.connections == 1
            await pool.aclose()

    run(main())


def test_upload_waits_for_the_upstream_to_read(run: Run) -> None:
    chunk = b"x" * 65536

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(2048):  # 128 MiB if nothing held it back
            yield chunk

    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            await asyncio.Event().wait()  # never reads the body

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            body = RequestBody(endless())
            with pytest.raises(UpstreamTimeout):
                await send(pool, up, b"POST", body=body, idle_timeout=0.3)
            assert 0 < body.sent < 32 << 20  # bounded by socket buffers, not by the body
            await pool.aclose()

    run(main())


@pytest.mark.parametrize("parts", [(b"abc",), (b"abc", b"defg")], ids=["short", "long"])
def test_body_not_matching_its_length_is_refused(run: Run, parts: tuple[bytes, ...]) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            await up.until_client_closes(reader)

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            with pytest.raises(InvalidRequest):
                await send(
                    pool,
                    up,
                    b"POST",
                    body=RequestBody(stream(*parts), 5),
                    response_timeout=PATIENT,
                    idle_timeout=PATIENT,
                )
            await up.client_closed.wait()
            await pool.aclose()

    run(main())


def test_body_iterator_error_reaches_the_caller_and_closes_the_connection(run: Run) -> None:
    class ClientWentAway(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientWentAway

    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            await up.until_client_closes(reader)

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            with pytest.raises(ClientWentAway):
                await send(
                    pool,
                    up,
                    b"POST",
                    body=RequestBody(failing()),
                    response_timeout=PATIENT,
                    idle_timeout=PATIENT,
                )
            await up.client_closed.wait()
            await pool.aclose()

    run(main())


def test_early_response_during_upload_ends_it_and_is_not_reused(run: Run) -> None:
    async def main() -> None:
        stopped = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            try:
                yield b"first"
                await asyncio.Event().wait()  # the rest never comes
                yield b"never"
            finally:
                stopped.set()

        def bind(up: Upstream) -> Handler:
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                head = await up.read_head(reader)
                if head is not None and head.startswith(b"POST"):
                    writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 7\r\n\r\ntoo big")
                    await up.until_client_closes(reader)
                else:
                    writer.write(ok(b"fresh"))
                    await up.until_client_closes(reader)

            return handler

        pool = H1Pool()
        async with upstream(bind) as up:
            body = RequestBody(slow_body())
            response = await send(
                pool, up, b"POST", body=body, response_timeout=PATIENT, idle_timeout=PATIENT
            )
            assert response.status == 413
            assert [chunk async for chunk in response.body()] == [b"too big"]
            assert not response.complete  # the upload is still being stopped: aclose() waits
            await up.client_closed.wait()
            await stopped.wait()  # the upload stopped, before the response was closed
            assert body.sent == 5
            await response.aclose()
            assert (await fetch(pool, up))[1] == b"fresh"
            assert up.connections == 2
            await pool.aclose()

    run(main())


# -- failures --------------------------------------------------------------------------------


def test_refused_connection_is_upstream_unavailable(run: Run) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        pool = H1Pool()
        with pytest.raises(UpstreamUnavailable) as caught:
            await pool.request(
                Origin("http", "127.0.0.1", port),
                b"GET",
                b"/",
                HOST,
                None,
                connect_timeout=2.0,
                response_timeout=2.0,
                idle_timeout=2.0,
            )
        assert caught.value.message == "Could not connect to the worker's upstream"
        assert isinstance(caught.value.__cause__, OSError)
        await pool.aclose()

    run(main())


def test_no_answer_within_response_timeout_is_upstream_timeout(run: Run) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            await up.until_client_closes(reader)

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await send(pool, up, response_timeout=0.2)
            assert 0.2 <= time.monotonic() - started < 1.0
            await up.client_closed.wait()
            await pool.aclose()

    run(main())


@pytest.mark.parametrize("how", ["eof", "reset", "malformed"])
def test_failure_before_the_head_is_upstream_unavailable(run: Run, how: str) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            if how == "reset":
                reset(writer)
            elif how == "malformed":
                writer.write(b"HTTP/1.1 2x0 Nope\r\n\r\n")
                await up.until_client_closes(reader)

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            with pytest.raises(UpstreamUnavailable):
                await send(pool, up)
            assert up.connections == 1  # a fresh connection is not retried
            await pool.aclose()

    run(main())


@pytest.mark.parametrize("how", ["eof", "reset", "stall", "bad-chunk"])
def test_failure_mid_body_is_upstream_body_error(run: Run, how: str) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            if how == "bad-chunk":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"a\r\n0123456789\r\nzz\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            if how == "reset":
                reset(writer)
            elif how in ("stall", "bad-chunk"):
                await up.until_client_closes(reader)

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            response = await send(pool, up, idle_timeout=0.2)
            assert response.status == 200
            received = b""
            with pytest.raises(UpstreamBodyError):
                async for chunk in response.body():
                    received += chunk
            assert received in (b"0123456789", b"")
            await response.aclose()
            await pool.aclose()

    run(main())


def test_reused_connection_found_dead_is_retried_once_for_bodiless_idempotent(run: Run) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = up.connections == 1
            while (head := await up.read_head(reader)) is not None:
                if first and len(up.heads) > 1:
                    return  # closes on the next request, as an idle-timing-out server does
                await read_body(reader, head)
                writer.write(ok(b"fine"))

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            assert (await fetch(pool, up))[1] == b"fine"
            assert (await fetch(pool, up))[1] == b"fine"
            assert up.connections == 2
            await pool.aclose()
        pool = H1Pool()
        async with upstream(bind) as up:
            assert (await fetch(pool, up))[1] == b"fine"
            body = RequestBody(stream(b"data"), 4)
            with pytest.raises(UpstreamUnavailable):
                await send(pool, up, b"PUT", body=body)
            assert up.connections == 1  # a body cannot be replayed
            await pool.aclose()
        pool = H1Pool()
        async with upstream(bind) as up:
            assert (await fetch(pool, up))[1] == b"fine"
            with pytest.raises(UpstreamUnavailable):
                await send(pool, up, b"POST")
            assert up.connections == 1  # nor may a proxy retry a non-idempotent request
            await pool.aclose()

    run(main())


def test_idle_connection_closed_by_upstream_is_dropped_on_checkout(run: Run) -> None:
    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await up.read_head(reader)
            assert head is not None
            await read_body(reader, head)
            writer.write(ok(b"once"))  # keep-alive promised, then closed while idle

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            assert (await fetch(pool, up))[1] == b"once"
            while any(pool._idle.values()):  # until the loop delivers the EOF to the idle one
                await asyncio.sleep(0)
            body = RequestBody(stream(b"data"), 4)  # not replayable: must get a live connection
            assert (await fetch(pool, up, b"POST", body=body))[1] == b"once"
            assert up.connections == 2
            await pool.aclose()

    run(main())


# -- abandoning an exchange ------------------------------------------------------------------


def partial_body(up: Upstream) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        await up.until_client_closes(reader)

    return handler


def test_aclose_mid_body_closes_the_connection(run: Run) -> None:
    async def main() -> None:
        pool = H1Pool()
        async with upstream(partial_body) as up:
            response = await send(pool, up, response_timeout=PATIENT, idle_timeout=PATIENT)
            assert await anext(response.body()) == b"0123456789"
            await response.aclose()
            await up.client_closed.wait()
            await pool.aclose()

    run(main())


@pytest.mark.parametrize("stage", ["head", "body"])
def test_cancelling_the_caller_closes_the_connection(run: Run, stage: str) -> None:
    async def main() -> None:
        reached = asyncio.Event()

        def bind(up: Upstream) -> Handler:
            if stage == "body":
                return partial_body(up)

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await up.read_head(reader)
                reached.set()
                await up.until_client_closes(reader)

            return handler

        async def client(pool: H1Pool, up: Upstream) -> None:
            response = await send(pool, up, response_timeout=PATIENT, idle_timeout=PATIENT)
            async for _ in response.body():
                reached.set()

        pool = H1Pool()
        async with upstream(bind) as up:
            task = asyncio.create_task(client(pool, up))
            await reached.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await up.client_closed.wait()
            await pool.aclose()

    run(main())


# -- the pool --------------------------------------------------------------------------------


def test_pool_keeps_at_most_max_idle_and_aclose_closes_them(run: Run) -> None:
    async def main() -> None:
        both = asyncio.Event()
        closed: list[int] = []

        def bind(up: Upstream) -> Handler:
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                index = up.connections
                while await up.read_head(reader) is not None:
                    if len(up.heads) == 2:
                        both.set()
                    await both.wait()  # hold the first two answers so two connections open
                    writer.write(ok(b"hi"))
                closed.append(index)
                up.client_closed.set()

            return handler

        pool = H1Pool(max_idle_per_origin=1)
        async with upstream(bind) as up:
            await asyncio.gather(fetch(pool, up), fetch(pool, up))
            await up.client_closed.wait()  # the surplus idle connection
            assert len(closed) == 1
            await fetch(pool, up)
            await fetch(pool, up)
            assert up.connections == 2
            up.client_closed.clear()
            await pool.aclose()
            await up.client_closed.wait()
            assert len(closed) == 2

    run(main())


def test_connection_idle_longer_than_idle_timeout_is_closed_not_reused(run: Run) -> None:
    async def main() -> None:
        closed: list[int] = []

        def bind(up: Upstream) -> Handler:
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                index = up.connections
                while await up.read_head(reader) is not None:
                    writer.write(ok(b"hi"))
                closed.append(index)

            return handler

        pool = H1Pool(idle_timeout=0.0)  # any time spent idle is too long
        async with upstream(bind) as up:
            await fetch(pool, up)
            await fetch(pool, up)
            assert up.connections == 2
            assert closed == [1]
            await pool.aclose()

    run(main())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    base = tmp_path_factory.mktemp("tls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_origin_speaks_tls_and_verifies_the_certificate(
    run: Run, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with upstream(serve_forever(digest_answer), tls=server_context) as up:
            pool = H1Pool(ssl_context=client_context)
            body = RequestBody(stream(b"sec", b"ret"))
            headers = [*HOST, (b"Transfer-Encoding", b"chunked")]
            _, data = await fetch(pool, up, b"POST", b"/", headers, body)
            assert data == hashlib.sha256(b"secret").hexdigest().encode() + b" 6"
            assert (await fetch(pool, up))[1].endswith(b" 0")
            assert up.connections == 1
            await pool.aclose()

            untrusting = H1Pool()  # the default context does not know this certificate
            with pytest.raises(UpstreamUnavailable) as caught:
                await send(untrusting, up)
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            await untrusting.aclose()

    run(main())


def test_response_deadlines_are_cleared_whatever_the_ending(run: Run) -> None:
    """Every exchange leaves the coarse timeout table: answered, failed or timed out."""

    def bind(up: Upstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (head := await up.read_head(reader)) is not None:
                if b"/hang" in head:
                    await up.until_client_closes(reader)
                    return
                if b"/reset" in head:
                    reset(writer)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        return handler

    async def main() -> None:
        pool = H1Pool()
        async with upstream(bind) as up:
            for _ in range(3):
                _, data = await fetch(pool, up)
                assert data == b"ok"
            with pytest.raises(UpstreamUnavailable):
                await send(pool, up, target=b"/reset")
            with pytest.raises(UpstreamTimeout):
                await send(pool, up, target=b"/hang", response_timeout=0.1)
            timers = pool._timers
            assert timers is not None
            assert len(timers) == 0  # nothing left behind to hold exchanges alive
            await pool.aclose()

    run(main())


def test_request_without_headers_has_a_well_formed_head(run: Run) -> None:
    answer = serve_forever(lambda up, head, body: ok(b"fine"))

    async def main() -> None:
        pool = H1Pool()
        async with upstream(answer) as up:
            response, data = await fetch(pool, up, b"GET", b"/bare", [])
            assert (response.status, data) == (200, b"fine")
            assert up.heads[0] == b"GET /bare HTTP/1.1\r\n\r\n"
            await pool.aclose()

    run(main())
