"""RegistryStore against real databases: SQLite files and a throwaway Postgres cluster."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from structlog.testing import capture_logs

from dispatcher.errors import (
    Conflict,
    DomainNotFound,
    InvalidRequest,
    RegistryUnavailable,
    WorkerNotFound,
)
from tests.postgres import PostgresServer, settle_aiosqlite_threads
from workers_registry.entries import ENTRY_FIELDS, WorkerEntry
from workers_registry.migrate import upgrade
from workers_registry.models import (
    CustomDomainCreate,
    CustomDomainPatch,
    DomainStatus,
    Worker,
    WorkerCreate,
    WorkerSpec,
)
from workers_registry.store import RegistryStore, create_registry_engine, for_writing
from workers_registry.tables import REGISTRY_CHANNEL

pytestmark = pytest.mark.anyio


def shop(name: str = "shop", **fields: Any) -> WorkerCreate:
    fields.setdefault("upstreams", ["http://10.0.0.6:8080", "http://10.0.0.5:8080"])
    return WorkerCreate(name=name, **fields)


def entry(worker: Worker) -> WorkerEntry:
    """The data plane's record of ``worker`` (as the admin API shows it)."""
    fields = {name: getattr(worker, name) for name in ENTRY_FIELDS}
    return WorkerEntry(**{**fields, "upstreams": tuple(worker.upstreams)})


def domain(name: str, worker: str = "shop", status: str = "active") -> CustomDomainCreate:
    return CustomDomainCreate(domain=name, worker=worker, status=DomainStatus(status))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port nothing listens on (bound, never listening, so nobody takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that accepts TCP connections and never says a word (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# -- workers -------------------------------------------------------------------------------


async def test_add_worker_stores_every_field(store: RegistryStore) -> None:
    spec = shop(
        enabled=False,
        preserve_host=True,
        max_body_bytes=5_000_000_000,
        upstream_timeout=2.5,
        max_concurrency=7,
        tags={"team": "web", "tier": "gold"},
    )

    added = await store.add_worker(spec)

    assert added.model_dump(exclude={"created_at", "updated_at"}) == spec.model_dump()
    assert added.upstreams == ["http://10.0.0.6:8080", "http://10.0.0.5:8080"]  # order kept
    assert added.created_at.tzinfo is not None
    assert added.created_at == added.updated_at
    assert await store.get_worker("shop") == added


async def test_get_unknown_worker_returns_none(store: RegistryStore) -> None:
    assert await store.get_worker("ghost") is None


async def test_list_workers_is_ordered_by_name(store: RegistryStore) -> None:
    for name in ("mid", "zed", "abc"):
        await store.add_worker(shop(name))

    assert [worker.name for worker in await store.list_workers()] == ["abc", "mid", "zed"]


async def test_adding_a_taken_name_is_a_conflict_and_changes_nothing(
    store: RegistryStore,
) -> None:
    original = await store.add_worker(shop())
    version = await store.version()

    with pytest.raises(Conflict) as caught:
        await store.add_worker(shop(upstreams=["http://elsewhere"]))

    assert caught.value.message == "Worker 'shop' already exists"
    assert await store.get_worker("shop") == original
    assert await store.version() == version


async def test_replace_worker_changes_fields_and_keeps_created_at(store: RegistryStore) -> None:
    original = await store.add_worker(shop(tags={"a": "1"}))

    replaced = await store.replace_worker(
        "shop", WorkerSpec(upstreams=["https://new.internal"], max_concurrency=3)
    )

    assert replaced.name == "shop"
    assert replaced.upstreams == ["https://new.internal"]
    assert replaced.max_concurrency == 3
    assert replaced.tags == {}  # a replacement, not a merge
    assert replaced.created_at == original.created_at
    assert replaced.updated_at > original.updated_at
    assert await store.get_worker("shop") == replaced


async def test_replace_unknown_worker_raises_worker_not_found(store: RegistryStore) -> None:
    with pytest.raises(WorkerNotFound) as caught:
        await store.replace_worker("ghost", WorkerSpec(upstreams=["http://a"]))
    assert caught.value.message == "Worker 'ghost' does not exist"
    assert await store.get_worker("ghost") is None


async def test_remove_worker(store: RegistryStore) -> None:
    await store.add_worker(shop())

    await store.remove_worker("shop")

    assert await store.get_worker("shop") is None
    with pytest.raises(WorkerNotFound) as caught:
        await store.remove_worker("shop")
    assert caught.value.message == "Worker 'shop' does not exist"


async def test_removing_a_worker_removes_its_domains(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_worker(shop("blog"))
    await store.add_domain(domain("shop.example.org"))
    await store.add_domain(domain("www.shop.example.org"))
    await store.add_domain(domain("blog.example.org", worker="blog"))

    await store.remove_worker("shop")

    assert [entry.domain for entry in await store.list_domains()] == ["blog.example.org"]
    assert await store.lookup_domain("shop.example.org") is None


# -- custom domains ------------------------------------------------------------------------


async def test_add_domain_and_read_it_back(store: RegistryStore) -> None:
    await store.add_worker(shop())

    added = await store.add_domain(domain("Shop.Example.ORG.", status="pending"))

    assert (added.domain, added.worker, added.status) == ("shop.example.org", "shop", "pending")
    assert added.created_at.tzinfo is not None
    assert await store.get_domain("shop.example.org") == added
    assert await store.get_domain("SHOP.example.org.") == added  # operators' spelling
    assert await store.get_domain("other.example.org") is None


async def test_adding_a_registered_domain_is_a_conflict(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_worker(shop("blog"))
    original = await store.add_domain(domain("shop.example.org"))

    with pytest.raises(Conflict) as caught:
        await store.add_domain(domain("shop.example.org", worker="blog"))

    assert caught.value.message == "Domain 'shop.example.org' is already registered"
    assert await store.get_domain("shop.example.org") == original


async def test_domain_for_an_unknown_worker_is_invalid_and_not_written(
    store: RegistryStore,
) -> None:
    version = await store.version()

    with pytest.raises(InvalidRequest) as caught:
        await store.add_domain(domain("shop.example.org", worker="ghost"))

    assert caught.value.details == [{"field": "worker", "message": "Worker 'ghost' does not exist"}]
    assert await store.get_domain("shop.example.org") is None
    assert await store.version() == version


async def test_update_domain_changes_status_and_worker(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_worker(shop("blog"))
    original = await store.add_domain(domain("shop.example.org", status="pending"))

    updated = await store.update_domain(
        "shop.example.org", CustomDomainPatch(status=DomainStatus.ACTIVE, worker="blog")
    )

    assert (updated.worker, updated.status) == ("blog", "active")
    assert updated.created_at == original.created_at
    assert updated.updated_at > original.updated_at
    assert await store.get_domain("shop.example.org") == updated


async def test_update_domain_with_only_a_status_keeps_the_worker(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_domain(domain("shop.example.org", status="pending"))

    updated = await store.set_domain_status("shop.example.org", DomainStatus.FAILED)

    assert (updated.worker, updated.status) == ("shop", "failed")


async def test_update_domain_to_an_unknown_worker_is_invalid_and_changes_nothing(
    store: RegistryStore,
) -> None:
    await store.add_worker(shop())
    original = await store.add_domain(domain("shop.example.org"))

    with pytest.raises(InvalidRequest) as caught:
        await store.update_domain("shop.example.org", CustomDomainPatch(worker="ghost"))

    assert caught.value.details == [{"field": "worker", "message": "Worker 'ghost' does not exist"}]
    assert await store.get_domain("shop.example.org") == original


async def test_update_unknown_domain_raises_domain_not_found(store: RegistryStore) -> None:
    await store.add_worker(shop())
    for patch in (CustomDomainPatch(status=DomainStatus.ACTIVE), CustomDomainPatch()):
        with pytest.raises(DomainNotFound) as caught:
            await store.update_domain("ghost.example.org", patch)
        assert caught.value.message == "Domain 'ghost.example.org' is not registered"


async def test_empty_patch_returns_the_domain_unchanged(store: RegistryStore) -> None:
    await store.add_worker(shop())
    original = await store.add_domain(domain("shop.example.org"))

    assert await store.update_domain("shop.example.org", CustomDomainPatch()) == original


async def test_remove_domain(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_domain(domain("shop.example.org"))

    await store.remove_domain("shop.example.org")

    assert await store.get_domain("shop.example.org") is None
    assert await store.get_worker("shop") is not None
    with pytest.raises(DomainNotFound) as caught:
        await store.remove_domain("shop.example.org")
    assert caught.value.message == "Domain 'shop.example.org' is not registered"


async def test_list_domains_is_ordered_and_filters_by_worker(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_worker(shop("blog"))
    await store.add_domain(domain("z.example.org"))
    await store.add_domain(domain("a.example.org"))
    await store.add_domain(domain("blog.example.org", worker="blog"))

    everything = [entry.domain for entry in await store.list_domains()]
    of_shop = [entry.domain for entry in await store.list_domains(worker="shop")]

    assert everything == ["a.example.org", "blog.example.org", "z.example.org"]
    assert of_shop == ["a.example.org", "z.example.org"]
    assert await store.list_domains(worker="ghost") == []


async def test_lookup_domain_returns_the_status_so_callers_can_filter(
    store: RegistryStore,
) -> None:
    await store.add_worker(shop())
    await store.add_domain(domain("shop.example.org", status="pending"))

    pending = await store.lookup_domain("shop.example.org")
    await store.set_domain_status("shop.example.org", "active")
    active = await store.lookup_domain("shop.example.org")

    assert pending is not None
    assert (pending.worker, pending.status, pending.routable) == ("shop", "pending", False)
    assert active is not None
    assert (active.status, active.routable) == ("active", True)
    assert await store.lookup_domain("unknown.example.org") is None


async def test_lookup_domain_is_a_single_statement(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_domain(domain("shop.example.org"))
    await store.lookup_domain("shop.example.org")  # warm the pool
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engines = [engine.sync_engine for engine in store.engines]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        found = await store.lookup_domain("shop.example.org")
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)

    assert found is not None
    assert len(statements) == 1, statements
    assert statements[0].lstrip().upper().startswith("SELECT")


# -- the version counter -------------------------------------------------------------------


async def test_every_write_bumps_the_version(store: RegistryStore) -> None:
    steps = [
        lambda: store.add_worker(shop()),
        lambda: store.replace_worker("shop", WorkerSpec(upstreams=["http://b"])),
        lambda: store.add_domain(domain("shop.example.org")),
        lambda: store.update_domain("shop.example.org", CustomDomainPatch(status="failed")),
        lambda: store.set_domain_status("shop.example.org", "active"),
        lambda: store.remove_domain("shop.example.org"),
        lambda: store.remove_worker("shop"),
    ]
    version = await store.version()
    assert version == 0

    for step in steps:
        await step()
        assert await store.version() == version + 1
        version += 1


async def test_cascaded_deletes_count_as_changes(store: RegistryStore) -> None:
    await store.add_worker(shop())
    await store.add_domain(domain("a.example.org"))
    await store.add_domain(domain("b.example.org"))
    version = await store.version()

    await store.remove_worker("shop")

    assert await store.version() == version + 3  # the worker and both of its domains


async def test_plain_sql_changes_bump_the_version(store: RegistryStore) -> None:
    await store.add_worker(shop())
    version = await store.version()
    statements = [
        "UPDATE workers SET enabled = false WHERE name = 'shop'",
        "INSERT INTO custom_domains (domain, worker, status)"
        " VALUES ('shop.example.org', 'shop', 'active')",
        "UPDATE custom_domains SET status = 'failed' WHERE domain = 'shop.example.org'",
        "DELETE FROM custom_domains WHERE domain = 'shop.example.org'",
    ]

    for statement in statements:
        async with store.engine.begin() as connection:
            await connection.execute(sa.text(statement))
        assert await store.version() == version + 1, statement
        version += 1

    worker = await store.get_worker("shop")
    assert worker is not None
    assert worker.enabled is False


async def test_load_workers_returns_the_version_with_every_worker(store: RegistryStore) -> None:
    assert await store.load_workers() == (0, [])
    await store.add_worker(shop("zed"))
    await store.add_worker(
        shop(
            "abc",
            enabled=False,
            preserve_host=True,
            max_body_bytes=2**40,
            upstream_timeout=2.5,
            max_concurrency=7,
            rate_limit=0.5,
            rate_burst=3,
            client_rate_limit=1e6,
            tags={"team": "web"},
        )
    )

    version, loaded = await store.load_workers()

    assert version == await store.version() == 2
    assert [worker.name for worker in loaded] == ["abc", "zed"]
    assert loaded == [entry(worker) for worker in await store.list_workers()]
    assert await store.workers_named({"zed", "abc", "ghost"}) in (loaded, loaded[::-1])


async def test_rows_that_fail_validation_are_skipped_not_fatal(store: RegistryStore) -> None:
    await store.add_worker(shop("good"))
    async with store.engine.begin() as connection:
        await connection.execute(
            sa.text("INSERT INTO workers (name, upstreams) VALUES ('bad', '[\"ftp://x\"]')")
        )

    with capture_logs() as logs:
        version, loaded = await store.load_workers()
        named = await store.workers_named(["bad", "good"])

    assert [worker.name for worker in loaded] == [worker.name for worker in named] == ["good"]
    assert version == 2
    skipped = [log for log in logs if log["event"] == "registry.invalid_worker_row"]
    assert [(log["worker"], log["log_level"]) for log in skipped] == [("bad", "warning")] * 2


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        pytest.param(
            "upstreams = '[\"HTTP://Shop.Internal:8080/app/\"]'",
            {"upstreams": ("http://shop.internal:8080/app",)},
            id="uncanonical-url-read-in-canonical-form",
        ),
        pytest.param("upstreams = '[]'", None, id="no-upstream"),
        pytest.param("upstreams = '\"http://x.internal\"'", None, id="upstreams-not-a-list"),
        pytest.param("upstreams = '[8080]'", None, id="url-not-a-string"),
        pytest.param(
            "upstreams = '[" + ", ".join(['"http://x.internal"'] * 65) + "]'",
            None,
            id="too-many-upstreams",
        ),
        pytest.param("upstreams = '[\"http://x.internal/?q\"]'", None, id="url-with-query"),
        pytest.param("max_concurrency = 0", None, id="concurrency-out-of-range"),
        pytest.param("max_body_bytes = -1", None, id="negative-body-limit"),
        pytest.param("upstream_timeout = 86401", None, id="timeout-out-of-range"),
        pytest.param("rate_burst = 5", None, id="burst-without-rate"),
        pytest.param(
            "rate_limit = 2, rate_burst = 5",
            {"rate_limit": 2.0, "rate_burst": 5},
            id="burst-with-rate",
        ),
        pytest.param("client_rate_limit = 0", None, id="client-rate-zero"),
        pytest.param("client_rate_limit = 1000001", None, id="client-rate-out-of-range"),
    ],
)
async def test_rows_written_around_the_store_read_as_pydantic_reads_them(
    store: RegistryStore, columns: str, expected: dict[str, Any] | None
) -> None:
    """Every value of a row is hostile: what the lean reader makes of a row written with
    plain SQL is what the pydantic ``Worker`` makes of it (converted, or skipped)."""
    await store.add_worker(shop("edited", upstreams=["http://10.0.0.6:8080"]))
    async with store.engine.begin() as connection:
        await connection.execute(sa.text(f"UPDATE workers SET {columns} WHERE name = 'edited'"))

    _, loaded = await store.load_workers()
    named = await store.workers_named(["edited"])
    listed = await store.list_workers()

    assert loaded == named == [entry(worker) for worker in listed]
    if expected is None:
        assert loaded == []
    else:
        stored = {"name": "edited", "upstreams": ("http://10.0.0.6:8080",), **expected}
        assert loaded == [WorkerEntry(**stored)]


@pytest.mark.parametrize(
    ("column", "text"),
    [
        pytest.param("upstreams", "not json", id="upstreams-not-json"),
        pytest.param("upstreams", "[" * 100_000 + "]" * 100_000, id="upstreams-nested-too-deep"),
        pytest.param("upstreams", '["http://a.internal"', id="upstreams-cut-short"),
        pytest.param("tags", "{", id="tags-not-json"),
    ],
)
async def test_json_text_that_does_not_parse_costs_its_row_only(
    tmp_path: Path, column: str, text: str
) -> None:
    # SQLite keeps JSON as text that plain SQL may set to anything (Postgres' jsonb refuses
    # it on write): such a row is skipped like any invalid row, never the whole read.
    url = f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    await upgrade(url)
    async with RegistryStore.from_url(url) as store:
        await store.add_worker(shop("good"))
        await store.add_worker(shop("edited"))
        async with store.engine.begin() as connection:
            await connection.execute(
                sa.text(f"UPDATE workers SET {column} = :text WHERE name = 'edited'"),
                {"text": text},
            )

        with capture_logs() as logs:
            _, loaded = await store.load_workers()
            listed = await store.list_workers()
            named = await store.workers_named(["edited", "good"])

    await settle_aiosqlite_threads()
    assert [worker.name for worker in listed] == ["good"]
    # The data plane reads no tags: a worker whose tags are broken still routes.
    routed = ["edited", "good"] if column == "tags" else ["good"]
    assert [entry.name for entry in loaded] == sorted(entry.name for entry in named) == routed
    assert {log["worker"] for log in logs if log["event"] == "registry.invalid_worker_row"} == {
        "edited"
    }


# -- Postgres NOTIFY -----------------------------------------------------------------------


@pytest.fixture
async def notifications(postgres_url: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Payloads of NOTIFYs on the registry channel, as a raw asyncpg LISTENer receives them."""
    await upgrade(postgres_url)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    listener = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))

    def on_notify(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        received.put_nowait(json.loads(payload))

    await listener.add_listener(REGISTRY_CHANNEL, on_notify)
    yield received
    await listener.close()


@pytest.mark.postgres
async def test_changes_are_notified_to_listeners(
    postgres_url: str, notifications: asyncio.Queue[dict[str, Any]]
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await store.add_worker(shop())
        await store.add_domain(domain("shop.example.org"))
        async with store.engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "UPDATE custom_domains SET status = 'failed' WHERE domain = 'shop.example.org'"
                )
            )
        await store.remove_domain("shop.example.org")

    received = [await asyncio.wait_for(notifications.get(), 5) for _ in range(4)]

    # One notification per transaction, carrying the sequence number it reached and (small
    # transactions) its changes.
    assert [(payload["seq"], payload["changes"]) for payload in received] == [
        (1, [["workers", "shop", "insert"]]),
        (2, [["custom_domains", "shop.example.org", "insert"]]),
        (3, [["custom_domains", "shop.example.org", "update"]]),
        (4, [["custom_domains", "shop.example.org", "delete"]]),
    ]


@pytest.mark.postgres
async def test_a_failed_write_notifies_nothing(
    postgres_url: str, notifications: asyncio.Queue[dict[str, Any]]
) -> None:
    async with RegistryStore.from_url(postgres_url) as store:
        await store.add_worker(shop())
        with pytest.raises(InvalidRequest):
            await store.add_domain(domain("shop.example.org", worker="ghost"))
        with pytest.raises(Conflict):
            await store.add_worker(shop())
        await store.add_worker(shop("blog"))

    received = [await asyncio.wait_for(notifications.get(), 5) for _ in range(2)]

    # Notifications arrive in commit order: nothing came between the two successful writes.
    assert [(payload["seq"], payload["changes"]) for payload in received] == [
        (1, [["workers", "shop", "insert"]]),
        (2, [["workers", "blog", "insert"]]),
    ]


# -- failures ------------------------------------------------------------------------------


async def test_a_write_that_times_out_is_rolled_back(registry_url: str) -> None:
    await upgrade(registry_url)
    blocker = create_registry_engine(registry_url)
    store = RegistryStore.from_url(registry_url, query_timeout=0.5)
    try:
        async with for_writing(blocker).begin() as holding:
            # Lock the version row: on Postgres the store's INSERT goes through and then its
            # version trigger waits for this lock; on SQLite the store cannot start writing.
            await holding.execute(sa.text("UPDATE registry_version SET version = version"))
            with pytest.raises(RegistryUnavailable) as caught:
                await store.add_worker(shop())
        assert "did not answer within 0.5 s" in caught.value.message

        assert await store.get_worker("shop") is None
        assert await store.version() == 0
        await store.add_worker(shop())  # and the store still works
        assert await store.version() == 1
    finally:
        await store.aclose()
        await blocker.dispose()


async def test_unreachable_postgres_raises_registry_unavailable(closed_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port}/registry"
    async with RegistryStore.from_url(url, connect_timeout=2, query_timeout=2) as store:
        calls = [
            store.version,
            store.load_workers,
            lambda: store.lookup_domain("shop.example.org"),
            lambda: store.add_worker(shop()),
            lambda: store.remove_domain("shop.example.org"),
        ]
        for call in calls:
            with pytest.raises(RegistryUnavailable) as caught:
                await call()
            assert caught.value.message == "The worker registry database cannot be reached"
            assert caught.value.__cause__ is not None


async def test_a_hung_database_fails_within_the_timeout(silent_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_port}/registry"
    async with RegistryStore.from_url(url, connect_timeout=10, query_timeout=0.5) as store:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            await store.lookup_domain("shop.example.org")
        elapsed = time.monotonic() - started

    assert elapsed < 3


async def test_unopenable_sqlite_file_raises_registry_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing-directory/registry.db"
    async with RegistryStore.from_url(url) as store:
        with pytest.raises(RegistryUnavailable):
            await store.version()
    await settle_aiosqlite_threads()


@pytest.mark.postgres
async def test_store_fails_fast_while_postgres_is_down_and_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    await upgrade(postgres_url)
    async with RegistryStore.from_url(postgres_url, query_timeout=2) as store:
        await store.add_worker(shop())  # the pool now holds a live connection
        postgres_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable):
                await store.get_worker("shop")
            assert time.monotonic() - started < 3
        finally:
            postgres_server.start()

        worker = await store.get_worker("shop")

    assert worker is not None


@pytest.mark.postgres
async def test_lookups_survive_a_database_restart_without_an_error(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    await upgrade(postgres_url)
    async with RegistryStore.from_url(postgres_url) as store:
        await store.add_worker(shop())
        await store.add_domain(domain("shop.example.org"))
        # The lookups' pool now holds connections opened before the restart (it does not
        # ping them before use).
        await asyncio.gather(*(store.lookup_domain("shop.example.org") for _ in range(3)))
        postgres_server.stop()
        postgres_server.start()

        # Each read finds its connection dropped, and is retried once on a new one.
        found = await store.lookup_domain("shop.example.org")
        changes = await store.changes_after(0)
        version = await store.version()

    assert found is not None and found.worker == "shop"
    assert [change.key for change in changes] == ["shop", "shop.example.org"]
    assert version == 2
