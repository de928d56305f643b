"""The alembic migrations on both backends: schema, idempotence, concurrency, triggers."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from dispatcher.errors import RegistryUnavailable
from tests.postgres import settle_aiosqlite_threads
from tests.workers_registry.registry_kit import migrate_to
from workers_registry.migrate import current_revision, head_revision, upgrade
from workers_registry.store import RegistryStore, create_registry_engine
from workers_registry.tables import metadata

pytestmark = pytest.mark.anyio

REGISTRY_TABLES = {"workers", "custom_domains", "registry_version"}


async def _run(url: str, sql: str) -> list[sa.Row[tuple[object, ...]]]:
    engine = create_registry_engine(url, pooled=False)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(sa.text(sql))
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def _table_names(url: str) -> set[str]:
    engine = create_registry_engine(url, pooled=False)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            return set(names)
    finally:
        await engine.dispose()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port nothing listens on (bound, never listening, so nobody takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_upgrade_creates_the_schema_at_head(registry_url: str) -> None:
    assert await current_revision(registry_url) is None

    await upgrade(registry_url)

    assert await _table_names(registry_url) >= REGISTRY_TABLES
    assert await current_revision(registry_url) == head_revision()
    assert await _run(registry_url, "SELECT id, version FROM registry_version") == [(1, 0)]


async def test_upgrade_twice_changes_nothing(registry_url: str) -> None:
    await upgrade(registry_url)
    await _run(registry_url, "INSERT INTO workers (name, upstreams) VALUES ('a', '[\"http://a\"]')")

    await upgrade(registry_url)

    assert await current_revision(registry_url) == head_revision()
    assert await _run(registry_url, "SELECT name FROM workers") == [("a",)]
    assert await _run(registry_url, "SELECT id, version FROM registry_version") == [(1, 1)]


async def test_concurrent_upgrades_both_succeed(registry_url: str) -> None:
    # Every replica migrates on start; they must queue, not collide.
    outcomes = await asyncio.gather(
        *(upgrade(registry_url) for _ in range(3)), return_exceptions=True
    )
    assert outcomes == [None, None, None]  # every task finished, and none failed

    assert await current_revision(registry_url) == head_revision()
    assert await _run(registry_url, "SELECT id, version FROM registry_version") == [(1, 0)]


async def test_upgrades_from_concurrent_processes_all_succeed(registry_url: str) -> None:
    # The real deployment: several replicas start at once and each runs `db upgrade`.
    code = (
        "import sys; from workers_registry.migrate import upgrade_sync; upgrade_sync(sys.argv[1])"
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            registry_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outcomes = [await process.communicate() for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outcomes
    assert await current_revision(registry_url) == head_revision()
    assert await _run(registry_url, "SELECT id, version FROM registry_version") == [(1, 0)]


async def test_migrated_schema_matches_the_table_definitions(registry_url: str) -> None:
    await upgrade(registry_url)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    engine = create_registry_engine(registry_url, pooled=False)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_rows_written_with_plain_sql_get_the_schema_defaults(registry_url: str) -> None:
    await upgrade(registry_url)
    await _run(registry_url, "INSERT INTO workers (name, upstreams) VALUES ('a', '[\"http://a\"]')")
    await _run(
        registry_url, "INSERT INTO custom_domains (domain, worker) VALUES ('a.example', 'a')"
    )

    async with RegistryStore.from_url(registry_url) as store:
        worker = await store.get_worker("a")
        domain = await store.get_domain("a.example")

    assert worker is not None
    assert (worker.enabled, worker.preserve_host, worker.tags) == (True, False, {})
    assert worker.created_at.tzinfo is not None
    assert domain is not None
    assert domain.status == "pending"


async def test_status_outside_the_allowed_values_is_rejected(registry_url: str) -> None:
    await upgrade(registry_url)
    await _run(registry_url, "INSERT INTO workers (name, upstreams) VALUES ('a', '[\"http://a\"]')")

    with pytest.raises(sa_exc.IntegrityError):
        await _run(
            registry_url,
            "INSERT INTO custom_domains (domain, worker, status) VALUES ('a.example', 'a', 'live')",
        )


async def test_downgrade_to_base_removes_the_schema(registry_url: str) -> None:
    await upgrade(registry_url)

    await migrate_to(registry_url, "base", down=True)

    assert not REGISTRY_TABLES & await _table_names(registry_url)
    await upgrade(registry_url)  # and back up again
    assert await _table_names(registry_url) >= REGISTRY_TABLES


async def test_upgrade_of_an_unreachable_postgres_raises_registry_unavailable(
    closed_port: int,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port}/registry"
    with pytest.raises(RegistryUnavailable):
        await upgrade(url, connect_timeout=2)


async def test_upgrade_of_an_unopenable_sqlite_file_raises_registry_unavailable(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/missing-directory/registry.db"
    with pytest.raises(RegistryUnavailable):
        await upgrade(url)
    await settle_aiosqlite_threads()
