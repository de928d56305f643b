"""WebSockets through the dispatcher, end to end on loopback.

A real WebSocket tenant (pure ASGI under uvicorn) behind a real dispatcher (SQLite registry);
clients are the ``websockets`` asyncio client, connecting to the dispatcher's port with the
Host of the route under test in the URI (``host=``/``port=`` say where to connect).

The tenant's first message on every session is a JSON report of the handshake it received;
then it echoes text as text and binary as binary, and obeys ``close:<code>:<reason>`` (close
with that code) and ``drop`` (end the connection without a close frame).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dispatcher.app import create_app
from dispatcher.settings import Settings
from tests.servers import ThreadedServer, serve_gateway
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, DomainStatus, WorkerCreate
from workers_registry.store import RegistryStore

pytestmark = pytest.mark.anyio

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class WebSocketTenant:
    """A tenant speaking WebSocket; records how each session (``?key=K``) was closed."""

    def __init__(self) -> None:
        self.closed: dict[str, tuple[int, str]] = {}
        self.closed_events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def closed_event(self, key: str) -> threading.Event:
        with self._lock:
            return self.closed_events.setdefault(key, threading.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/hang":  # never answers the handshake
            await receive()
            return
        if scope["path"] == "/refuse":
            body = b"tenant says no"
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"text/plain"), (b"x-tenant", b"refused")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        offered: list[str] = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "b" if "b" in offered else None,
                "headers": [(b"set-cookie", b"ws=1; Path=/")],
            }
        )
        report = {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "subprotocols": offered,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }
        await send({"type": "websocket.send", "text": json.dumps(report)})
        key = dict(
            part.split("=", 1) for part in report["query"].split("&") if part.startswith("key=")
        ).get("key", "")
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.closed[key] = (message["code"], message.get("reason") or "")
                self.closed_event(key).set()
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                _, code, reason = text.split(":", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                return
            if text == "drop":
                return  # uvicorn closes the TCP connection without a close frame
            await send({"type": "websocket.send", "text": text, "bytes": message.get("bytes")})


@dataclass
class WsStack:
    port: int
    tenant: WebSocketTenant
    tenant_authority: str

    @asynccontextmanager
    async def session(
        self, host: str, path: str = "/", **options: Any
    ) -> AsyncIterator[ClientConnection]:
        async with connect(
            f"ws://{host}{path}",
            host="127.0.0.1",
            port=self.port,
            proxy=None,
            open_timeout=10,
            **options,
        ) as ws:
            yield ws

    async def refused(self, host: str, path: str = "/", **options: Any) -> InvalidStatus:
        with pytest.raises(InvalidStatus) as info:
            async with self.session(host, path, **options):
                pass
        return info.value


async def seed(database_url: str, tenant_url: str) -> None:
    await upgrade(database_url)
    store = RegistryStore.from_url(database_url)
    try:
        await store.add_worker(WorkerCreate(name="chat", upstreams=[tenant_url]))
        await store.add_worker(WorkerCreate(name="gone", upstreams=["http://127.0.0.1:9"]))
        await store.add_worker(
            WorkerCreate(name="slow", upstreams=[tenant_url], upstream_timeout=0.3)
        )
        await store.add_worker(
            WorkerCreate(name="multi", upstreams=["http://127.0.0.1:9", tenant_url])
        )
        await store.add_worker(
            WorkerCreate(name="tiny", upstreams=[tenant_url], max_body_bytes=1000)
        )
        await store.add_worker(
            WorkerCreate(name="keep", upstreams=[f"{tenant_url}/base/"], preserve_host=True)
        )
        await store.add_domain(
            CustomDomainCreate(domain="chat.example.org", worker="chat", status=DomainStatus.ACTIVE)
        )
    finally:
        await store.aclose()


def dispatcher_settings(database_url: str, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "database_url": database_url,
        "base_domains": ("localhost", "example.com"),
        "registry_poll_interval": 0.2,
        "upstream_timeout": 5,
        "connect_timeout": 2,
    }
    options.update(overrides)
    return Settings(**options)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("ws-registry") / "registry.db"
    yield f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="module")
def tenant_server(database_url: str) -> Iterator[tuple[WebSocketTenant, ThreadedServer]]:
    tenant = WebSocketTenant()
    with ThreadedServer(tenant) as server:
        asyncio.run(seed(database_url, server.url))
        yield tenant, server


@pytest.fixture(scope="module")
def ws_stack(
    database_url: str, tenant_server: tuple[WebSocketTenant, ThreadedServer]
) -> Iterator[WsStack]:
    with serve_gateway(create_app(dispatcher_settings(database_url))) as server:
        tenant, tenant_http = tenant_server
        yield WsStack(server.port, tenant, f"127.0.0.1:{tenant_http.port}")


async def hello(ws: ClientConnection) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(await ws.recv())
    return report


def header(report: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in report["headers"] if key == name]


# -- route kinds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "upstream_path", "query", "kind"),
    [
        pytest.param("chat.localhost", "/ws/room?x=1", "/ws/room", "x=1", "subdomain", id="sub"),
        pytest.param("chat.example.org", "/live", "/live", "", "custom_domain", id="custom"),
        pytest.param("127.0.0.1", "/dispatch/chat/ws?x=1", "/ws", "x=1", "path", id="path"),
        pytest.param("127.0.0.1", "/dispatch/chat/a%2Fb", "/a%2Fb", "", "path", id="path-raw"),
        pytest.param("127.0.0.1", "/dispatch?a=1&worker=chat&b=2", "/", "a=1&b=2", "query", id="q"),
    ],
)
async def test_every_route_kind_forwards_the_websocket(
    ws_stack: WsStack, host: str, path: str, upstream_path: str, query: str, kind: str
) -> None:
    async with ws_stack.session(host, path) as ws:
        report = await hello(ws)
        await ws.send("ping")
        assert await ws.recv() == "ping"
    assert report["raw_path"] == upstream_path
    assert header(report, "host") == [ws_stack.tenant_authority]
    assert report["query"] == query
    assert header(report, "x-dispatch-worker") == ["chat"]
    assert header(report, "x-dispatch-route") == [kind]
    if kind == "path":
        assert header(report, "x-forwarded-prefix") == ["/dispatch/chat"]


async def test_text_stays_text_and_binary_stays_binary(ws_stack: WsStack) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB
    async with ws_stack.session("chat.localhost") as ws:
        await hello(ws)
        await ws.send("héllo")
        await ws.send(b"\x00\x01\xff")
        await ws.send(big)
        assert await ws.recv() == "héllo"
        assert await ws.recv() == b"\x00\x01\xff"
        assert await ws.recv() == big


async def test_subprotocol_is_negotiated_end_to_end(ws_stack: WsStack) -> None:
    async with ws_stack.session("chat.localhost", subprotocols=["a", "b"]) as ws:
        report = await hello(ws)
        assert ws.subprotocol == "b"
    assert report["subprotocols"] == ["a", "b"]


async def test_handshake_headers_follow_the_forwarding_rules(ws_stack: WsStack) -> None:
    headers = {"X-Request-ID": "ws-test-123", "X-Dispatch-Worker": "evil", "Cookie": "c=1"}
    async with ws_stack.session("chat.localhost", additional_headers=headers) as ws:
        report = await hello(ws)
        assert ws.response is not None
        assert ws.response.headers.get_all("X-Request-ID") == ["ws-test-123"]
        assert ws.response.headers["Set-Cookie"] == "ws=1; Path=/"
    assert header(report, "x-request-id") == ["ws-test-123"]
    assert header(report, "x-forwarded-for") == ["127.0.0.1"]
    assert header(report, "x-forwarded-proto") == ["http"]
    assert header(report, "x-forwarded-host") == ["chat.localhost"]
    assert header(report, "x-dispatch-worker") == ["chat"]
    assert header(report, "cookie") == ["c=1"]
    assert header(report, "via") == ["1.1 dispatcher"]
    assert len(header(report, "host")) == 1
    assert len(header(report, "sec-websocket-key")) == 1


async def test_preserve_host_sends_the_client_host_and_the_base_path(ws_stack: WsStack) -> None:
    async with ws_stack.session("keep.localhost", "/ws?x=1") as ws:
        report = await hello(ws)
    assert header(report, "host") == ["keep.localhost"]
    assert report["raw_path"] == "/base/ws"
    assert report["query"] == "x=1"


# -- closing ----------------------------------------------------------------------------------


async def test_upstream_close_code_and_reason_reach_the_client(ws_stack: WsStack) -> None:
    async with ws_stack.session("chat.localhost") as ws:
        await hello(ws)
        await ws.send("close:4001:bye")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")


async def test_client_close_code_and_reason_reach_the_upstream(ws_stack: WsStack) -> None:
    closed = ws_stack.tenant.closed_event("later")
    async with ws_stack.session("chat.localhost", "/?key=later") as ws:
        await hello(ws)
        await ws.close(4002, "later")
    assert await asyncio.to_thread(closed.wait, 10)
    assert ws_stack.tenant.closed["later"] == (4002, "later")


async def test_client_dropping_the_connection_closes_the_upstream(ws_stack: WsStack) -> None:
    closed = ws_stack.tenant.closed_event("dropped")
    async with ws_stack.session("chat.localhost", "/?key=dropped") as ws:
        await hello(ws)
        ws.transport.abort()  # no close frame
    assert await asyncio.to_thread(closed.wait, 10)
    # uvicorn reports a connection lost after the handshake as 1005 (no status), the same as
    # a close frame without a code: both reach the upstream as a normal closure.
    assert ws_stack.tenant.closed["dropped"] == (1000, "")


async def test_upstream_dropping_the_connection_closes_the_client_with_1011(
    ws_stack: WsStack,
) -> None:
    async with ws_stack.session("chat.localhost") as ws:
        await hello(ws)
        await ws.send("drop")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1011


async def test_upstream_message_over_the_body_limit_closes_both_with_1009(
    ws_stack: WsStack,
) -> None:
    closed = ws_stack.tenant.closed_event("tiny")
    async with ws_stack.session("tiny.localhost", "/?key=tiny") as ws:
        report = await hello(ws)  # under the limit
        assert len(json.dumps(report)) < 1000
        await ws.send(b"x" * 1001)  # the echo is over it
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009
    assert await asyncio.to_thread(closed.wait, 10)
    assert ws_stack.tenant.closed["tiny"][0] == 1009


async def test_idle_session_is_closed_on_both_sides_with_1001(
    database_url: str, tenant_server: tuple[WebSocketTenant, ThreadedServer]
) -> None:
    tenant = tenant_server[0]
    closed = tenant.closed_event("idle")
    settings = dispatcher_settings(database_url, stream_idle_timeout=0.3)
    with serve_gateway(create_app(settings)) as server:
        stack = WsStack(server.port, tenant, "")
        async with stack.session("chat.localhost", "/?key=idle") as ws:
            await hello(ws)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "idle timeout")
        assert await asyncio.to_thread(closed.wait, 10)
    assert tenant.closed["idle"] == (1001, "idle timeout")


# -- refusals ---------------------------------------------------------------------------------


async def test_unknown_worker_is_refused_with_the_json_error(ws_stack: WsStack) -> None:
    refused = await ws_stack.refused("nope.localhost", additional_headers={"X-Request-ID": "r-1"})
    response = refused.response
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    error = json.loads(response.body)["error"]
    assert error["code"] == "worker_not_found"
    assert error["request_id"] == "r-1" == response.headers["X-Request-ID"]


async def test_upstream_refusal_passes_through(ws_stack: WsStack) -> None:
    refused = await ws_stack.refused("chat.localhost", "/refuse")
    response = refused.response
    assert response.status_code == 403
    assert response.body == b"tenant says no"
    assert response.headers["X-Tenant"] == "refused"
    assert "X-Request-ID" in response.headers


async def test_unreachable_upstream_is_a_502(ws_stack: WsStack) -> None:
    refused = await ws_stack.refused("gone.localhost")
    assert refused.response.status_code == 502
    assert json.loads(refused.response.body)["error"]["code"] == "upstream_unavailable"


async def test_upstream_not_answering_the_handshake_is_a_504(ws_stack: WsStack) -> None:
    refused = await ws_stack.refused("slow.localhost", "/hang")
    assert refused.response.status_code == 504
    assert json.loads(refused.response.body)["error"]["code"] == "upstream_timeout"


async def test_a_refused_connect_is_retried_on_the_next_upstream(ws_stack: WsStack) -> None:
    for _ in range(3):  # round-robin starts on each target in turn
        async with ws_stack.session("multi.localhost") as ws:
            await hello(ws)


async def test_a_target_refused_during_a_handshake_is_skipped_for_http_too(
    ws_stack: WsStack,
) -> None:
    # One upstream selection for both kinds of forwarding: the refusal seen by a WebSocket
    # handshake shows in /health/detailed, which reports the HTTP forwarder's view.
    async with ws_stack.session("multi.localhost") as ws:
        await hello(ws)
    async with ws_stack.session("multi.localhost") as ws:  # one of the two tried the dead one
        await hello(ws)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ws_stack.port}") as client:
        health = (await client.get("/health/detailed", timeout=10)).json()
    assert list(health["checks"]["upstreams"]["ejected"]) == ["http://127.0.0.1:9"]
