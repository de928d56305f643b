"""Rate limits end to end: real tenant, real dispatchers, a real redis-server on loopback.

- every route kind and the WebSocket handshake go through the worker's limit;
- the per-client limit follows the trusted ``X-Forwarded-For`` chain and nothing else;
- Redis killed mid-traffic: fail open (requests go through) or closed (503), one log line and
  one outage counted, the limiter backs off instead of paying the timeout on every request;
  Redis back on the same port: limits resume without restarting the dispatcher;
- two dispatcher processes share one worker's limit through Redis;
- a limit changed through the admin API applies in every process within a second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from dispatcher.app import Gateway, create_app
from dispatcher.settings import Settings
from tests.redis import RedisServer, running_redis
from tests.servers import DispatcherProcess, ThreadedServer, serve_gateway, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, DomainStatus, WorkerCreate
from workers_registry.store import RegistryStore

TOKEN = "rate-limit-test-token"


async def seed(database_url: str, tenant_url: str) -> None:
    await upgrade(database_url)
    store = RegistryStore.from_url(database_url)
    try:
        slow = {"rate_limit": 0.1, "rate_burst": 1}  # one request, then one per 10 s
        await store.add_worker(WorkerCreate(name="once", upstreams=[tenant_url], **slow))
        await store.add_worker(WorkerCreate(name="ws", upstreams=[tenant_url], **slow))
        await store.add_worker(WorkerCreate(name="tight", upstreams=[tenant_url], **slow))
        # 100/s: no lease (every request asks Redis), never reached by these tests.
        await store.add_worker(WorkerCreate(name="hundred", upstreams=[tenant_url], rate_limit=100))
        await store.add_worker(
            WorkerCreate(name="perip", upstreams=[tenant_url], client_rate_limit=0.1)
        )
        await store.add_worker(WorkerCreate(name="shared", upstreams=[tenant_url], rate_limit=5))
        await store.add_worker(WorkerCreate(name="tuned", upstreams=[tenant_url]))
        await store.add_worker(WorkerCreate(name="free", upstreams=[tenant_url]))
        await store.add_domain(
            CustomDomainCreate(domain="once.example.org", worker="once", status=DomainStatus.ACTIVE)
        )
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def tenant() -> Iterator[ThreadedServer]:
    with ThreadedServer(TenantApp("tenant")) as server:
        yield server


@pytest.fixture
def database_url(tmp_path: Path, tenant: ThreadedServer) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    asyncio.run(seed(url, tenant.url))
    return url


def gateway(database_url: str, **settings: Any) -> Gateway:
    return create_app(
        Settings(
            database_url=database_url,
            base_domains=("localhost",),
            registry_poll_interval=0.2,
            upstream_timeout=5,
            **settings,
        )
    )


def get(base: str, host: str, path: str = "/echo", **headers: str) -> httpx.Response:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.get(f"{base}{path}", headers={"host": host, **named}, timeout=10)


def assert_rate_limited(response: httpx.Response, policy: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry = int(response.headers["retry-after"])
    assert retry >= 1
    assert response.headers["ratelimit"] == f'"{policy}";r=0;t={retry}'
    assert f'"{policy}";q=' in response.headers["ratelimit-policy"]


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
def test_every_route_kind_and_websocket_handshakes_are_limited(
    database_url: str, shared: bool, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {}
    if shared:
        options["rate_limit_url"] = request.getfixturevalue("redis_server").url
    with serve_gateway(gateway(database_url, **options)) as server:
        first = get(server.url, "once.localhost")
        assert first.status_code == 200
        assert "ratelimit" not in first.headers and "ratelimit-policy" not in first.headers
        # The same worker's budget, whatever the route kind.
        for host, path in [
            ("once.localhost", "/echo"),
            ("localhost", "/dispatch/once/echo"),
            ("localhost", "/dispatch?worker=once"),
            ("once.example.org", "/echo"),
        ]:
            assert_rate_limited(get(server.url, host, path), "worker")
        assert get(server.url, "free.localhost").status_code == 200  # no limit: untouched

        async def handshakes() -> int:
            async with connect(f"ws://ws.localhost:{server.port}/", host="127.0.0.1"):
                pass
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://ws.localhost:{server.port}/", host="127.0.0.1"):
                    pass
            response = refused.value.response
            assert response.headers["RateLimit"].startswith('"worker";r=0;t=')
            return response.status_code

        assert asyncio.run(handshakes()) == 429


def test_client_limit_counts_the_address_the_trusted_chain_gives(database_url: str) -> None:
    # The test client connects from 127.0.0.1: trusted here, so its X-Forwarded-For counts.
    with serve_gateway(gateway(database_url, trusted_proxies=("127.0.0.1",))) as server:
        assert get(server.url, "perip.localhost", x_forwarded_for="198.51.100.1").status_code == 200
        limited = get(server.url, "perip.localhost", x_forwarded_for="198.51.100.1")
        assert_rate_limited(limited, "client")
        # Another client has its own budget; a forged left entry does not buy a new one.
        assert get(server.url, "perip.localhost", x_forwarded_for="198.51.100.2").status_code == 200
        forged = get(server.url, "perip.localhost", x_forwarded_for="6.6.6.6, 198.51.100.1")
        assert_rate_limited(forged, "client")


def test_an_untrusted_peer_cannot_pick_its_bucket(database_url: str) -> None:
    with serve_gateway(gateway(database_url, trusted_proxies=("10.0.0.0/8",))) as server:
        assert get(server.url, "perip.localhost", x_forwarded_for="198.51.100.3").status_code == 200
        # A different claimed address is still the same peer (127.0.0.1): refused.
        dodge = get(server.url, "perip.localhost", x_forwarded_for="198.51.100.4")
        assert_rate_limited(dodge, "client")


def limiter_state(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/health/detailed", timeout=10)
    state: dict[str, Any] = response.json()["checks"]["rate_limit"]
    return state


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_redis_outage_and_recovery(
    database_url: str, redis_server: RedisServer, fail_open: bool
) -> None:
    settings = {
        "rate_limit_url": redis_server.url,
        "rate_limit_fail_open": fail_open,
        "rate_limit_timeout": 0.05,
    }
    with capture_logs() as logs, serve_gateway(gateway(database_url, **settings)) as server:
        assert get(server.url, "once.localhost").status_code == 200
        assert_rate_limited(get(server.url, "once.localhost"), "worker")
        assert limiter_state(server.url)["status"] == "ok"

        redis_server.stop()
        # A refusal Redis gave stands until it expires, outage or not.
        assert_rate_limited(get(server.url, "once.localhost"), "worker")
        during = [get(server.url, "hundred.localhost") for _ in range(30)]
        if fail_open:
            assert {response.status_code for response in during} == {200}
        else:
            assert {response.status_code for response in during} == {503}
            body = during[0].json()["error"]
            assert body["code"] == "rate_limit_unavailable"
            assert during[0].headers["retry-after"] == "1"
        state = limiter_state(server.url)
        assert state["status"] == "unavailable"
        assert state["outages"] == 1
        # Backing off: most requests of the outage never waited for Redis at all.
        assert state["failures"] < len(during) // 2
        outcome = "allowed" if fail_open else "refused"
        assert state["unavailable"][outcome] == len(during)

        redis_server.start()  # same port, empty: the limits start over

        def limited_again() -> bool:
            return get(server.url, "tight.localhost").status_code == 429

        wait_until(limited_again, timeout=10, what="limits to resume after Redis came back")
        assert limiter_state(server.url)["status"] == "ok"
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert "dispatcher_rate_limit_store_outages_total 1.0" in metrics

    events = [entry["event"] for entry in logs]
    assert events.count("rate_limit_store_unavailable") == 1
    assert events.count("rate_limit_store_recovered") == 1


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, tenant: ThreadedServer
) -> Iterator[list[DispatcherProcess]]:
    """Two dispatcher processes on one registry and one Redis."""
    home = tmp_path_factory.mktemp("fleet")
    url = f"sqlite+aiosqlite:///{home / 'registry.db'}"
    asyncio.run(seed(url, tenant.url))
    with running_redis() as redis_server:
        env = {
            "DISPATCHER_DATABASE_URL": url,
            "DISPATCHER_RATE_LIMIT_URL": redis_server.url,
            "DISPATCHER_REGISTRY_POLL_INTERVAL": "0.2",
            "DISPATCHER_ADMIN_TOKEN": TOKEN,
            "DISPATCHER_LOG_LEVEL": "warning",
        }
        with (
            DispatcherProcess(env, "--no-migrate", cwd=str(home)) as first,
            DispatcherProcess(env, "--no-migrate", cwd=str(home)) as second,
        ):
            yield [first, second]


def test_two_processes_share_one_workers_limit(fleet: list[DispatcherProcess]) -> None:
    # rate 5/s, burst 5. Counted alone, each process would admit that much on its own.
    admitted = 0
    statuses: set[int] = set()
    lock = threading.Lock()
    clients = [httpx.Client(base_url=process.url, timeout=10) for process in fleet]

    def hammer(client: httpx.Client, count: int) -> None:
        nonlocal admitted
        for _ in range(count):
            status = client.get("/echo", headers={"host": "shared.localhost"}).status_code
            with lock:
                statuses.add(status)
                admitted += status == 200

    started = time.monotonic()
    threads = [threading.Thread(target=hammer, args=(client, 40)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = time.monotonic() - started
    for client in clients:
        client.close()

    assert statuses == {200, 429}
    # Everything the two processes admitted fits one budget: burst plus the rate over the
    # window the client measured (which contains the servers' own).
    assert 5 <= admitted <= 5 + 5 * window


def test_a_limit_changed_through_the_admin_api_applies_everywhere_within_a_second(
    fleet: list[DispatcherProcess], tenant: ThreadedServer
) -> None:
    for process in fleet:
        assert get(process.url, "tuned.localhost").status_code == 200
    changed = httpx.put(
        f"{fleet[0].url}/admin/workers/tuned",
        json={"upstreams": [tenant.url], "rate_limit": 0.1, "rate_burst": 1},
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text

    def limited_everywhere() -> bool:
        return all(get(p.url, "tuned.localhost").status_code == 429 for p in fleet)

    wait_until(limited_everywhere, timeout=1.0, what="the new limit in every process")
