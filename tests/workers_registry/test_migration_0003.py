"""Migration 0003 (domain verification) on both backends, from a registry that has rows."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.workers_registry.registry_kit import migrate_to
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, WorkerCreate
from workers_registry.store import RegistryStore, create_registry_engine

pytestmark = pytest.mark.anyio


async def _execute(url: str, *statements: str) -> list[sa.Row[tuple[object, ...]]]:
    engine = create_registry_engine(url, pooled=False)
    rows: list[sa.Row[tuple[object, ...]]] = []
    try:
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.execute(sa.text(statement))
                rows = list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


async def test_existing_domains_get_a_token_and_keep_their_status(registry_url: str) -> None:
    await migrate_to(registry_url, "0001")
    await _execute(
        registry_url,
        "INSERT INTO workers (name, upstreams) VALUES ('shop', '[\"http://127.0.0.1:1\"]')",
        "INSERT INTO custom_domains (domain, worker, status) VALUES"
        " ('a.example.org', 'shop', 'active'), ('b.example.org', 'shop', 'pending')",
    )
    await upgrade(registry_url)
    async with RegistryStore.from_url(registry_url) as store:
        domains = {domain.domain: domain for domain in await store.list_domains()}
    assert {name: d.status for name, d in domains.items()} == {
        "a.example.org": "active",
        "b.example.org": "pending",
    }
    tokens = {d.verification_token for d in domains.values()}
    assert None not in tokens and len(tokens) == 2
    # Not scheduled: checks start when an operator asks (set-status pending, domains verify).
    assert {d.next_check_at for d in domains.values()} == {None}


async def test_domain_changes_still_bump_the_registry_version_after_the_upgrade(
    registry_url: str,
) -> None:
    # SQLite copies the table to change its CHECK constraint; its triggers must survive.
    await upgrade(registry_url)
    async with RegistryStore.from_url(registry_url) as store:
        await store.add_worker(WorkerCreate(name="shop", upstreams=["http://127.0.0.1:1"]))
        before = await store.version()
        await store.add_domain(CustomDomainCreate(domain="a.example.org", worker="shop"))
        await store.set_domain_status("a.example.org", "moved")
        await store.remove_domain("a.example.org")
        assert await store.version() == before + 3


async def test_a_moved_domain_is_failed_after_a_downgrade(registry_url: str) -> None:
    await upgrade(registry_url)
    await _execute(
        registry_url,
        "INSERT INTO workers (name, upstreams) VALUES ('shop', '[\"http://127.0.0.1:1\"]')",
        "INSERT INTO custom_domains (domain, worker, status) VALUES ('a.example.org', 'shop', "
        "'moved')",
    )
    await migrate_to(registry_url, "0001", down=True)
    rows = await _execute(registry_url, "SELECT status FROM custom_domains")
    assert [row[0] for row in rows] == ["failed"]
    version = await _execute(registry_url, "SELECT version FROM registry_version")
    await _execute(registry_url, "DELETE FROM custom_domains")
    after = await _execute(registry_url, "SELECT version FROM registry_version")
    assert after[0][0] == version[0][0] + 1  # the triggers survived the way down too
