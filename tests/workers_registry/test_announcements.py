"""Announcements that carry their changes (migration 0005), and the follower that uses them.

What Postgres sends is checked against the log it describes; what the follower does with an
announcement is checked on both backends by handing it the announcement directly (SQLite has
no NOTIFY, but the follower does not care where an announcement came from); a real listener
is checked end to end on Postgres. Hostile payloads: ``read_announcement`` keeps only what is
sound, and a sound-looking lie is caught by the confirmation against the log.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.state import DispatcherState
from tests.workers_registry.registry_kit import (
    BASE,
    add_domain,
    add_worker,
    announced_up_to,
    follower,
    migrate_to,
    route,
    running,
    sql,
    statements_of,
    until,
)
from workers_registry.announcements import Announcement, read_announcement
from workers_registry.migrate import upgrade
from workers_registry.store import Change, RegistryStore

pytestmark = pytest.mark.anyio


def _log_reads(statements: list[str]) -> int:
    return sum("FROM registry_changes" in statement for statement in statements)


async def _announcement(store: RegistryStore, after: int) -> Announcement:
    """What a notification of the entries after ``after`` would carry (read from the log)."""
    changes = tuple(await store.changes_after(after))
    return Announcement(changes[-1].seq, changes)


# -- what a payload may say -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param('{"seq": 42}', Announcement(42), id="sequence"),
        pytest.param(
            '{"seq": 8, "first": 7, "changes": [["workers", "shop", "update"],'
            ' ["custom_domains", "a.example.org", "delete"]]}',
            Announcement(
                8,
                (
                    Change(7, "workers", "shop", "update"),
                    Change(8, "custom_domains", "a.example.org", "delete"),
                ),
            ),
            id="changes",
        ),
        pytest.param(
            '{"seq": 3, "first": 3, "changes": [["custom_domains", null, "truncate"]]}',
            Announcement(3, (Change(3, "custom_domains", None, "truncate"),)),
            id="truncate",
        ),
        # A sequence with unsound changes keeps the sequence and drops every change (more in
        # test_unsound_changes_keep_the_sequence_alone).
        pytest.param(
            '{"seq": 8, "first": 7, "changes": [["workers", "shop", "update"]]}',
            Announcement(8),
            id="fewer changes than sequence numbers",
        ),
        pytest.param(
            '{"seq": 100, "first": 1, "changes": '
            + json.dumps([["workers", f"w{i}", "insert"] for i in range(100)])
            + "}",
            Announcement(100),
            id="more changes than any announcement carries",
        ),
    ],
)
def test_a_payload_gives_only_what_is_sound(payload: str, expected: Announcement) -> None:
    assert read_announcement(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        '{"seq": "42"}',
        '{"seq": -1}',
        '{"seq": true}',
        "[1]",
        "not json",
        '{"seq": 1' + " " * 8000 + "}",
    ],
    ids=["string", "negative", "boolean", "array", "garbage", "oversized"],
)
def test_a_payload_without_a_sound_sequence_gives_nothing(payload: str) -> None:
    assert read_announcement(payload) is None


@pytest.mark.parametrize(
    ("first", "changes"),
    [
        pytest.param(8, [], id="first after seq"),
        pytest.param(0, [], id="first before one"),
        pytest.param(True, [["workers", "a", "insert"]], id="boolean first"),
        pytest.param(7, [["pg_authid", "a", "insert"]], id="another table"),
        pytest.param(7, [["workers", "a", "drop"]], id="another operation"),
        pytest.param(7, [["workers", None, "insert"]], id="no key outside a truncate"),
        pytest.param(7, [["workers", 5, "insert"]], id="a key that is not text"),
        pytest.param(7, [[["workers"], "a", "insert"]], id="a table that is a list"),
        pytest.param(7, [["workers", "a", {"op": "insert"}]], id="an operation that is an object"),
        pytest.param(7, [["workers", "a"]], id="a short entry"),
    ],
)
def test_unsound_changes_keep_the_sequence_alone(first: Any, changes: list[list[Any]]) -> None:
    payload = json.dumps({"seq": 7, "first": first, "changes": changes})

    assert read_announcement(payload) == Announcement(7)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.sampled_from(["workers", "x", "update"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@given(
    seq=_json | st.integers(0, 12),
    first=_json | st.integers(1, 12),
    changes=_json,
    extra=st.dictionaries(st.text(max_size=5), _json, max_size=2),
)
def test_any_payload_is_read_without_error_and_consistently(
    seq: Any, first: Any, changes: Any, extra: dict[str, Any]
) -> None:
    payload = json.dumps({**extra, "seq": seq, "first": first, "changes": changes})

    announcement = read_announcement(payload)

    if announcement is not None:
        assert announcement.seq == seq
        # Either nothing, or one entry per sequence number from ``first`` to ``seq``.
        carried = [change.seq for change in announcement.changes]
        assert carried == [] or carried == list(range(first, seq + 1))


# -- what Postgres announces -----------------------------------------------------------------


@pytest.mark.postgres
async def test_a_small_transaction_announces_exactly_its_log_entries(
    postgres_url: str, heard: list[dict[str, Any]]
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"), add_domain("shop.example.org", "shop"))
        # A rename: the new key, the old one and the domain the cascade moved.
        await sql(store, "UPDATE workers SET name = 'store' WHERE name = 'shop'")
        await announced_up_to(store, heard)
        log = await store.changes_after(0)

    carried = [
        read_announcement(json.dumps(payload)) for payload in heard
    ]  # as the follower reads them
    assert [announcement.changes if announcement else None for announcement in carried] == [
        tuple(log[:2]),
        tuple(log[2:]),
    ]
    assert [payload["first"] for payload in heard] == [1, 3]
    assert len(log) == 5


@pytest.mark.postgres
async def test_a_rolled_back_savepoint_is_not_announced(
    postgres_url: str, heard: list[dict[str, Any]]
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"))
        async with store.engine.begin() as connection:
            savepoint = await connection.begin_nested()
            await connection.exec_driver_sql(add_worker("ghost"))
            await savepoint.rollback()
            await connection.exec_driver_sql(add_worker("blog"))
        await announced_up_to(store, heard)

    assert heard[-1] == {"seq": 2, "first": 2, "changes": [["workers", "blog", "insert"]]}


@pytest.mark.postgres
async def test_a_transaction_of_many_rows_is_announced_by_its_sequence_alone(
    postgres_url: str, heard: list[dict[str, Any]]
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(
            store,
            add_worker("shop"),
            "INSERT INTO custom_domains (domain, worker, status)"
            " SELECT 'd' || i || '.example.org', 'shop', 'active' FROM generate_series(1, 32) i",
        )
        long_key = "x" * 300 + ".example.org"
        await sql(store, *(add_domain(f"{i}{long_key}", "shop") for i in range(30)))
        await announced_up_to(store, heard)

    # 33 rows: over the count; 30 long keys: over the size Postgres allows a payload.
    assert heard == [{"seq": 33}, {"seq": 63}]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "setting",
    ["", "garbage", "-5", "1e3", "99999999999999999999999", "1'; DROP TABLE workers; --", "5"],
)
async def test_a_hostile_session_setting_never_breaks_a_commit(
    postgres_url: str, heard: list[dict[str, Any]], setting: str
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"))
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql(
                "SELECT set_config('dispatcher.first_seq', $1, false)", (setting,)
            )
            await connection.exec_driver_sql(add_worker("blog"))
            await connection.exec_driver_sql(add_worker("docs"))
        await announced_up_to(store, heard)
        log = await store.changes_after(1)

    assert [change.key for change in log] == ["blog", "docs"]  # committed, and logged
    announced = read_announcement(json.dumps(heard[-1]))
    assert announced is not None and announced.seq == 3
    # The setting cannot make an announcement say something the log does not.
    assert announced.changes in ((), tuple(log))


@pytest.mark.postgres
async def test_a_downgrade_to_0004_announces_the_sequence_alone_again(
    postgres_url: str, heard: list[dict[str, Any]]
) -> None:
    await migrate_to(postgres_url, "0004", down=True)
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"))
        await announced_up_to(store, heard)

    assert heard == [{"seq": 1}]


# -- what the follower does with them --------------------------------------------------------


@pytest.fixture
async def deaf(gateway: DispatcherState) -> DispatcherState:
    """``gateway`` without its Postgres listener: it hears only what the test hands it."""
    if gateway.listener is not None:
        await gateway.listener.aclose()
    return gateway


async def test_announced_changes_are_applied_without_reading_the_log(
    store: RegistryStore, deaf: DispatcherState
) -> None:
    await sql(store, add_worker("shop"), add_domain("shop.example.org", "shop"))
    await follower(deaf).refresh()
    assert await route(deaf, "shop.example.org") == "shop"  # cached
    applied = follower(deaf).applied
    await sql(
        store,
        add_worker("blog", "http://10.0.0.7:8080"),
        "UPDATE custom_domains SET worker = 'blog'",
    )
    announcement = await _announcement(store, applied)
    sent = statements_of(deaf.registry)

    follower(deaf).heard(announcement)
    await follower(deaf).refresh(poll=False)  # as the notification's wake-up does

    assert deaf.table.workers["blog"].upstreams == ("http://10.0.0.7:8080",)
    assert await route(deaf, "shop.example.org") == "blog"
    assert follower(deaf).applied == announcement.seq
    assert _log_reads(sent) == 0  # the keys came with the notification
    assert len(sent) == 2  # one read of the worker, one of the cached domain
    assert follower(deaf).confirmed == applied  # not yet checked against the log

    assert await follower(deaf).confirm()

    assert _log_reads(sent) == 1
    assert follower(deaf).confirmed == announcement.seq
    assert follower(deaf).resyncs == 0


async def test_announcements_out_of_order_are_applied_in_order(
    store: RegistryStore, deaf: DispatcherState
) -> None:
    applied = follower(deaf).applied
    await sql(store, add_worker("shop"))
    await sql(store, "UPDATE workers SET enabled = false WHERE name = 'shop'")
    first, second = (await store.changes_after(applied))[:2]
    sent = statements_of(deaf.registry)

    follower(deaf).heard(Announcement(second.seq, (second,)))
    follower(deaf).heard(Announcement(first.seq, (first,)))  # late
    follower(deaf).heard(Announcement(first.seq, (first,)))  # and again
    await follower(deaf).refresh()

    assert follower(deaf).applied == second.seq
    assert deaf.table.workers["shop"].enabled is False
    assert _log_reads(sent) == 0
    assert follower(deaf).changes_applied == 2


async def test_an_announcement_after_a_gap_waits_for_the_log_to_fill_it(
    store: RegistryStore, deaf: DispatcherState
) -> None:
    applied = follower(deaf).applied
    await sql(store, add_worker("shop"))  # announced to nobody (a lost notification)
    await sql(store, add_worker("blog"))
    announcement = await _announcement(store, applied + 1)
    sent = statements_of(deaf.registry)

    follower(deaf).heard(announcement)
    await follower(deaf).refresh()

    assert sorted(deaf.table.workers) == ["blog", "shop"]
    assert _log_reads(sent) == 1  # the gap, read from the log (it holds the rest too)
    assert follower(deaf).confirmed == follower(deaf).applied
    assert follower(deaf).resyncs == 0


@pytest.mark.parametrize("lie", ["another key", "a change that never happened"])
async def test_an_announcement_the_log_does_not_bear_out_gives_way_to_the_log(
    store: RegistryStore, deaf: DispatcherState, lie: str
) -> None:
    await sql(store, add_worker("shop"), add_worker("blog"))
    await follower(deaf).refresh()
    applied = follower(deaf).applied
    if lie == "another key":  # shop changed; the payload names blog
        await sql(store, "UPDATE workers SET enabled = false WHERE name = 'shop'")
    forged = Announcement(applied + 1, (Change(applied + 1, "workers", "blog", "update"),))

    follower(deaf).heard(forged)
    await follower(deaf).refresh()
    assert await follower(deaf).confirm()

    # No full load: the log is followed from the last entry it bore out.
    assert (follower(deaf).refuted, follower(deaf).resyncs) == (1, 0)
    assert deaf.table.workers["shop"].enabled is (lie != "another key")
    assert follower(deaf).confirmed == follower(deaf).applied
    assert follower(deaf).applied == await store.version()
    assert follower(deaf).head == follower(deaf).applied

    # What really comes next is applied, not taken for a duplicate of the lie.
    await sql(store, add_worker("docs"))
    follower(deaf).heard(await _announcement(store, follower(deaf).applied))
    await follower(deaf).refresh()
    assert "docs" in deaf.table.workers


@pytest.mark.postgres
async def test_a_running_dispatcher_applies_notified_changes_without_reading_the_log(
    postgres_url: str,
) -> None:
    await upgrade(postgres_url)
    async with running(postgres_url) as app:
        assert app.store is not None
        sent = statements_of(app.store)
        async with RegistryStore.from_url(postgres_url) as writer:
            await sql(writer, add_worker("shop"))
            await until(lambda: "shop" in app.table.workers, "the NOTIFY")
            await sql(writer, add_domain(f"a.{BASE}.example.org", "shop"))
            await until(lambda: follower(app).applied == 2, "the second NOTIFY")

        assert await route(app, f"shop.{BASE}") == "shop"
        assert _log_reads(sent) == 0
        assert await follower(app).confirm()
        assert _log_reads(sent) == 1  # the confirmation's (the recorder hears the follower)
        assert follower(app).confirmed == 2
        assert follower(app).resyncs == 0


async def test_a_flood_of_announcements_keeps_a_bounded_memory(
    store: RegistryStore, deaf: DispatcherState
) -> None:
    applied = follower(deaf).applied
    for seq in range(applied + 2, applied + 10_000):  # none of them can be applied yet
        follower(deaf).heard(Announcement(seq, (Change(seq, "workers", "x", "insert"),)))

    assert len(follower(deaf)._announced) <= 256
    await sql(store, add_worker("shop"))
    await asyncio.wait_for(follower(deaf).refresh(), 10)
    assert await follower(deaf).confirm()

    assert "shop" in deaf.table.workers
    assert follower(deaf).applied == follower(deaf).head == await store.version()


async def test_a_sequence_announced_beyond_the_registry_costs_no_resync(
    store: RegistryStore, deaf: DispatcherState
) -> None:
    await sql(store, add_worker("shop"))
    await follower(deaf).refresh()

    follower(deaf).wake(10**12)  # a forged NOTIFY: {"seq": 1000000000000}
    await follower(deaf).refresh()

    assert follower(deaf).head == follower(deaf).applied == await store.version()
    assert follower(deaf).resyncs == 0
    await sql(store, add_worker("blog"))  # and what comes next is still applied
    await follower(deaf).refresh()
    assert "blog" in deaf.table.workers


async def test_a_forged_announcement_is_corrected_by_itself_within_the_poll_interval(
    store: RegistryStore,
) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    async with running(url, deaf=True, registry_poll_interval=0.05) as app:
        await sql(store, add_worker("shop"))
        await until(lambda: "shop" in app.table.workers, "the poll")
        applied = follower(app).applied
        forged = Change(applied + 1, "workers", "ghost", "insert")  # nothing has this seq

        follower(app).heard(Announcement(applied + 1, (forged,)))

        version = await store.version()
        await until(
            lambda: (
                follower(app).refuted == 1
                and follower(app).applied == follower(app).confirmed == version
                and follower(app).head == version
            ),
            "the confirmation",
        )
        assert follower(app).resyncs == 0
        assert sorted(app.table.workers) == ["shop"]
