"""Proxy robustness: timeouts, failures mid-body, disconnects, limits, several upstreams,
loops and hostile input, against upstreams that misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.app import Gateway, create_app
from dispatcher.settings import Settings
from tests.misbehaving import MisbehavingServer
from tests.servers import ThreadedServer, free_port, serve_gateway, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade
from workers_registry.models import WorkerCreate
from workers_registry.store import RegistryStore


@dataclass
class Rig:
    url: str
    port: int
    gateway: Gateway
    bad: MisbehavingServer
    one: TenantApp
    two: TenantApp
    one_url: str
    two_url: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('robust') / 'r.db'}"
    one, two = TenantApp("one"), TenantApp("two")
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        MisbehavingServer() as bad,
        ThreadedServer(one) as one_server,
        ThreadedServer(two) as two_server,
    ):

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                for worker in (
                    WorkerCreate(name="bad", upstreams=[bad.url], upstream_timeout=0.5),
                    WorkerCreate(name="patient", upstreams=[bad.url], upstream_timeout=60),
                    WorkerCreate(name="sse", upstreams=[one_server.url], upstream_timeout=0.2),
                    WorkerCreate(name="single", upstreams=[one_server.url], max_concurrency=1),
                    WorkerCreate(name="many", upstreams=[dead, one_server.url, two_server.url]),
                    WorkerCreate(
                        name="loop", upstreams=[f"http://127.0.0.1:{port}"], preserve_host=True
                    ),
                    WorkerCreate(name="echo", upstreams=[one_server.url]),
                ):
                    await store.add_worker(worker)

        asyncio.run(seed())
        settings = Settings(database_url=database, stream_idle_timeout=1.0, connect_timeout=1)
        gateway = create_app(settings)
        with serve_gateway(gateway, port=port) as server:
            yield Rig(
                server.url, server.port, gateway, bad, one, two, one_server.url, two_server.url
            )


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


# -- timeouts and failures ----------------------------------------------------------------------


def test_no_response_headers_in_time_is_504_and_the_exchange_is_dropped(rig: Rig) -> None:
    started = time.monotonic()
    response = httpx.get(f"{rig.url}/hang", headers={"host": "bad.localhost"}, timeout=10)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5
    assert rig.bad.closed["/hang"].wait(5), "the upstream connection must be closed"


def test_reset_mid_body_closes_the_client_connection(rig: Rig) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{rig.url}/reset", headers={"host": "bad.localhost"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == "1000"
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_stalled_body_hits_the_idle_timeout_and_closes_the_client(rig: Rig) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{rig.url}/stall", headers={"host": "bad.localhost"}) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    assert rig.bad.closed["/stall"].wait(5)


def test_event_stream_is_not_cut_by_the_upstream_timeout(rig: Rig) -> None:
    # Worker ``sse`` has upstream_timeout 0.2 s: once headers arrived it no longer applies
    # (the idle timeout, 1 s here, does).
    key = uuid.uuid4().hex
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{rig.url}/sse?key={key}", headers={"host": "sse.localhost"}) as r,
    ):
        lines = r.iter_lines()
        assert next(lines) == "data: one"
        opened = time.monotonic()
        wait_until(lambda: time.monotonic() - opened > 0.4, what="the timeout to pass")
        httpx.get(f"{rig.one_url}/release?key={key}")
        assert [line for line in lines if line] == ["data: two"]


def test_client_disconnect_while_waiting_cancels_the_upstream(rig: Rig) -> None:
    rig.bad.closed["/hang"].clear()
    before = rig.bad.requests["/hang"]
    with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as sock:
        # Worker ``patient`` would wait 60 s for headers: only the disconnect ends it.
        sock.sendall(b"GET /hang HTTP/1.1\r\nHost: patient.localhost\r\n\r\n")
        wait_until(lambda: rig.bad.requests["/hang"] > before, what="the upstream request")
    assert rig.bad.closed["/hang"].wait(5)


def test_client_disconnect_during_a_stream_closes_the_upstream_stream(rig: Rig) -> None:
    key = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as sock:
        sock.sendall(f"GET /sse?key={key} HTTP/1.1\r\nHost: echo.localhost\r\n\r\n".encode())
        assert b"data: one" in sock.recv(65536) + sock.recv(65536)
    # The tenant's stream ends only when its connection goes: the dispatcher cancelled the
    # upstream exchange when the client left, well before the 1 s idle timeout would have.
    wait_until(lambda: rig.one.sse_closed[key].is_set(), timeout=0.9, what="stream closed")


# -- limits -------------------------------------------------------------------------------------


def test_worker_over_its_concurrency_is_503_with_retry_after(rig: Rig) -> None:
    key = uuid.uuid4().hex
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{rig.url}/sse?key={key}", headers={"host": "single.localhost"}),
    ):
        second = httpx.get(rig.url, headers={"host": "single.localhost"}, timeout=10)
        assert second.status_code == 503
        assert second.json()["error"]["code"] == "worker_overloaded"
        assert second.headers["retry-after"] == "1"
        httpx.get(f"{rig.one_url}/release?key={key}")
    after = httpx.get(rig.url, headers={"host": "single.localhost"}, timeout=10)
    assert after.status_code == 200


# -- several upstreams --------------------------------------------------------------------------


def test_several_upstreams_round_robin_and_a_dead_one_is_skipped(rig: Rig) -> None:
    seen = []
    with httpx.Client(base_url=rig.url, timeout=10) as client:
        for index in range(8):
            response = client.post(
                "/echo", headers={"host": "many.localhost"}, content=f"body-{index}".encode()
            )
            assert response.status_code == 200
            assert response.json()["body_bytes"] == len(f"body-{index}")
            seen.append(response.json()["tenant"])
        health = client.get("/health/detailed").json()
    assert set(seen) == {"one", "two"}
    (dead,) = health["checks"]["upstreams"]["ejected"]
    assert dead.startswith("http://127.0.0.1:")


# -- loops and hostile input --------------------------------------------------------------------


def test_a_worker_whose_upstream_leads_back_is_a_loop(rig: Rig) -> None:
    response = httpx.get(rig.url, headers={"host": "loop.localhost"}, timeout=20)
    assert response.status_code == 508
    assert response.json()["error"]["code"] == "loop_detected"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 3\r\n"
            b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd",
            b"400",
            id="conflicting-content-length",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 3x\r\n"
            b"Connection: close\r\n\r\nabc",
            b"400",
            id="malformed-content-length",
        ),
        pytest.param(
            b"GET /echo HTTP/1.1\r\nHost: echo.localhost\r\nX-A: a\rb\r\nConnection: close\r\n\r\n",
            b"400",
            id="bare-cr-in-header-value",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: " + b"a" * 64 + b".localhost\r\nConnection: close\r\n\r\n",
            b"400",
            id="over-long-label",
        ),
        pytest.param(
            b"GET /dispatch/ec%2Fho/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"400",
            id="encoded-slash-in-worker",
        ),
        pytest.param(
            b"GET /dispatch/echo/%2e%2e/%2e%2e/admin HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\n\r\n",
            b"400",
            id="encoded-dot-segments",
        ),
    ],
)
def test_hostile_requests_get_a_clear_error(rig: Rig, request_bytes: bytes, status: bytes) -> None:
    answer = raw_request(rig.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]


def test_connection_header_cannot_strip_the_headers_we_own(rig: Rig) -> None:
    response = httpx.get(
        f"{rig.url}/echo",
        headers={
            "host": "echo.localhost",
            "connection": "x-forwarded-for, x-request-id, host",
            "x-request-id": "mine",
        },
        timeout=10,
    )
    data = response.json()
    headers = dict(data["headers"])
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-request-id"] == response.headers["x-request-id"]
    assert headers["host"] == rig.one_url.removeprefix("http://")


def test_an_unknown_scope_type_is_left_alone(rig: Rig) -> None:
    """ASGI: a server may send scope types an application does not know; they are ignored."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("nothing to receive for an unknown scope type")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert asyncio.run(rig.gateway({"type": "telepathy"}, receive, send)) is None
    assert sent == []


def test_the_only_upstream_refusing_is_a_502_and_is_listed_as_ejected(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'lonely.db'}"
    refused = f"http://127.0.0.1:{free_port()}"

    async def seed() -> None:
        await upgrade(database)
        async with RegistryStore.from_url(database) as store:
            await store.add_worker(WorkerCreate(name="lonely", upstreams=[refused]))

    asyncio.run(seed())
    gateway = create_app(Settings(database_url=database, connect_timeout=1))
    with serve_gateway(gateway) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        before = client.get("/health/detailed").json()["checks"]["upstreams"]["ejected"]
        response = client.get("/", headers={"host": "lonely.localhost"})
        after = client.get("/health/detailed").json()["checks"]["upstreams"]["ejected"]
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert refused not in before
    assert refused in after
