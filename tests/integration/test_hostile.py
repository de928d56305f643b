"""What the dispatcher refuses from hostile clients and hostile tenants, and why.

Read this module as the list. Every test speaks raw bytes to a real dispatcher (its own HTTP
server, as ``dispatcher serve`` runs it) in front of ``RecordingUpstream``, which records every
byte a tenant receives; "nothing reached the upstream" is checked there, not assumed. The
client is not a trusted proxy here (``trusted_proxies`` names another address), so everything
it claims about earlier hops is hostile.

Classes (issue 13), each with variants beyond the first example found:

1. deadlines on reading a request: a head must arrive whole within ``request_head_timeout``
   (slow drip or partial-then-silent: 408 and close); a body that stalls for
   ``request_body_timeout`` ends the exchange, frees the worker's concurrency slot and cancels
   the upstream request;
2. an upstream's response head over ``max_response_header_bytes`` (one huge header, many small
   ones, a huge reason phrase, a flood of interim heads) is 502, read no further than the limit;
3. chunked trailers never become request headers, whichever read they arrive in;
4. Host: a second Host, a non-ASCII byte, userinfo in an absolute-form target -> 400; an
   absolute-form target's authority is the host (RFC 9112 3.2.2);
5. a request the dispatcher refuses reaches no upstream at all (any Transfer-Encoding but
   exactly ``chunked``, a 19-digit Content-Length, both framings), its connection is closed,
   and the access log says what the client got;
6. a path any upstream could read as holding a dot segment (``..``, ``%2e%2e``, ``..%2f``,
   ``..;``, ``..\\``, double-encoded...) is 400 on every route kind, so nobody walks out of a
   worker's base path or a path route's prefix;
7. ``Set-Cookie`` stays with its tenant: a ``Domain`` covering a base domain is dropped, and on
   path and query routes ``Path`` goes under ``/dispatch/<worker>``;
8. the admin API reads only ``application/json`` bodies (415), refuses deep nesting (400, not a
   500), and never registers an upstream in a denied network, in whatever spelling (400);
   upstreams in denied networks are never connected to, however their name resolves;
9. headers claiming earlier hops (``X-Real-IP``, ``True-Client-IP``, ``X-Original-URL``...) are
   dropped; a 101 or a status outside 100-599 from an upstream is 502.

The last test is a property test over request heads: for any input, the upstream receives
either exactly one well-framed request whose headers passed the header policy, or nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from dispatcher.app import create_app
from dispatcher.proxy.headers import HOP_BY_HOP, PROXY_INFO
from dispatcher.settings import Settings
from tests.recording import Received, RecordingUpstream
from tests.servers import serve_gateway, wait_until
from workers_registry.migrate import upgrade
from workers_registry.models import WorkerCreate
from workers_registry.store import RegistryStore

TIMEOUT = 0.5  # request_head_timeout and request_body_timeout of the dispatcher under test


@dataclass
class Rig:
    port: int
    upstream: RecordingUpstream


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('hostile') / 'h.db'}"
    with RecordingUpstream() as upstream:

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                await store.add_worker(WorkerCreate(name="alpha", upstreams=[upstream.url]))
                await store.add_worker(WorkerCreate(name="beta", upstreams=[upstream.url]))
                await store.add_worker(
                    WorkerCreate(name="tight", upstreams=[upstream.url], max_concurrency=1)
                )
                await store.add_worker(
                    WorkerCreate(name="based", upstreams=[f"{upstream.url}/app/v1"])
                )

        asyncio.run(seed())
        settings = Settings(
            database_url=database,
            base_domains=("localhost", "example.test"),
            trusted_proxies=("192.0.2.1",),  # not the test client: it is untrusted
            admin_token="admin-token",
            request_head_timeout=TIMEOUT,
            request_body_timeout=TIMEOUT,
            max_response_header_bytes=8192,
        )
        with serve_gateway(create_app(settings)) as server:
            yield Rig(server.port, upstream)


# -- a raw client -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    @property
    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


class Client:
    """One raw connection to the dispatcher; every read waits at most ``timeout``."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> Answer:
        """The next response (fails if the connection closes before it is complete)."""
        answer = Answer()
        parser = httptools.HttpResponseParser(answer)
        while not answer.complete:
            data = self.sock.recv(65536)
            assert data, f"closed before a complete response: {answer!r}"
            parser.feed_data(data)
        answer.status = parser.get_status_code()
        return answer

    def closed(self) -> bool:
        """Whether the dispatcher closes the connection (nothing more is sent first)."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        assert not data, f"unexpected bytes: {data[:200]!r}"
        return True


def ask(rig: Rig, data: bytes) -> Answer:
    with Client(rig.port) as client:
        client.send(data)
        return client.answer()


def post(host: bytes, *headers: bytes, path: bytes = b"/") -> bytes:
    lines = b"".join(header + b"\r\n" for header in headers)
    return b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + lines + b"\r\n"


def get(host: bytes, *headers: bytes, path: bytes = b"/") -> bytes:
    lines = b"".join(header + b"\r\n" for header in headers)
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + lines + b"\r\n"


def is_access(line: MutableMapping[str, Any], request_id: str) -> bool:
    return bool(line["event"] == "request" and line["request_id"] == request_id)


def unseen(rig: Rig, before: int) -> None:
    """Nothing reached the upstream since ``before`` (its ``seen()``)."""
    assert rig.upstream.seen() == before, rig.upstream.requests[before:]


# -- 1. deadlines on reading a request ----------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: alpha.localhost\r\n", id="headers-without-end"),
        pytest.param(b"GET /", id="request-line"),
        pytest.param(b"G", id="one-byte"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: alpha.localhost\r\nX-Long: aaaa", id="mid-value"),
    ],
)
def test_a_partial_head_then_silence_is_408_and_closed(rig: Rig, partial: bytes) -> None:
    before = rig.upstream.seen()
    with Client(rig.port) as client:
        client.send(partial)
        answer = client.answer()
        assert answer.status == 408 and answer.code == "request_timeout"
        assert answer.headers[b"connection"] == b"close"
        assert client.closed()
    unseen(rig, before)


def test_a_head_dripped_a_byte_at_a_time_is_cut_at_its_deadline(rig: Rig) -> None:
    # Each byte arrives well within the deadline: only a deadline for the whole head ends it.
    head = get(b"alpha.localhost", b"X-Pad: " + b"a" * 200)
    before = rig.upstream.seen()
    with Client(rig.port) as client:
        sent = 0
        client.sock.settimeout(0)
        while sent < len(head):
            try:
                client.send(head[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            try:
                if client.sock.recv(1, socket.MSG_PEEK):
                    break  # the answer is there
            except BlockingIOError:
                pass
            time.sleep(TIMEOUT / 20)  # the client's pace, not a synchronisation
        client.sock.settimeout(5)
        assert sent < len(head), "the whole head went through"
        answer = client.answer()
        assert answer.status == 408 and answer.code == "request_timeout"
    unseen(rig, before)


@pytest.mark.parametrize(
    "framing, first",
    [
        pytest.param(b"Content-Length: 1000", b"x", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked", b"3e8\r\nx", id="chunked-mid-chunk"),
        pytest.param(b"Transfer-Encoding: chunked", b"5\r\nhello\r\n", id="chunked-between"),
        pytest.param(b"Content-Length: 1000", b"", id="nothing-of-it"),
    ],
)
def test_a_stalled_body_is_408_and_frees_the_workers_slot(
    rig: Rig, framing: bytes, first: bytes
) -> None:
    # "tight" has max_concurrency 1: a stalled upload held its only slot for ever.
    with capture_logs() as logs, Client(rig.port) as client:
        client.send(post(b"tight.localhost", framing, b"X-Request-ID: stall-1") + first)
        answer = client.answer()
        assert answer.status == 408 and answer.code == "request_timeout"
        assert answer.headers[b"x-request-id"] == b"stall-1"
        assert client.closed()
        wait_until(lambda: any(is_access(line, "stall-1") for line in logs), what="access line")
    assert [line["status"] for line in logs if is_access(line, "stall-1")] == [408]
    # The upstream request was cancelled: what it got never became a complete request.
    assert not [r for r in rig.upstream.requests if r.value(b"x-request-id") == b"stall-1"]
    assert ask(rig, get(b"tight.localhost")).status == 200  # the slot is free again


def test_a_stalled_admin_body_is_408_too(rig: Rig) -> None:
    # The control plane reads bodies through the same server: its receive times out as well.
    head = post(
        b"127.0.0.1",
        b"Authorization: Bearer admin-token",
        b"Content-Type: application/json",
        b"Content-Length: 100",
        path=b"/admin/workers",
    )
    with Client(rig.port) as client:
        client.send(head + b'{"name": ')
        answer = client.answer()
        assert answer.status == 408 and answer.code == "request_timeout"
        assert client.closed()


def test_a_slow_body_that_keeps_coming_is_not_cut(rig: Rig) -> None:
    # The body deadline is for silence, not for the whole body.
    pieces = 6
    with Client(rig.port) as client:
        client.send(post(b"alpha.localhost", b"Content-Length: %d" % pieces))
        for _ in range(pieces):
            time.sleep(TIMEOUT / 3)  # the client's pace, not a synchronisation
            client.send(b"x")
        assert client.answer().status == 200
    assert rig.upstream.requests[-1].body == b"x" * pieces


# -- 2. upstream response heads over max_response_header_bytes ----------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 4_000_000, id="one-huge-value"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 4000, id="many-small-headers"),
        pytest.param(b"HTTP/1.1 200 " + b"O" * 100_000, id="huge-reason"),
        pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 1000, id="interim-flood"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", id="just-over"),
    ],
)
def test_an_oversized_upstream_head_is_502(rig: Rig, head: bytes) -> None:
    name = f"head-{len(head)}"
    rig.upstream.scripts[name] = head
    answer = ask(rig, get(b"alpha.localhost", path=f"/script/{name}".encode()))
    assert answer.status == 502 and answer.code == "upstream_unavailable"


def test_an_upstream_head_within_the_limit_passes(rig: Rig) -> None:
    rig.upstream.scripts["head-ok"] = (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 7000 + b"\r\nContent-Length: 2\r\n\r\nok"
    )
    answer = ask(rig, get(b"alpha.localhost", path=b"/script/head-ok"))
    assert answer.status == 200 and answer.headers[b"x-big"] == b"a" * 7000


# -- 3. chunked trailers ------------------------------------------------------------------------

TRAILERS = (
    b"X-Request-ID: from-trailer\r\nAuthorization: Bearer x\r\n"
    b"X-Forwarded-Host: evil.test\r\nX-Dispatch-Worker: beta\r\nHost: evil.test\r\n\r\n"
)


@pytest.mark.parametrize("split", [None, 0, 5, 12], ids=["one-read", "own-read", "mid-0", "mid"])
def test_trailers_never_become_request_headers(rig: Rig, split: int | None) -> None:
    head = post(b"alpha.localhost", b"Transfer-Encoding: chunked", b"X-Request-ID: head-id")
    body = b"3\r\nabc\r\n0\r\n" + TRAILERS
    with Client(rig.port) as client:
        if split is None:
            client.send(head + body)
        else:
            client.send(head + body[: 10 + split])
            time.sleep(0.05)  # separate reads (a read boundary, not a synchronisation)
            client.send(body[10 + split :])
        assert client.answer().status == 200
    received = rig.upstream.requests[-1]
    assert received.body == b"abc"
    assert received.value(b"x-request-id") == b"head-id"
    assert received.value(b"authorization") is None
    assert received.value(b"x-forwarded-host") == b"alpha.localhost"
    assert received.value(b"x-dispatch-worker") == b"alpha"
    assert received.value(b"host") == f"127.0.0.1:{rig.upstream.port}".encode()


def test_trailers_do_not_leak_into_the_next_request_on_the_connection(rig: Rig) -> None:
    first = post(b"alpha.localhost", b"Transfer-Encoding: chunked") + b"0\r\nX-Leak: 1\r\n\r\n"
    with Client(rig.port) as client:
        client.send(first)
        assert client.answer().status == 200
        client.send(get(b"alpha.localhost"))
        assert client.answer().status == 200
    assert rig.upstream.requests[-1].value(b"x-leak") is None


# -- 4. Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(get(b"alpha.localhost", b"Host: evil.test"), id="second-host"),
        pytest.param(get(b"alpha.localhost", b"host: alpha.localhost"), id="same-host-twice"),
        pytest.param(get(b"127.0.0.1", b"Host: alpha.localhost"), id="control-then-tenant"),
        pytest.param(get(b"\xaalpha.localhost"), id="non-ascii-folded-by-idna"),
        pytest.param(get(b"alph\xc3\xa1.localhost"), id="utf-8"),
        pytest.param(get(b"alpha.localhost\x85"), id="latin-1-next-line"),
    ],
)
def test_a_second_or_non_ascii_host_is_invalid_host(rig: Rig, request_bytes: bytes) -> None:
    before = rig.upstream.seen()
    answer = ask(rig, request_bytes)
    assert answer.status == 400 and answer.code == "invalid_host"
    unseen(rig, before)


def test_an_absolute_form_target_names_the_host(rig: Rig) -> None:
    # RFC 9112 section 3.2.2: the target's authority is the host; Host is replaced by it.
    data = b"GET http://beta.localhost/x?y=1 HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n"
    assert ask(rig, data).status == 200
    received = rig.upstream.requests[-1]
    assert received.value(b"x-dispatch-worker") == b"beta"
    assert received.value(b"x-forwarded-host") == b"beta.localhost"
    assert received.target == b"/x?y=1"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"http://user@alpha.localhost/", id="userinfo"),
        pytest.param(b"http://alpha.localhost@beta.localhost/", id="userinfo-looks-like-host"),
    ],
)
def test_userinfo_in_an_absolute_form_target_is_400(rig: Rig, target: bytes) -> None:
    before = rig.upstream.seen()
    answer = ask(rig, b"GET " + target + b" HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n")
    assert answer.status == 400
    unseen(rig, before)


# -- 5. refused means nothing reaches an upstream -----------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Transfer-Encoding: chunked;q=1", id="parameter"),
        pytest.param(b"Transfer-Encoding: identity", id="identity"),
        pytest.param(b"Transfer-Encoding: gzip", id="gzip-alone"),
        pytest.param(b"Transfer-Encoding: gzip, chunked", id="coding-list"),
        pytest.param(b"Transfer-Encoding: chunked, chunked", id="chunked-twice"),
        pytest.param(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", id="two-te"),
        pytest.param(b"Transfer-Encoding: xchunked", id="suffix"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 3", id="te-and-cl"),
        pytest.param(b"Content-Length: 1\r\nContent-Length: 2", id="conflicting-cl"),
        pytest.param(b"Content-Length: 9999999999999999999", id="19-digit-cl"),
        pytest.param(b"Content-Length: -1", id="negative-cl"),
        pytest.param(b"Content-Length: 0x10", id="hex-cl"),
    ],
)
def test_a_refused_request_reaches_no_upstream_and_closes(rig: Rig, framing: bytes) -> None:
    before = rig.upstream.seen()
    data = post(b"alpha.localhost", framing, b"X-Request-ID: refused-1", path=b"/delete")
    with capture_logs() as logs:
        with Client(rig.port) as client:
            client.send(data + b"3\r\nabc\r\n0\r\n\r\n")
            answer = client.answer()
            assert answer.status == 400
            assert client.closed()  # the rest cannot be told apart from a next request
        # The access log tells the truth: the status and request id the client got, when
        # the request reached the application at all (the server refuses some framings).
        if answer.headers[b"x-request-id"] == b"refused-1":
            wait_until(lambda: any(is_access(line, "refused-1") for line in logs), what="log")
    unseen(rig, before)
    assert [line["status"] for line in logs if line["event"] == "request"] in ([], [400])


# -- 6. dot segments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        b"/../../secret",
        b"/%2e%2e/%2e%2e/secret",
        b"/..%2f..%2fsecret",
        b"/..;/..;/secret",
        b"/..\\..\\secret",
        b"/%2e%2e%5c%2e%2e%5csecret",
        b"/%2E%2e/secret",
        b"/%252e%252e/secret",
        b"/a/./b",
    ],
)
@pytest.mark.parametrize(
    "host, prefix",
    [
        (b"based.localhost", b""),  # subdomain joined to the upstream's base path /app/v1
        (b"127.0.0.1", b"/dispatch/based"),  # path route
        (b"127.0.0.1", b"/api/dispatch/alpha"),
    ],
    ids=["subdomain-with-base-path", "path-route", "api-path-route"],
)
def test_dot_segments_are_refused_on_every_route(
    rig: Rig, host: bytes, prefix: bytes, path: bytes
) -> None:
    before = rig.upstream.seen()
    answer = ask(rig, get(host, path=prefix + path))
    assert answer.status == 400 and answer.code == "invalid_request"
    unseen(rig, before)


def test_a_subdomain_path_is_joined_under_the_base_path(rig: Rig) -> None:
    assert ask(rig, get(b"based.localhost", path=b"/.well-known/x")).status == 200
    assert rig.upstream.requests[-1].target == b"/app/v1/.well-known/x"


# -- 7. cookies ---------------------------------------------------------------------------------

COOKIES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    b"Set-Cookie: wide=1; Domain=.localhost; Path=/\r\n"
    b"Set-Cookie: apex=1; Domain=example.test\r\n"
    b"Set-Cookie: mine=1; Path=/cart; HttpOnly\r\n\r\n"
)


def set_cookies(answer_bytes: bytes) -> list[bytes]:
    head = answer_bytes.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"set-cookie:")
    ]


def raw_answer(rig: Rig, data: bytes) -> bytes:
    with Client(rig.port) as client:
        client.send(data)
        received = b""
        while b"\r\n\r\n" not in received:
            received += client.sock.recv(65536)
    return received


@pytest.mark.parametrize(
    "host, path, expected",
    [
        pytest.param(
            b"alpha.localhost",
            b"/script/cookies",
            [b"wide=1; Path=/", b"apex=1", b"mine=1; Path=/cart; HttpOnly"],
            id="subdomain",
        ),
        pytest.param(
            b"127.0.0.1",
            b"/dispatch/alpha/script/cookies",
            [
                b"wide=1; Path=/dispatch/alpha",
                b"apex=1; Path=/dispatch/alpha",
                b"mine=1; Path=/dispatch/alpha/cart; HttpOnly",
            ],
            id="path-route",
        ),
    ],
)
def test_cookies_stay_with_their_tenant(
    rig: Rig, host: bytes, path: bytes, expected: list[bytes]
) -> None:
    rig.upstream.scripts["cookies"] = COOKIES
    assert set_cookies(raw_answer(rig, get(host, path=path))) == expected


def test_query_route_cookies_go_under_the_workers_own_path(rig: Rig) -> None:
    # The prefix /dispatch is every worker's: the cookie goes under /dispatch/<worker>, where
    # no other worker's path or query route can receive it.
    rig.upstream.scripts["cookies"] = COOKIES
    data = get(b"127.0.0.1", path=b"/dispatch?worker=alpha&script=cookies")
    assert set_cookies(raw_answer(rig, data)) == [
        b"wide=1; Path=/dispatch/alpha",
        b"apex=1; Path=/dispatch/alpha",
        b"mine=1; Path=/dispatch/alpha/cart; HttpOnly",
    ]


# -- 9. claims about earlier hops; what an upstream may answer ----------------------------------


def test_claims_about_earlier_hops_are_dropped(rig: Rig) -> None:
    claims = [name.decode() + ": 10.9.8.7" for name in sorted(PROXY_INFO)]
    assert ask(rig, get(b"alpha.localhost", *(c.encode() for c in claims))).status == 200
    received = rig.upstream.requests[-1]
    for name in PROXY_INFO:
        assert received.value(name) is None, name
    assert received.value(b"x-forwarded-for") == b"127.0.0.1"


@pytest.mark.parametrize(
    "status_line",
    [
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n", id="101"),
        pytest.param(b"HTTP/1.1 600 Nope\r\n", id="600"),
        pytest.param(b"HTTP/1.1 999 Nope\r\n", id="999"),
        pytest.param(b"HTTP/1.1 099 Nope\r\n", id="099"),
        pytest.param(b"HTTP/1.1 000 Nope\r\n", id="000"),
    ],
)
def test_an_unrelayable_upstream_status_is_502(rig: Rig, status_line: bytes) -> None:
    name = f"status-{status_line[9:12].decode()}"
    rig.upstream.scripts[name] = status_line + b"Content-Length: 0\r\n\r\n"
    answer = ask(rig, get(b"alpha.localhost", path=f"/script/{name}".encode()))
    assert answer.status == 502 and answer.code == "upstream_unavailable"


# -- the invariant, over any request head -------------------------------------------------------

_NAMES = [
    b"Host", b"host", b"HOST", b"Transfer-Encoding", b"Content-Length", b"Connection",
    b"Expect", b"Upgrade", b"Via", b"X-Request-ID", b"X-Forwarded-For", b"X-Forwarded-Host",
    b"X-Dispatch-Worker", b"Forwarded", b"TE", b"Trailer", b"Keep-Alive",
    b"Proxy-Authorization", b"Cookie", b"Transfer-Encoding ", b" Host", b"Content-Length\x00",
    *sorted(PROXY_INFO),
]  # fmt: skip
_VALUES = [
    b"alpha.localhost", b"beta.localhost", b"evil.test", b"alpha.localhost:80", b"\xaalpha",
    b"chunked", b"Chunked", b"chunked;q=1", b"gzip, chunked", b"identity", b"chunked, chunked",
    b"0", b"3", b"03", b"9999999999999999999", b"-1", b"3, 3", b"close", b"keep-alive",
    b"host", b"content-length, x-request-id", b"100-continue", b"websocket", b"1.1 dispatcher",
    b"x\r\nInjected: 1", b"x\rInjected: 1", b"a\x00b", b"", b" ", b"\t3",
]  # fmt: skip
_BODIES = [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\nX-Request-ID: t\r\nHost: e\r\n\r\n"]

heads = st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"G\x00T", b"CONNECT"]),
    st.sampled_from(
        [b"/", b"/x?y=1", b"http://beta.localhost/z", b"*", b"/a b", b"//x", b"http://u@h/"]
    ),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0"]),
    st.lists(
        st.tuples(
            st.sampled_from(_NAMES) | st.from_regex(rb"[A-Za-z-]{1,12}", fullmatch=True),
            st.sampled_from(_VALUES) | st.binary(max_size=12),
        ),
        max_size=8,
    ),
    st.sampled_from([b"\r\n", b"\n"]),
    st.sampled_from(_BODIES),
)


class _FinalAnswer(Answer):
    def __init__(self, head_only: bool) -> None:
        super().__init__()
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        if self.head_only and self.parser.get_status_code() >= 200:
            self.complete = True  # no body follows the answer to a HEAD


def _read_final_answer(sock: socket.socket, head_only: bool) -> None:
    """Read until a final response is complete or the connection ends."""
    answer = _FinalAnswer(head_only)
    parser = answer.parser
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return
        if not data:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            raise AssertionError(f"malformed bytes from the dispatcher: {data[:300]!r}") from None
        if answer.complete and parser.get_status_code() >= 200:
            return
        answer.complete = False


def _passed_the_policy(received: Received, upstream: RecordingUpstream) -> None:
    names = [name for name, _ in received.headers]
    assert received.values(b"host") == [f"127.0.0.1:{upstream.port}".encode()]
    assert received.values(b"x-forwarded-for") == [b"127.0.0.1"]
    assert received.value(b"x-dispatch-worker") in (b"alpha", b"beta")
    for ours in (b"x-request-id", b"via", b"x-forwarded-host", b"x-forwarded-proto"):
        assert names.count(ours) == 1, ours
    assert not set(names) & (HOP_BY_HOP - {b"transfer-encoding"})
    assert not set(names) & PROXY_INFO
    assert received.values(b"transfer-encoding") in ([], [b"chunked"])
    assert not (b"content-length" in names and b"transfer-encoding" in names)
    assert len(received.values(b"content-length")) <= 1


@hsettings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(head=heads)
def test_any_request_head_reaches_the_upstream_well_framed_once_or_not_at_all(
    rig: Rig, head: tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes, bytes]
) -> None:
    method, target, version, headers, eol, body = head
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    data = eol.join(lines) + eol + eol + body
    upstream = rig.upstream
    requests_before, fragments_before = len(upstream.requests), len(upstream.fragments)
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
        sock.sendall(data)
        try:
            _read_final_answer(sock, head_only=method == b"HEAD")
        except TimeoutError:
            raise AssertionError(f"no answer to {data!r}") from None
    # Fragments are what an upstream got of a request it never received whole: none, ever.
    assert len(upstream.fragments) == fragments_before, upstream.fragments[fragments_before:]
    new = upstream.requests[requests_before:]
    assert len(new) <= 1, new
    for received in new:
        _passed_the_policy(received, upstream)


# -- 8. the admin API, and upstream networks ---------------------------------------------------


def admin_post(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        post(
            b"127.0.0.1",
            b"Authorization: Bearer admin-token",
            b"Content-Type: " + content_type,
            b"Content-Length: %d" % len(body),
            path=b"/admin/workers",
        )
        + body
    )


@pytest.mark.parametrize(
    "data, status, code",
    [
        pytest.param(admin_post(b"[" * 50_000), 400, "invalid_request", id="50k-nesting"),
        pytest.param(
            admin_post(b'{"name": "x", "upstreams": ["http://a"]}', b"text/plain"),
            415,
            "unsupported_media_type",
            id="text-plain",
        ),
        pytest.param(
            admin_post(
                b'{"name": "x", "upstreams": ["http://a"]}', b"application/x-www-form-urlencoded"
            ),
            415,
            "unsupported_media_type",
            id="form",
        ),
        pytest.param(
            admin_post(b'{"name": "x", "upstreams": ["http://169.254.169.254/"]}'),
            400,
            "invalid_request",
            id="metadata-upstream",
        ),
        pytest.param(
            admin_post(b'{"name": "x", "upstreams": ["http://[::ffff:169.254.169.254]"]}'),
            400,
            "invalid_request",
            id="mapped-metadata-upstream",
        ),
        pytest.param(
            admin_post(b'{"name": "x", "upstreams": ["http://2130706433"]}'),
            400,
            "invalid_request",
            id="decimal-ipv4-upstream",
        ),
    ],
)
def test_hostile_admin_input_is_refused(rig: Rig, data: bytes, status: int, code: str) -> None:
    answer = ask(rig, data)
    assert (answer.status, answer.code) == (status, code)


# -- 8. upstream networks, at connect time ------------------------------------------------------


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A dispatcher whose deny list holds loopback: its workers' upstreams (all on loopback,
    registered straight into the store, as plain SQL could) must never be connected to."""
    database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fenced') / 'f.db'}"
    with RecordingUpstream() as upstream:

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                for name, url in [
                    ("byname", f"http://localhost:{upstream.port}"),
                    ("byaddr", f"http://127.0.0.1:{upstream.port}"),
                    ("mapped", f"http://[::ffff:127.0.0.1]:{upstream.port}"),
                ]:
                    await store.add_worker(WorkerCreate(name=name, upstreams=[url]))

        asyncio.run(seed())
        settings = Settings(
            database_url=database,
            upstream_denied_networks=("127.0.0.0/8", "::1/128"),
        )
        with serve_gateway(create_app(settings)) as server:
            yield Rig(server.port, upstream)


@pytest.mark.parametrize("worker", [b"byname", b"byaddr", b"mapped"])
def test_a_denied_upstream_address_is_never_connected_to(fenced: Rig, worker: bytes) -> None:
    answer = ask(fenced, get(worker + b".localhost"))
    assert answer.status == 502 and answer.code == "upstream_unavailable"
    assert fenced.upstream.connections == 0


def test_a_websocket_to_a_denied_upstream_is_refused(fenced: Rig) -> None:
    handshake = get(
        b"byname.localhost",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    )
    answer = ask(fenced, handshake)
    assert answer.status == 502
    assert fenced.upstream.connections == 0
