"""A fleet on one Postgres: live changes everywhere, degraded mode, single-flight lookups.

Real dispatcher processes (``dispatcher serve``) and in-process dispatchers under uvicorn,
one throwaway Postgres cluster, real tenant apps. The version poll is set to 30 s in the
change-feed tests so only ``LISTEN/NOTIFY`` can make them pass in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event

from dispatcher.app import create_app
from dispatcher.cli import main
from dispatcher.settings import Settings
from tests.postgres import PostgresServer, run_async
from tests.servers import DispatcherProcess, ThreadedServer, serve_gateway, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, WorkerCreate
from workers_registry.store import RegistryStore

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def tenant() -> Iterator[ThreadedServer]:
    with ThreadedServer(TenantApp("fleet")) as server:
        yield server


@pytest.fixture
def database(postgres_server: PostgresServer, tenant: ThreadedServer) -> Iterator[str]:
    if not postgres_server.running:
        postgres_server.start()
    name = postgres_server.create_database()
    url = postgres_server.url(name)

    async def seed() -> None:
        await upgrade(url)
        async with RegistryStore.from_url(url) as store:
            await store.add_worker(WorkerCreate(name="app", upstreams=[tenant.url]))
            await store.add_domain(
                CustomDomainCreate(domain="app.example.org", worker="app", status="active")
            )

    run_async(seed())
    yield url
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(name)


def cli(database: str, *args: str) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISPATCHER_DATABASE_URL", database)
        return main(list(args))


def status(url: str, host: str, path: str = "/") -> int:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + path, headers={"host": host}, timeout=5).status_code
    return 0


def within(seconds: float, condition: Any, what: str) -> float:
    started = time.monotonic()
    wait_until(condition, timeout=seconds, what=what)
    return time.monotonic() - started


def test_admin_and_cli_changes_reach_every_process_within_two_seconds(
    database: str, tmp_path: Path
) -> None:
    env = {
        "DISPATCHER_DATABASE_URL": database,
        "DISPATCHER_REGISTRY_POLL_INTERVAL": "30",
        "DISPATCHER_LOG_LEVEL": "warning",
        "DISPATCHER_ADMIN_TOKEN": "fleet-token",
    }
    with (
        DispatcherProcess(env, cwd=str(tmp_path)) as one,
        DispatcherProcess(env, cwd=str(tmp_path)) as two,
    ):
        for process in (one, two):
            assert status(process.url, "app.localhost") == 200
            assert status(process.url, "app.example.org") == 200
            assert status(process.url, "new.example.org") == 404  # now negatively cached

        added = httpx.post(
            f"{one.url}/admin/domains",
            json={"domain": "new.example.org", "worker": "app", "status": "active"},
            headers={"authorization": "Bearer fleet-token"},
            timeout=10,
        )
        assert added.status_code == 201, added.text
        for process in (two, one):
            within(2, lambda p=process: status(p.url, "new.example.org") == 200, "domain")

        assert cli(database, "workers", "remove", "app") == 0
        for process in (one, two):
            within(2, lambda p=process: status(p.url, "app.localhost") == 404, "removal")
            assert status(process.url, "app.example.org") == 404


def test_plain_sql_update_reaches_a_running_dispatcher(database: str, tmp_path: Path) -> None:
    env = {"DISPATCHER_DATABASE_URL": database, "DISPATCHER_REGISTRY_POLL_INTERVAL": "30"}
    with DispatcherProcess(env, cwd=str(tmp_path)) as process:
        assert status(process.url, "app.localhost") == 200

        async def disable() -> None:
            dsn = database.replace("+asyncpg", "")
            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute("UPDATE workers SET enabled = false WHERE name = 'app'")
            finally:
                await connection.close()

        run_async(disable())
        within(1.5, lambda: status(process.url, "app.localhost") == 404, "SQL change")


def test_serve_with_several_workers_stays_consistent(database: str, tmp_path: Path) -> None:
    env = {"DISPATCHER_DATABASE_URL": database, "DISPATCHER_REGISTRY_POLL_INTERVAL": "30"}
    with DispatcherProcess(env, "--workers", "2", cwd=str(tmp_path)) as process:
        assert process.proc is not None
        pid = process.proc.pid

        def server_processes() -> int:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            return sum(
                b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes() for child in children
            )

        wait_until(lambda: server_processes() == 2, what="two server processes")
        assert (
            cli(
                database,
                "domains",
                "add",
                "late.example.org",
                "--worker",
                "app",
                "--status",
                "active",
            )
            == 0
        )

        def everywhere() -> bool:
            # Fresh connections land on either process; all of them must see the change.
            return all(status(process.url, "late.example.org") == 200 for _ in range(20))

        within(3, everywhere, "the change in every process")


def test_database_outage_degrades_and_recovers(
    database: str, postgres_server: PostgresServer
) -> None:
    settings = Settings(database_url=database, registry_poll_interval=0.2, domain_cache_ttl=0.5)
    gateway = create_app(settings)
    with serve_gateway(gateway) as server:
        assert status(server.url, "app.localhost") == 200
        assert status(server.url, "app.example.org") == 200  # cached from here on
        health = httpx.get(f"{server.url}/health/detailed", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["checks"]["listener"]["connected"] is True

        postgres_server.stop()
        try:
            started = time.monotonic()
            assert status(server.url, "app.localhost") == 200  # the snapshot answers
            stale = httpx.get(server.url, headers={"host": "app.example.org"}, timeout=10)
            assert stale.status_code == 200, stale.text  # stale-if-error
            unknown = httpx.get(server.url, headers={"host": "other.example.net"}, timeout=10)
            assert unknown.status_code == 503
            assert unknown.json()["error"]["code"] == "registry_unavailable"
            assert time.monotonic() - started < 5, "database calls must time out, not hang"
            degraded = httpx.get(f"{server.url}/health/detailed", timeout=10)
            assert degraded.status_code == 503
            assert degraded.json()["status"] == "degraded"
            assert degraded.json()["checks"]["registry"]["status"] == "unavailable"
            assert status(server.url, "localhost", "/health") == 200  # liveness has no I/O
        finally:
            postgres_server.start()

        def recovered() -> bool:
            response = httpx.get(f"{server.url}/health/detailed", timeout=5)
            return response.status_code == 200

        within(5, recovered, "recovery")
        cli(
            database, "domains", "add", "after.example.org", "--worker", "app", "--status", "active"
        )
        within(2, lambda: status(server.url, "after.example.org") == 200, "new domain")


def test_concurrent_misses_for_one_host_cost_one_query(database: str) -> None:
    gateway = create_app(
        Settings(database_url=database, registry_poll_interval=30, max_concurrency=2000)
    )
    with serve_gateway(gateway) as server:
        assert gateway.state.store is not None
        queries: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            # The host lookups (the verifier's own schedule queries are not lookups).
            if "custom_domains.domain = " in statement:
                queries.append(statement)

        engines = [engine.sync_engine for engine in gateway.state.store.engines]
        for engine in engines:
            event.listen(engine, "before_cursor_execute", count)
        try:

            async def burst() -> list[int]:
                limits = httpx.Limits(max_connections=1000)
                async with httpx.AsyncClient(limits=limits, timeout=60) as client:
                    responses = await asyncio.gather(
                        *(
                            client.get(server.url, headers={"host": "app.example.org"})
                            for _ in range(1000)
                        )
                    )
                return [response.status_code for response in responses]

            codes = asyncio.run(burst())
        finally:
            for engine in engines:
                event.remove(engine, "before_cursor_execute", count)
    assert codes == [200] * 1000, sorted(set(codes))
    assert len(queries) == 1, queries
