"""Review of issue 12: the follower fed announcements as a hostile network would deliver them.

Real changes are written with plain SQL; what each transaction would announce is read from
the log and delivered late, twice, out of order or never, mixed with forged announcements (a
wrong key at the next sequence, a sequence beyond the registry). Whatever the order, once the
follower has confirmed and polled, what it holds is what a full reload gives; and forged
messages cost at most one resync each (no storm).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st

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
    upgrade_once,
    write,
)
from workers_registry.announcements import Announcement
from workers_registry.changes import RegistryFollower
from workers_registry.store import Change, RegistryStore

_NAMES = ("shop", "blog", "docs")
_HOSTS = ("a.example.org", "b.example.net")
_ALL_HOSTS = (*_HOSTS, *(f"{name}.{BASE}" for name in _NAMES))

_writes = st.one_of(
    st.tuples(st.just("add_worker"), st.sampled_from(_NAMES)),
    st.tuples(st.just("toggle"), st.sampled_from(_NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(_NAMES), st.sampled_from(_NAMES)),
    st.tuples(st.just("remove_worker"), st.sampled_from(_NAMES)),
    st.tuples(st.just("add_domain"), st.sampled_from(_HOSTS), st.sampled_from(_NAMES)),
    st.tuples(st.just("move_domain"), st.sampled_from(_HOSTS), st.sampled_from(_NAMES)),
    st.tuples(st.just("remove_domain"), st.sampled_from(_HOSTS)),
    st.tuples(st.just("remove_all_domains")),
)
_network = st.one_of(
    st.tuples(st.just("deliver"), st.integers(0, 30)),  # a queued announcement, maybe again
    st.tuples(st.just("drop"), st.integers(0, 30)),
    st.tuples(st.just("forge_next"), st.sampled_from(_NAMES + _HOSTS)),
    st.tuples(st.just("forge_future"), st.integers(1, 10**6)),
    st.tuples(st.just("refresh")),
    st.tuples(st.just("confirm")),
    st.tuples(st.just("request"), st.sampled_from(_ALL_HOSTS)),
)


async def _run(url: str, steps: list[tuple[str, ...]]) -> None:
    async with RegistryStore.from_url(url) as store:
        await sql(store, "DELETE FROM custom_domains", "DELETE FROM workers")
        async with running(url, deaf=True) as gateway:  # it hears only what the test delivers
            queue: list[Announcement] = []
            forged = 0
            for step in steps:
                it = follower(gateway)
                match step:
                    case ("deliver", index) if queue:
                        it.heard(queue[index % len(queue)])
                    case ("drop", index) if queue:
                        queue.pop(index % len(queue))
                    case ("forge_next", key):
                        table = "workers" if key in _NAMES else "custom_domains"
                        seq = it.applied + 1
                        it.heard(Announcement(seq, (Change(seq, table, key, "update"),)))
                        forged += 1
                    case ("forge_future", ahead):
                        seq = it.applied + ahead
                        it.heard(Announcement(seq, (Change(seq, "workers", "ghost", "insert"),)))
                        forged += 1
                    case ("refresh",):
                        await it.refresh(poll=False)
                    case ("confirm",):
                        assert await it.confirm()
                    case ("request", host):
                        await route(gateway, host)
                    case _ if step[0] not in ("deliver", "drop"):
                        before = await store.version()
                        with contextlib.suppress(sa.exc.IntegrityError):
                            await sql(store, *write(step))
                        changes = tuple(await store.changes_after(before))
                        if changes:
                            queue.append(Announcement(changes[-1].seq, changes))
            for host in _ALL_HOSTS:  # every host cached: each must end up current
                await route(gateway, host)
            assert await follower(gateway).confirm()
            assert await follower(gateway).refresh()
            assert follower(gateway).resyncs <= forged

            await assert_as_a_full_reload(gateway, url, _ALL_HOSTS)


@settings_hypothesis(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.one_of(_writes, _network), max_size=30))
def test_any_delivery_of_announcements_ends_where_a_full_reload_does(
    registry_url: str, steps: list[tuple[str, ...]]
) -> None:
    upgrade_once(registry_url)
    asyncio.run(_run(registry_url, steps))


@pytest.mark.anyio
async def test_a_forged_announcement_that_guesses_the_next_key_is_corrected_by_the_confirmation(
    store: RegistryStore,
) -> None:
    """The payload names the key the next real change will have, and arrives before it: the
    log bears the entry out, but the row was read before the change existed."""
    url = store.engine.url.render_as_string(hide_password=False)
    await sql(store, add_worker("shop"), add_domain("a.example.org", "shop"))
    async with running(url, deaf=True) as gateway:
        it = follower(gateway)
        assert await route(gateway, "a.example.org") == "shop"  # cached
        seq = it.applied + 1
        it.heard(
            Announcement(
                seq + 1,
                (
                    Change(seq, "workers", "shop", "update"),
                    Change(seq + 1, "custom_domains", "a.example.org", "update"),
                ),
            )
        )
        await it.refresh(poll=False)  # applied: both read as they are now
        await sql(  # the real change, announced with the same entries (a duplicate)
            store,
            "UPDATE workers SET enabled = false WHERE name = 'shop'",
            "UPDATE custom_domains SET status = 'failed' WHERE domain = 'a.example.org'",
        )

        assert await it.confirm()
        assert await it.refresh()

        assert gateway.table.workers["shop"].enabled is False
        assert await route(gateway, "a.example.org") != "shop"
        assert it.confirmed == it.applied == await store.version()


@pytest.mark.anyio
async def test_the_follow_task_survives_a_failure_it_did_not_foresee(store: RegistryStore) -> None:
    """Whatever goes wrong applying one change (here: what it is handed to raises once), the
    task that follows the registry must not end: a dead one serves what it holds for good
    and still reports healthy."""
    failures = []

    def on_worker(name: str, worker: object) -> None:
        if name == "boom" and not failures:
            failures.append(name)
            raise RuntimeError("a consumer's bug")

    it = RegistryFollower(
        store, poll_interval=0.05, on_load=lambda snapshot: None, on_worker=on_worker
    )
    await it.start()
    try:
        await sql(store, add_worker("boom"))
        await until(lambda: failures, "the failure")
        await sql(store, add_worker("shop"))
        version = await store.version()
        await until(lambda: it.applied == version, "the changes after it")
        assert it.healthy
    finally:
        await it.aclose()
