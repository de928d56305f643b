"""Review of issue 12: the lookups engine (no pre-ping) across a Postgres stop and start.

A read retries once on a connection the restart dropped, and no more: while the database is
down it fails fast with ``RegistryUnavailable``; the follower keeps serving what it holds and
catches up after the restart, to what a full reload gives.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dispatcher.errors import RegistryUnavailable
from tests.postgres import PostgresServer
from tests.workers_registry.registry_kit import (
    BASE,
    add_domain,
    add_worker,
    assert_as_a_full_reload,
    follower,
    route,
    running,
    sql,
    until,
)
from workers_registry.migrate import upgrade
from workers_registry.store import RegistryStore

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_a_read_during_an_outage_tries_twice_at_most_and_fails_fast(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    await upgrade(postgres_url)
    async with RegistryStore.from_url(postgres_url, query_timeout=2) as store:
        await store.lookup_domain("a.example.org")  # the lookups' pool holds a connection
        lookups = store.engines[-1]
        attempts: list[object] = []
        sa.event.listen(lookups.sync_engine, "before_cursor_execute", lambda *a: attempts.append(1))
        sa.event.listen(lookups.sync_engine, "do_connect", lambda *a: attempts.append(2))
        postgres_server.stop()
        try:
            with pytest.raises(RegistryUnavailable):
                await store.lookup_domain("a.example.org")
        finally:
            postgres_server.start()

    # One statement on the dropped connection, then one attempt at a new one (refused): no
    # loop, and each try is bounded by the query timeout. (``do_connect`` is each attempt; the
    # pool's ``connect`` only a successful one, so it never saw a refused retry, and a bound
    # of at most two held before the read too.)
    assert attempts == [1, 2]


async def test_a_dispatcher_catches_up_after_a_restart_during_churn(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    await upgrade(postgres_url)
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"), add_domain("a.example.org", "shop"))
        async with running(postgres_url, registry_poll_interval=0.2) as gateway:
            assert await route(gateway, "a.example.org") == "shop"  # cached
            await sql(store, "UPDATE workers SET preserve_host = true WHERE name = 'shop'")
            await until(lambda: gateway.table.workers["shop"].preserve_host, "the change")

            postgres_server.stop()
            try:
                # Down: what is held is still served (the cached domain, the worker).
                assert await route(gateway, "a.example.org") == "shop"
                await until(lambda: not follower(gateway).healthy, "the outage noticed")
            finally:
                postgres_server.start()

            await sql(
                store,
                add_worker("blog"),
                "UPDATE custom_domains SET worker = 'blog' WHERE domain = 'a.example.org'",
            )
            version = await store.version()
            await until(lambda: follower(gateway).applied == version, "the catch-up", 15)
            assert await route(gateway, "a.example.org") == "blog"
            assert await route(gateway, f"blog.{BASE}") == "blog"

            await assert_as_a_full_reload(gateway, postgres_url)
