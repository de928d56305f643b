"""The change log and the follower that applies it, against real SQLite and Postgres
(``registry_kit`` says how the follower is driven)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st

from dispatcher.state import DispatcherState
from tests.workers_registry.registry_kit import (
    BASE,
    add_domain,
    add_worker,
    announced,
    announced_up_to,
    assert_as_a_full_reload,
    follower,
    route,
    running,
    sql,
    statements_of,
    until,
    upgrade_once,
    write,
)
from workers_registry.migrate import upgrade
from workers_registry.store import Change, RegistryStore

pytestmark = pytest.mark.anyio


# -- the log ---------------------------------------------------------------------------------


async def test_every_changed_row_is_logged_with_its_sequence(store: RegistryStore) -> None:
    await sql(store, add_worker("shop"), add_worker("blog"))
    await sql(store, add_domain("shop.example.org", "shop"))
    await sql(store, "UPDATE workers SET enabled = false")  # two rows, one statement
    await sql(store, "UPDATE workers SET name = 'store' WHERE name = 'shop'")  # a rename
    await sql(store, "DELETE FROM custom_domains")

    changes = await store.changes_after(0)

    assert [(c.table, c.key, c.op) for c in changes[:3]] == [
        ("workers", "shop", "insert"),
        ("workers", "blog", "insert"),
        ("custom_domains", "shop.example.org", "insert"),
    ]
    assert {(c.key, c.op) for c in changes[3:5]} == {("shop", "update"), ("blog", "update")}
    # A rename logs the new key and the old one; the cascade logs the domain it moved.
    assert {(c.table, c.key) for c in changes[5:8]} == {
        ("workers", "store"),
        ("workers", "shop"),
        ("custom_domains", "shop.example.org"),
    }
    assert (changes[8].key, changes[8].op) == ("shop.example.org", "delete")
    assert [c.seq for c in changes] == list(range(1, 10))
    assert await store.version() == 9


async def test_a_failed_transaction_logs_nothing(store: RegistryStore) -> None:
    await sql(store, add_worker("shop"))
    with pytest.raises(sa.exc.IntegrityError):
        await sql(store, add_worker("blog"), add_domain("x.example.org", "ghost"))

    assert await store.changes_after(0) == [Change(1, "workers", "shop", "insert")]
    assert await store.version() == 1


@pytest.mark.postgres
async def test_truncate_is_logged_without_a_key(postgres_url: str) -> None:
    await upgrade(postgres_url)
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"), add_domain("shop.example.org", "shop"))
        await sql(store, "TRUNCATE custom_domains")

        changes = await store.changes_after(2)

    assert changes == [Change(3, "custom_domains", None, "truncate")]


async def test_prune_drops_only_entries_older_than_the_retention(store: RegistryStore) -> None:
    await sql(store, add_worker("old"))
    await sql(store, "UPDATE registry_changes SET changed_at = '2000-01-01 00:00:00'")
    await sql(store, add_worker("new"))

    assert await store.prune_changes(3600) == 1
    assert [c.key for c in await store.changes_after(0)] == ["new"]


# -- notifications ---------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_bulk_change_of_100k_rows_sends_one_notification(postgres_url: str) -> None:
    await upgrade(postgres_url)
    async with announced(postgres_url) as received, RegistryStore.from_url(postgres_url) as store:
        await sql(
            store,
            add_worker("shop"),
            "INSERT INTO custom_domains (domain, worker, status)"
            " SELECT 'd' || i || '.example.org', 'shop', 'active'"
            " FROM generate_series(1, 50000) AS i",
            "INSERT INTO custom_domains (domain, worker, status)"
            " SELECT 'e' || i || '.example.org', 'shop', 'active'"
            " FROM generate_series(1, 50000) AS i",
        )
        await sql(store, add_worker("marker"))  # a later transaction, to wait for
        await announced_up_to(store, received)
        assert await store.version() == 100_002

    # The bulk transaction is announced by its sequence alone (too many changes to carry);
    # the small one carries its change.
    assert received == [
        {"seq": 100_001},
        {"seq": 100_002, "first": 100_002, "changes": [["workers", "marker", "insert"]]},
    ]


# -- incremental apply -----------------------------------------------------------------------


async def test_a_change_to_one_domain_leaves_other_cached_hosts_cached(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    await sql(store, add_worker("shop"), add_worker("blog"))
    hosts = [f"d{i}.example.org" for i in range(5)]
    await sql(store, *(add_domain(host, "shop") for host in hosts))
    await follower(gateway).refresh()
    assert [await route(gateway, host) for host in hosts] == ["shop"] * 5
    domains = gateway.domains
    assert domains is not None
    misses, queries = domains.misses, domains.queries

    await sql(store, f"UPDATE custom_domains SET worker = 'blog' WHERE domain = '{hosts[0]}'")
    await sql(store, add_domain("new.example.org", "blog"))  # not cached: nothing to re-read
    await follower(gateway).refresh()

    assert all(domains.cached(host) is not False for host in hosts)
    assert [await route(gateway, host) for host in hosts] == ["blog"] + ["shop"] * 4
    assert domains.misses == misses  # no request had to ask the registry
    assert domains.queries == queries + 1  # the changed host, re-read once


async def test_a_worker_change_touches_only_that_worker(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    await sql(store, add_worker("shop"), add_worker("blog"))
    await follower(gateway).refresh()
    assert await route(gateway, f"shop.{BASE}") == "shop"
    assert await route(gateway, f"gone.{BASE}") == "worker_not_found"
    table = gateway.table
    blog = table.workers["blog"]
    applied = follower(gateway).changes_applied

    await sql(
        store,
        "UPDATE workers SET upstreams = '[\"http://10.0.0.9:8080\"]' WHERE name = 'shop'",
        add_worker("gone"),
    )
    await follower(gateway).refresh()

    assert gateway.table is table  # changed in place, not rebuilt
    assert table.workers["blog"] is blog
    assert table.workers["shop"].upstreams == ("http://10.0.0.9:8080",)
    assert await route(gateway, f"gone.{BASE}") == "gone"  # the memo forgot the old answer
    assert follower(gateway).resyncs == 0
    assert follower(gateway).changes_applied == applied + 2


async def test_duplicate_and_late_notifications_are_harmless(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    await sql(store, add_worker("shop"))
    await sql(store, add_worker("blog"))
    follower(gateway).wake(2)
    follower(gateway).wake(1)  # out of order: the second one announces less
    await follower(gateway).refresh()
    assert follower(gateway).applied == 2
    statements = statements_of(gateway.registry)

    follower(gateway)._wake.clear()  # the follower's own task has not run since the wakes above
    for seq in (2, 1, 2):  # duplicates and late ones
        follower(gateway).wake(seq)

    assert not follower(gateway)._wake.is_set()  # none of them woke the follower
    assert follower(gateway).lag == 0
    # What a wake-up would do reads nothing: no sequence beyond what was applied was taken in.
    # (Without it, no statement could have been sent: nothing awaited since the recorder.)
    await follower(gateway).refresh(poll=False)
    assert follower(gateway).changes_applied == 2
    assert statements == []  # nothing was asked of the registry


async def test_a_pruned_log_ends_in_a_resync_with_nothing_lost(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    await sql(store, add_worker("shop"), add_domain("shop.example.org", "shop"))
    await sql(store, add_worker("blog"))
    await follower(gateway).refresh()
    assert await route(gateway, "shop.example.org") == "shop"  # cached
    await sql(
        store,
        "UPDATE custom_domains SET worker = 'blog'",
        add_worker("late"),
        "DELETE FROM workers WHERE name = 'shop'",
        # Pruned past what the process saw (in the same transaction, so that a notification
        # cannot get the process to read the entries first).
        "DELETE FROM registry_changes",
    )
    misses = gateway.domains.misses if gateway.domains else 0

    await follower(gateway).refresh()

    assert follower(gateway).resyncs == 1
    assert sorted(gateway.table.workers) == ["blog", "late"]
    assert gateway.domains is not None and gateway.domains.cached("shop.example.org") is not False
    assert await route(gateway, "shop.example.org") == "blog"
    # The resync re-read the cached host in place: the request was a hit, and the counter
    # kept its value (it used to restart from zero on a reload).
    assert gateway.domains.misses == misses


async def test_emptying_the_workers_table_leaves_exactly_the_rows_written_after(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    await sql(store, add_worker("shop"))
    await follower(gateway).refresh()
    postgres = store.dialect == "postgresql"
    await sql(store, "TRUNCATE workers CASCADE" if postgres else "DELETE FROM workers")
    await sql(store, add_worker("blog"))

    await follower(gateway).refresh()

    assert sorted(gateway.table.workers) == ["blog"]
    # A TRUNCATE names no key: the follower reloads every worker. SQLite logs each row.
    assert follower(gateway).resyncs == (1 if postgres else 0)


@pytest.mark.postgres
async def test_a_listener_outage_is_caught_up_from_the_log_with_nothing_lost(
    postgres_url: str,
) -> None:
    await upgrade(postgres_url)
    async with running(postgres_url) as app:
        assert app.store is not None and app.listener is not None
        await sql(app.store, add_worker("shop"))
        await until(lambda: "shop" in app.table.workers, "the NOTIFY")
        await sql(
            app.store,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        await until(lambda: app.listener is not None and not app.listener.connected, "outage")
        await sql(app.store, add_worker("blog"))  # announced to nobody

        await until(lambda: "blog" in app.table.workers, "the catch-up after reconnecting")

        assert app.listener.connected
        assert follower(app).resyncs == 0  # the log bridged the outage


async def test_sqlite_changes_arrive_by_the_version_poll(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    await upgrade(url)
    async with running(url, registry_poll_interval=0.05) as app:
        assert app.store is not None
        await sql(app.store, add_worker("shop"))
        await until(lambda: "shop" in app.table.workers, "the poll")
        assert follower(app).changes_applied == 1


# -- the property: incremental apply == full reload ------------------------------------------

# Few names, so that random operations keep meeting the same rows.
_NAMES = ("shop", "blog", "docs")
_HOSTS = ("a.example.org", "b.example.net", "shop.example.com")
_UPSTREAMS = ("http://10.0.0.1:8080", "http://10.0.0.2:8080/base")
_STATUSES = ("pending", "verified", "active", "failed")

_operations = st.one_of(
    st.tuples(st.just("add_worker"), st.sampled_from(_NAMES), st.sampled_from(_UPSTREAMS)),
    st.tuples(st.just("set_upstream"), st.sampled_from(_NAMES), st.sampled_from(_UPSTREAMS)),
    st.tuples(st.just("toggle"), st.sampled_from(_NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(_NAMES), st.sampled_from(_NAMES)),
    st.tuples(st.just("remove_worker"), st.sampled_from(_NAMES)),
    st.tuples(
        st.just("add_domain"),
        st.sampled_from(_HOSTS),
        st.sampled_from(_NAMES),
        st.sampled_from(_STATUSES),
    ),
    st.tuples(st.just("set_status"), st.sampled_from(_HOSTS), st.sampled_from(_STATUSES)),
    st.tuples(st.just("move_domain"), st.sampled_from(_HOSTS), st.sampled_from(_NAMES)),
    st.tuples(st.just("remove_domain"), st.sampled_from(_HOSTS)),
    st.tuples(st.just("remove_all_domains")),
    st.tuples(st.just("request"), st.sampled_from(_HOSTS + tuple(f"{n}.{BASE}" for n in _NAMES))),
    st.tuples(st.just("apply")),
    st.tuples(st.just("apply")),
)


async def _run_property(url: str, operations: list[tuple[str, ...]]) -> None:
    async with RegistryStore.from_url(url) as store:
        await sql(store, "DELETE FROM custom_domains", "DELETE FROM workers")
        async with running(url) as incremental:
            for operation in operations:
                if operation[0] == "request":
                    await route(incremental, operation[1])
                elif operation[0] == "apply":  # and ask for every host: all of them cached
                    await follower(incremental).refresh()
                    for host in (*_HOSTS, *(f"{name}.{BASE}" for name in _NAMES)):
                        await route(incremental, host)
                else:
                    with contextlib.suppress(sa.exc.IntegrityError):  # a duplicate, an FK
                        await sql(store, *write(operation))
            await follower(incremental).refresh()
            await assert_as_a_full_reload(
                incremental, url, (*_HOSTS, *(f"{name}.{BASE}" for name in _NAMES))
            )
            domains = incremental.domains
            assert domains is not None
            for host in _HOSTS:  # every cached answer is the registry's current one
                cached = domains.cached(host)
                if cached is not False:
                    assert cached == await store.lookup_domain(host), host


@settings_hypothesis(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(_operations, max_size=30))
@example(  # a cached host changes: its entry must be refreshed, not left stale
    operations=[
        ("add_worker", "shop", _UPSTREAMS[0]),
        ("add_domain", _HOSTS[0], "shop", "active"),
        ("apply",),
        ("set_status", _HOSTS[0], "failed"),
    ]
)
def test_incremental_apply_gives_what_a_full_reload_gives(
    registry_url: str, operations: list[tuple[str, ...]]
) -> None:
    upgrade_once(registry_url)
    asyncio.run(_run_property(registry_url, operations))
