"""Review of issue 12: what Postgres announces for transactions of every shape, and for a
hostile ``dispatcher.first_seq``.

Each payload must be either ``{"seq": N}`` or carry exactly the log entries ``first..N``: an
entry it names is one the log holds at that sequence, and it names every one in between. A
transaction's own announcement carries its own entries (never another's), and no setting
makes a commit fail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from tests.workers_registry.registry_kit import add_domain, add_worker, announced_up_to, sql
from workers_registry.store import RegistryStore

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def _settled(store: RegistryStore, heard: list[dict[str, Any]]) -> list[list[Any]]:
    """Wait for the announcement of the registry's version; the whole log, as payload rows."""
    await announced_up_to(store, heard)
    return [[c.seq, c.table, c.key, c.op] for c in await store.changes_after(0)]


def _assert_sound(payload: dict[str, Any], log: list[list[Any]]) -> None:
    if set(payload) == {"seq"}:
        return
    first, seq = payload["first"], payload["seq"]
    held = {entry[0]: entry[1:] for entry in log}
    assert 1 <= first <= seq and list(range(first, seq + 1)) == [
        s for s in range(first, seq + 1) if s in held
    ], payload
    assert payload["changes"] == [held[s] for s in range(first, seq + 1)], payload


@pytest.mark.parametrize("setting", ["0", "1", "2", "00", "000000000000000001"])
@pytest.mark.parametrize("scope", ["session", "transaction"])
async def test_a_hostile_first_seq_never_makes_a_payload_claim_what_the_log_does_not_hold(
    postgres_url: str, heard: list[dict[str, Any]], setting: str, scope: str
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"), add_worker("blog"), add_worker("docs"))
        await sql(store, "DELETE FROM registry_changes WHERE seq = 2")  # a gap (pruned)
        async with store.engine.begin() as connection:
            await connection.execute(
                sa.text("SELECT set_config('dispatcher.first_seq', :value, :local)"),
                {"value": setting, "local": scope == "transaction"},
            )
            await connection.execute(sa.text(add_worker("news")))
        log = await _settled(store, heard)

    assert [entry[2] for entry in log] == ["shop", "docs", "news"]  # committed
    assert heard[-1]["seq"] == 4
    _assert_sound(heard[-1], log)  # (the one before the gap was sound when it was sent)


async def test_transactions_of_every_shape_announce_their_own_entries(
    postgres_url: str, heard: list[dict[str, Any]]
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await sql(store, add_worker("shop"), add_domain("a.example.org", "shop"))
        async with store.engine.begin() as connection:  # executemany
            await connection.execute(
                sa.text("INSERT INTO workers (name, upstreams) VALUES (:n, '[\"http://h\"]')"),
                [{"n": f"w{i}"} for i in range(5)],
            )
        async with store.engine.begin() as connection:  # savepoints, kept and rolled back
            kept = await connection.begin_nested()
            await connection.execute(sa.text(add_worker("kept")))
            await kept.commit()
            lost = await connection.begin_nested()
            await connection.execute(sa.text(add_worker("lost")))
            await lost.rollback()
            await connection.execute(
                sa.text("UPDATE workers SET name = 'store' WHERE name = 'shop'")
            )
        await sql(store, "TRUNCATE workers CASCADE")

        # Concurrent writers: each transaction announces its own entries.
        async def write(name: str) -> None:
            async with store.engine.begin() as connection:
                await connection.execute(sa.text(add_worker(name)))
                await asyncio.sleep(0)  # (interleave)
                await connection.execute(sa.text(add_worker(name + "2")))

        await asyncio.gather(*(write(f"c{i}") for i in range(4)))
        log = await _settled(store, heard)

    assert len({payload["seq"] for payload in heard}) == len(heard)  # one per transaction
    for payload in heard:
        _assert_sound(payload, log)
    assert all("first" in payload for payload in heard)  # every one small enough to carry
    keys = [[c[1] for c in payload["changes"]] for payload in heard]
    assert all("lost" not in k for k in keys)  # the rolled-back savepoint
    assert all(len(k) == 2 and k[1] == k[0] + "2" for k in keys[-4:])
