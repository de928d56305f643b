"""Review of issue 12 against a real ``dispatcher serve`` on a throwaway Postgres.

Any role that can connect may ``pg_notify`` on the registry channel. A barrage of hostile
payloads (garbage, deep nesting, wrong types, sequences no registry reaches, forged changes
at the next sequence and beyond it) must leave the process alive and following: the next
real change is served, and what it holds is what the registry says.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.postgres import PostgresServer, run_async
from tests.servers import DispatcherProcess, ThreadedServer, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade
from workers_registry.models import WorkerCreate
from workers_registry.store import RegistryStore
from workers_registry.tables import REGISTRY_CHANNEL

pytestmark = pytest.mark.postgres


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    if not postgres_server.running:
        postgres_server.start()
    name = postgres_server.create_database()
    url = postgres_server.url(name)
    run_async(upgrade(url))
    yield url
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(name)


def _status(url: str, host: str) -> int:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, headers={"host": host}, timeout=5).status_code
    return 0


def _snapshot(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/health/detailed", timeout=5)
    snapshot: dict[str, Any] = response.json()["checks"]["snapshot"]
    return snapshot


def _hostile(applied: int) -> list[str]:
    nested = "[" * 3000 + "]" * 3000
    payloads = [
        "",
        "garbage",
        "\x01\x02",
        nested,
        '{"seq": ' + nested + "}",
        '{"seq": 5, "first": 5, "changes": ' + nested + "}",
        json.dumps({"seq": 2**63}),
        '{"seq": ' + "9" * 4000 + "}",
        json.dumps({"seq": -1}),
        json.dumps({"seq": "12"}),
        json.dumps({"seq": True}),
        json.dumps({"seq": 1.5}),
        json.dumps([applied + 1]),
        json.dumps({"seq": applied + 10**9}),  # a sequence beyond the registry
        json.dumps({"seq": applied + 1, "first": applied + 1, "changes": [["workers", 1, 2]]}),
        json.dumps(
            {"seq": applied + 1, "first": applied + 1, "changes": [["workers", "app", "delete"]]}
        ),  # a lie at the next sequence
        json.dumps(
            {"seq": applied + 500, "first": applied + 500, "changes": [["workers", "x", "insert"]]}
        ),
        "x" * 7990,
    ]
    return payloads


def test_a_barrage_of_forged_notifications_leaves_a_dispatcher_following(
    database: str, tmp_path: Path
) -> None:
    with ThreadedServer(TenantApp("review")) as tenant:

        async def seed() -> None:
            async with RegistryStore.from_url(database) as store:
                await store.add_worker(WorkerCreate(name="app", upstreams=[tenant.url]))

        run_async(seed())
        env = {
            "DISPATCHER_DATABASE_URL": database,
            "DISPATCHER_REGISTRY_POLL_INTERVAL": "0.5",
            "DISPATCHER_LOG_LEVEL": "warning",
        }
        with DispatcherProcess(env, cwd=str(tmp_path)) as process:
            assert _status(process.url, "app.localhost") == 200
            applied = _snapshot(process.url)["applied_seq"]

            async def forge() -> None:
                dsn = database.replace("postgresql+asyncpg", "postgresql")
                connection = await asyncpg.connect(dsn)
                try:
                    for _ in range(20):  # a flood as well
                        for payload in _hostile(applied):
                            await connection.execute(
                                "SELECT pg_notify($1, $2)", REGISTRY_CHANNEL, payload
                            )
                    # The real change that comes after all of it.
                    await connection.execute("UPDATE workers SET enabled = false")
                finally:
                    await connection.close()

            run_async(forge())

            wait_until(
                lambda: _status(process.url, "app.localhost") == 404,
                timeout=10,
                what="the real change, served",
            )

            async def version() -> int:
                async with RegistryStore.from_url(database) as store:
                    return await store.version()

            registry = run_async(version())

            def settled() -> bool:
                snapshot = _snapshot(process.url)
                held = (snapshot["applied_seq"], snapshot["head_seq"], snapshot["confirmed_seq"])
                return held == (registry, registry, registry)

            wait_until(settled, timeout=10, what="applied, head and confirmed at the registry's")
            assert process.proc is not None and process.proc.poll() is None
        assert b"Traceback" not in process.output, process.output.decode(errors="replace")[-3000:]
