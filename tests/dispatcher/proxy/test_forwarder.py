"""The HTTP forwarder (``dispatcher.proxy.http``) through the transport seam, with a fake
transport: what the upstream is sent, what the client gets back, and failover over a worker's
upstreams. The end-to-end tests (``tests/integration``) run the same paths over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispatcher.asgi import Exchange, Headers, Message, RequestIds
from dispatcher.errors import PayloadTooLarge, UpstreamConnectFailed
from dispatcher.proxy.headers import HeaderPolicy, TrustPolicy
from dispatcher.proxy.http import Forwarder
from dispatcher.proxy.transport import Origin, RequestBody
from dispatcher.proxy.upstreams import UpstreamSelector
from dispatcher.routing import Route, RouteKind
from dispatcher.settings import Settings
from workers_registry.entries import WorkerEntry

pytestmark = pytest.mark.anyio

FIRST, SECOND = "http://10.0.0.1:8080/base", "http://10.0.0.2:8081"


class FakeResponse:
    def __init__(self, status: int, headers: Headers, chunks: list[bytes]) -> None:
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self.complete = False
        self.closed = False

    async def body(self) -> AsyncIterator[bytes]:
        for position, chunk in enumerate(self._chunks):
            self.complete = position == len(self._chunks) - 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class FakeTransport:
    """Answers every request with ``response``; the ports in ``refusing`` refuse to connect
    (after reading ``read_before_refusing`` body chunks: bytes that left before the failure)."""

    def __init__(self, *refusing: int, read_before_refusing: int = 0) -> None:
        self.refusing = set(refusing)
        self.read_before_refusing = read_before_refusing
        self.requests: list[dict[str, Any]] = []
        self.response = FakeResponse(
            200,
            [(b"Content-Type", b"text/plain"), (b"Connection", b"close"), (b"X-Request-ID", b"up")],
            [b"hello ", b"world"],
        )

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: RequestBody | None,
        **timeouts: float,
    ) -> FakeResponse:
        received = b""
        if body is not None and (origin.port not in self.refusing or self.read_before_refusing):
            async for chunk in body.chunks:
                received += chunk
                body.sent += len(chunk)
                if origin.port in self.refusing:
                    break
        self.requests.append(
            {"port": origin.port, "method": method, "target": target, "headers": headers}
        )
        if origin.port in self.refusing:
            raise UpstreamConnectFailed()
        self.requests[-1]["body"] = received
        return self.response

    async def aclose(self) -> None:
        pass


def make_forwarder(transport: FakeTransport, **settings: Any) -> Forwarder:
    config = Settings(**settings)
    policy = HeaderPolicy(
        RequestIds(),
        trust=TrustPolicy(config.trusted_networks),
        via_name=config.via_name,
        max_hops=config.max_hops,
        max_header_bytes=config.max_header_bytes,
    )
    return Forwarder(config, transport, policy, UpstreamSelector())  # type: ignore[arg-type]


def route(*upstreams: str, kind: RouteKind = RouteKind.SUBDOMAIN) -> Route:
    worker = WorkerEntry("shop", upstreams)
    return Route(worker, kind, b"/cart/items", b"page=2")


def scope(headers: Headers, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "scheme": "https",
        "path": "/cart/items",
        "query_string": b"page=2",
        "headers": [(b"host", b"shop.example.com"), *headers],
        "client": ("203.0.113.7", 50000),
    }


class Client:
    def __init__(self, *body: bytes) -> None:
        self.body = list(body)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.body:
            chunk = self.body.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.body)}
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def test_the_upstream_gets_the_request_and_the_client_its_answer() -> None:
    transport = FakeTransport()
    client, exchange = Client(), Exchange()
    forwarder = make_forwarder(transport)
    await forwarder.forward(
        scope([(b"x-request-id", b"abc")]), client.receive, client.send, route(FIRST), exchange
    )
    (request,) = transport.requests
    assert (request["port"], request["method"], request["target"]) == (
        8080,
        b"GET",
        b"/base/cart/items?page=2",
    )
    headers = dict(request["headers"])
    assert headers[b"host"] == b"10.0.0.1:8080"
    assert headers[b"x-dispatch-worker"] == b"shop"
    assert headers[b"x-forwarded-proto"] == b"https"
    start, *bodies = client.sent
    assert start["status"] == 200
    assert (b"x-request-id", b"abc") in start["headers"]
    assert not any(name in (b"connection",) for name, _ in start["headers"])
    assert b"".join(message["body"] for message in bodies) == b"hello world"
    assert bodies[-1]["more_body"] is False
    assert (exchange.status, exchange.worker, exchange.upstream) == (200, "shop", FIRST)
    assert exchange.bytes_out == len(b"hello world")


async def test_a_refusing_upstream_is_skipped_and_the_next_one_gets_its_own_host() -> None:
    transport = FakeTransport(8080)
    client, exchange = Client(), Exchange()
    forwarder = make_forwarder(transport)
    await forwarder.forward(scope([]), client.receive, client.send, route(FIRST, SECOND), exchange)
    assert [request["port"] for request in transport.requests] == [8080, 8081]
    assert dict(transport.requests[1]["headers"])[b"host"] == b"10.0.0.2:8081"
    assert transport.requests[1]["target"] == b"/cart/items?page=2"
    assert (exchange.status, exchange.upstream) == (200, SECOND)


async def test_a_body_not_sent_yet_is_replayed_on_the_next_upstream() -> None:
    transport = FakeTransport(8080)
    client = Client(b"abc", b"def")
    await make_forwarder(transport).forward(
        scope([(b"content-length", b"6")], "POST"),
        client.receive,
        client.send,
        route(FIRST, SECOND),
        Exchange(),
    )
    assert [request["port"] for request in transport.requests] == [8080, 8081]
    assert transport.requests[1]["body"] == b"abcdef"


async def test_a_body_partly_sent_is_not_replayed() -> None:
    transport = FakeTransport(8080, read_before_refusing=1)
    client = Client(b"abc", b"def")
    with pytest.raises(UpstreamConnectFailed):
        await make_forwarder(transport).forward(
            scope([(b"content-length", b"6")], "POST"),
            client.receive,
            client.send,
            route(FIRST, SECOND),
            Exchange(),
        )
    assert [request["port"] for request in transport.requests] == [8080]
    assert client.sent == []


async def test_a_declared_body_over_the_limit_is_refused_before_anything_is_sent() -> None:
    transport = FakeTransport()
    client = Client(b"x" * 11)
    with pytest.raises(PayloadTooLarge):
        await make_forwarder(transport, max_body_bytes=10).forward(
            scope([(b"content-length", b"11")], "POST"),
            client.receive,
            client.send,
            route(FIRST),
            Exchange(),
        )
    assert transport.requests == []
