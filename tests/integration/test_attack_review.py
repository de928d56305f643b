"""An attacker's review of the hostile-input defences (``test_hostile`` is the list; this module
holds what a review with raw sockets found past it, each as a class of inputs).

1. dot segments spelled the ways some upstream still reads them: ``%uXXXX`` escapes (IIS,
   .NET), overlong UTF-8 (old Java and Tomcat decoders) and compatibility characters that
   NFKC folds to ``.`` or ``/`` (fullwidth forms);
2. an ``Upgrade`` the dispatcher does not speak (``h2c``, anything but a WebSocket): the parser
   hands every byte after such a head to "the new protocol", so a body the request declared was
   never read: it reached the upstream as an empty body (chunked) or as a head promising bytes
   that never came (Content-Length). Such a request with a body is refused before any upstream
   sees it; one without is answered and the connection closed (nothing after it can be read);
3. an absolute-form target with an IPv6 authority (``http://[::1]/``) names that host, brackets
   and all, like a ``Host: [::1]`` header;
4. a ``Set-Cookie`` ``Domain`` naming a base domain in a spelling some browser reads as it
   (trailing dot, quotes, non-ASCII letters IDNA maps onto ASCII ones) is dropped too;
5. the unspecified address (``0.0.0.0``, ``0``, ``::``) is never an upstream: a connect to it
   reaches the local host, past a deny list that names loopback;
6. at most ``MAX_PIPELINED`` requests are parsed ahead of the one being answered; the rest of
   the connection is not read, and it closes after the last answer;
7. a per-client rate limit reads ``address:port`` entries of the trusted ``X-Forwarded-For``
   chain as the address (a new source port was a new budget).

It also pins what the review tried that held (framing variants the first module does not name).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httptools
import pytest

from dispatcher.app import create_app
from dispatcher.h1server.protocol import MAX_PIPELINED
from dispatcher.settings import Settings
from tests.integration.test_hostile import Client, Rig, ask, get, post, unseen
from tests.recording import RecordingUpstream
from tests.servers import serve_gateway
from workers_registry.migrate import upgrade
from workers_registry.models import WorkerCreate
from workers_registry.store import RegistryStore


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('attack') / 'a.db'}"
    with RecordingUpstream() as upstream:

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                await store.add_worker(WorkerCreate(name="alpha", upstreams=[upstream.url]))
                await store.add_worker(
                    WorkerCreate(name="based", upstreams=[f"{upstream.url}/app/v1"])
                )

        asyncio.run(seed())
        settings = Settings(
            database_url=database,
            base_domains=("localhost",),
            trusted_proxies=("192.0.2.1",),  # not the test client
            request_head_timeout=2.0,
            request_body_timeout=2.0,
        )
        with serve_gateway(create_app(settings)) as server:
            yield Rig(server.port, upstream)


# -- 1. dot segments in other spellings ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"/%u002e%u002e/secret", id="percent-u"),
        pytest.param(b"/%U002E%u002e/secret", id="percent-u-upper"),
        pytest.param(b"/%25u002e%25u002e/secret", id="percent-u-encoded"),
        pytest.param(b"/a%u002f..%u002fsecret", id="percent-u-slash"),
        pytest.param(b"/%c0%ae%c0%ae/secret", id="overlong-2"),
        pytest.param(b"/%e0%80%ae%e0%80%ae/secret", id="overlong-3"),
        pytest.param(b"/%f0%80%80%ae./secret", id="overlong-4"),
        pytest.param(b"/a%c0%af..%c0%afsecret", id="overlong-slash"),
        pytest.param(b"/%ef%bc%8e%ef%bc%8e/secret", id="fullwidth-dots"),
        pytest.param(b"/a%ef%bc%8f..%ef%bc%8fsecret", id="fullwidth-slash"),
        pytest.param(b"/x%uff3c..%uff3csecret", id="percent-u-fullwidth-backslash"),
    ],
)
@pytest.mark.parametrize(
    "host, prefix",
    [(b"based.localhost", b""), (b"127.0.0.1", b"/dispatch/based")],
    ids=["subdomain-with-base-path", "path-route"],
)
def test_dot_segments_in_other_spellings_are_refused(
    target: Rig, host: bytes, prefix: bytes, path: bytes
) -> None:
    before = target.upstream.seen()
    answer = ask(target, get(host, path=prefix + path))
    assert answer.status == 400 and answer.code == "invalid_request"
    unseen(target, before)


@pytest.mark.parametrize(
    "path",
    [b"/caf%c3%a9", b"/%e2%80%a6", b"/a%u0041b", b"/%c0", b"/%uzzzz", b"/50%25"],
    ids=["utf-8", "ellipsis", "percent-u-letter", "lone-lead-byte", "bad-percent-u", "percent"],
)
def test_other_escapes_still_pass(target: Rig, path: bytes) -> None:
    assert ask(target, get(b"based.localhost", path=path)).status == 200
    assert target.upstream.requests[-1].target == b"/app/v1" + path


# -- 2. upgrades the dispatcher does not speak --------------------------------------------------

_H2C = (
    b"Upgrade: h2c",
    b"Connection: Upgrade, HTTP2-Settings",
    b"HTTP2-Settings: AAMAAABkAAQAAP__",
)


@pytest.mark.parametrize(
    "framing, body",
    [
        pytest.param(b"Content-Length: 5", b"hello", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n", id="chunked"),
    ],
)
@pytest.mark.parametrize("upgrade", [_H2C[:2], (b"Upgrade: foo", b"Connection: upgrade")])
def test_an_unsupported_upgrade_with_a_body_reaches_no_upstream(
    target: Rig, framing: bytes, body: bytes, upgrade: tuple[bytes, ...]
) -> None:
    before = target.upstream.seen()
    with Client(target.port) as client:
        client.send(post(b"alpha.localhost", *upgrade, framing) + body)
        answer = client.answer()
        assert answer.status == 400 and answer.code == "invalid_request"
        assert client.closed()
    unseen(target, before)


def test_an_unsupported_upgrade_is_answered_and_closes(target: Rig) -> None:
    # Bytes after an upgrade head are not HTTP to the parser: a request pipelined behind it is
    # never read, so the answer says the connection ends (and it does).
    smuggled = get(b"alpha.localhost", path=b"/smuggled")
    with Client(target.port) as client:
        client.send(get(b"alpha.localhost", *_H2C, path=b"/first") + smuggled)
        answer = client.answer()
        assert answer.status == 200
        assert answer.headers[b"connection"] == b"close"
        assert client.closed()
    received = target.upstream.requests[-1]
    assert received.target == b"/first" and received.value(b"upgrade") is None
    assert all(request.target != b"/smuggled" for request in target.upstream.requests)


# -- 3. an absolute-form target with an IPv6 authority ------------------------------------------


@pytest.mark.parametrize("authority", [b"[::1]", b"[::1]:8080", b"[::ffff:127.0.0.1]"])
def test_an_ipv6_authority_in_the_target_names_a_control_host(
    target: Rig, authority: bytes
) -> None:
    data = b"GET http://" + authority + b"/dispatch/alpha/x HTTP/1.1\r\nHost: h.localhost\r\n\r\n"
    assert ask(target, data).status == 200
    received = target.upstream.requests[-1]
    assert received.target == b"/x"
    assert received.value(b"x-forwarded-host") == authority


# -- 4. cookie Domain attributes in other spellings ---------------------------------------------


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param(b"localhost.", id="trailing-dot"),
        pytest.param(b".LOCALHOST.", id="dots-both-ends"),
        pytest.param(b'"localhost"', id="quoted"),
        pytest.param(b'".localhost."', id="quoted-dots"),
        pytest.param("\uff4cocalhost".encode(), id="fullwidth-letter"),
        pytest.param("x\u3002localhost".encode(), id="ideographic-full-stop"),
    ],
)
def test_a_cookie_domain_covering_a_base_domain_in_any_spelling_is_dropped(
    target: Rig, domain: bytes
) -> None:
    target.upstream.scripts["domain"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
        b"Set-Cookie: s=1; Domain=" + domain + b"; Path=/\r\n\r\n"
    )
    with Client(target.port) as client:
        client.send(get(b"alpha.localhost", path=b"/script/domain"))
        assert client.answer().headers[b"set-cookie"] == b"s=1; Path=/"


def test_a_cookie_for_the_tenants_own_host_keeps_its_domain(target: Rig) -> None:
    target.upstream.scripts["own"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: s=1; Domain=alpha.localhost.\r\n\r\n"
    )
    with Client(target.port) as client:
        client.send(get(b"alpha.localhost", path=b"/script/own"))
        assert client.answer().headers[b"set-cookie"] == b"s=1; Domain=alpha.localhost."


# -- 5. the unspecified address is the local host ------------------------------------------------


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Loopback on the deny list, as an operator protecting the host's own services writes it;
    the workers name loopback the other ways a connect reaches it."""
    database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('unspecified') / 'u.db'}"
    with RecordingUpstream() as upstream:

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                for name, host in [("zeros", "0.0.0.0"), ("zero", "0"), ("mapped", "[::ffff:0:0]")]:
                    url = f"http://{host}:{upstream.port}"
                    await store.add_worker(WorkerCreate(name=name, upstreams=[url]))

        asyncio.run(seed())
        settings = Settings(
            database_url=database,
            admin_token="admin-token",
            upstream_denied_networks=("127.0.0.0/8", "::1/128"),
        )
        with serve_gateway(create_app(settings)) as server:
            yield Rig(server.port, upstream)


@pytest.mark.parametrize("worker", [b"zeros", b"zero", b"mapped"])
def test_the_unspecified_address_is_never_connected_to(fenced: Rig, worker: bytes) -> None:
    # connect() to 0.0.0.0 reaches the local host: a deny list naming loopback covers it.
    answer = ask(fenced, get(worker + b".localhost"))
    assert answer.status == 502 and answer.code == "upstream_unavailable"
    assert fenced.upstream.connections == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "[::ffff:0.0.0.0]", "0"])
def test_the_unspecified_address_is_refused_at_registration(fenced: Rig, host: str) -> None:
    body = json.dumps({"name": "sneaky", "upstreams": [f"http://{host}:8080"]}).encode()
    data = post(
        b"127.0.0.1",
        b"Authorization: Bearer admin-token",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        path=b"/admin/workers",
    )
    answer = ask(fenced, data + body)
    assert (answer.status, answer.code) == (400, "invalid_request")


# -- 6. pipelining is bounded ---------------------------------------------------------------------


class _Answers:
    """Every response on a connection, however they share reads (one parser for all)."""

    def __init__(self) -> None:
        self.done: list[tuple[int, dict[bytes, bytes]]] = []
        self.headers: dict[bytes, bytes] = {}
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self.headers))
        self.headers = {}

    def read(self, client: Client, count: int) -> None:
        while len(self.done) < count:
            try:
                data = client.sock.recv(65536)
            except ConnectionResetError:  # closed with bytes of ours unread: ended as well
                return
            if not data:
                return
            self.parser.feed_data(data)


def test_pipelined_requests_beyond_the_bound_are_not_read(target: Rig) -> None:
    # One read of tiny pipelined requests was parsed whole: thousands of queued requests
    # (about 1 KiB of memory each) held for a client that reads no answer.
    before = len(target.upstream.requests)
    answers = _Answers()
    with Client(target.port) as client:
        client.send(get(b"alpha.localhost") * (MAX_PIPELINED + 40))  # one write: one read
        answers.read(client, MAX_PIPELINED + 40)  # until the dispatcher closes
    assert [status for status, _ in answers.done] == [200] * (MAX_PIPELINED + 1)
    assert answers.done[-1][1][b"connection"] == b"close"
    assert len(target.upstream.requests) - before == MAX_PIPELINED + 1


def test_pipelined_requests_within_the_bound_are_all_answered(target: Rig) -> None:
    answers = _Answers()
    with Client(target.port) as client:
        client.send(get(b"alpha.localhost") * (MAX_PIPELINED + 1))
        answers.read(client, MAX_PIPELINED + 1)
        client.send(get(b"alpha.localhost"))  # the connection stays open
        answers.read(client, MAX_PIPELINED + 2)
    assert [status for status, _ in answers.done] == [200] * (MAX_PIPELINED + 2)
    assert all(b"connection" not in headers for _, headers in answers.done)


# -- 7. a client's port in the trusted chain ------------------------------------------------------


@pytest.fixture(scope="module")
def behind_a_balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The test client is a trusted proxy here: its X-Forwarded-For names the client."""
    database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('chain') / 'c.db'}"
    with RecordingUpstream() as upstream:

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                for name in ("perip4", "perip6"):
                    await store.add_worker(
                        WorkerCreate(name=name, upstreams=[upstream.url], client_rate_limit=0.01)
                    )

        asyncio.run(seed())
        settings = Settings(database_url=database, trusted_proxies=("127.0.0.1",))
        with serve_gateway(create_app(settings)) as server:
            yield Rig(server.port, upstream)


@pytest.mark.parametrize(
    "worker, first, second",
    [
        (b"perip4", b"198.51.100.7:40001", b"198.51.100.7:40002"),
        (b"perip6", b"[2001:db8::7]:40001", b"[2001:db8::7]:40002, 127.0.0.1:8080"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_a_port_in_the_chain_does_not_buy_a_new_client_budget(
    behind_a_balancer: Rig, worker: bytes, first: bytes, second: bytes
) -> None:
    # Some load balancers append "address:port": every new source port was a new client.
    host = worker + b".localhost"
    assert ask(behind_a_balancer, get(host, b"X-Forwarded-For: " + first)).status == 200
    answer = ask(behind_a_balancer, get(host, b"X-Forwarded-For: " + second))
    assert answer.status == 429 and answer.code == "rate_limited"


# -- what held up ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length : 3", id="space-before-colon"),
        pytest.param(b"Content-Length: 3\r\nContent-Length: 3", id="equal-duplicates"),
        pytest.param(b"Content-Length: 3, 3", id="equal-list"),
        pytest.param(b"Content-Length: +3", id="plus-sign"),
        pytest.param(b"Transfer-Encoding:\x0bchunked", id="vertical-tab"),
        pytest.param(b"Transfer-Encoding : chunked", id="te-space-before-colon"),
        pytest.param(b"X-A: 1\r\n Transfer-Encoding: chunked", id="obs-fold"),
        pytest.param(b"Transfer-Encoding: \r\nContent-Length: 3", id="empty-te"),
        pytest.param(b"Content-Length: ", id="empty-cl"),
        pytest.param(b"X-A: 1\x00\r\nContent-Length: 3", id="nul"),
        pytest.param(b"X-A: 1\rContent-Length: 3", id="bare-cr"),
    ],
)
def test_framing_tricks_are_refused_before_any_upstream(target: Rig, framing: bytes) -> None:
    before = target.upstream.seen()
    with Client(target.port) as client:
        client.send(post(b"alpha.localhost", framing) + b"abc")
        assert client.answer().status == 400
        assert client.closed()
    unseen(target, before)


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(b"10000000000000003\r\nabc\r\n0\r\n\r\n", id="size-overflow"),
        pytest.param(b"0x3\r\nabc\r\n0\r\n\r\n", id="hex-prefix"),
        pytest.param(b"3 \r\nabc\r\n0\r\n\r\n", id="size-space"),
        pytest.param(b"3;a\nabc\r\n0\r\n\r\n", id="extension-bare-lf"),
        pytest.param(b"3\r\nabcXX0\r\n\r\n", id="data-without-crlf"),
        pytest.param(b"3\nabc\n0\n\n", id="bare-lf"),
    ],
)
def test_chunk_tricks_are_refused_and_close(target: Rig, chunks: bytes) -> None:
    before = target.upstream.seen()
    with Client(target.port) as client:
        client.send(post(b"alpha.localhost", b"Transfer-Encoding: chunked") + chunks)
        assert client.answer().status == 400
        assert client.closed()
    # The head may have gone on before the bad chunk arrived; never a whole request.
    assert all(request.body != b"abc" for request in target.upstream.requests[before:])
    assert not target.upstream.requests[before:] or target.upstream.fragments


def test_chunk_extensions_and_leading_zeros_are_read_not_forwarded(target: Rig) -> None:
    body = b"00000000000000000003;name=" + b"v" * 1000 + b"\r\nabc\r\n0;x=y\r\n\r\n"
    with Client(target.port) as client:
        client.send(post(b"alpha.localhost", b"Transfer-Encoding: chunked") + body)
        assert client.answer().status == 200
    received = target.upstream.requests[-1]
    assert received.body == b"abc" and received.values(b"transfer-encoding") == [b"chunked"]


def test_connection_cannot_name_framing_or_our_headers(target: Rig) -> None:
    names = b"Connection: content-length, host, x-forwarded-for, x-dispatch-worker, via"
    with Client(target.port) as client:
        client.send(post(b"alpha.localhost", names, b"Content-Length: 3") + b"abc")
        assert client.answer().status == 200
    received = target.upstream.requests[-1]
    assert received.body == b"abc" and received.value(b"content-length") == b"3"
    assert received.value(b"x-forwarded-for") == b"127.0.0.1"
    assert received.value(b"x-dispatch-worker") == b"alpha"


@pytest.mark.parametrize(
    "url",
    [
        "HTTP://169.254.169.254",
        " http://169.254.169.254",
        "http://169.254.169.254.",
        "http://[::ffff:a9fe:a9fe]",
        "http://[0:0:0:0:0:ffff:a9fe:a9fe]",
        "http://[::a9fe:a9fe]",
        "http://[64:ff9b::a9fe:a9fe]",
        "http://[2002:a9fe:a9fe::]",
        "http://0251.0376.0251.0376",
        "http://169.254.43518",
        "http://0xa9fea9fe",
        "http://x@169.254.169.254",
        "http://169.254.169.254:80@x",
        "http://[::ffff:169.254.169.254%25eth0]",
    ],
)
def test_metadata_upstream_spellings_are_refused_at_registration(url: str) -> None:
    with pytest.raises(ValueError):
        WorkerCreate.model_validate(
            {"name": "x", "upstreams": [url]}, context=Settings().registration_context
        )
