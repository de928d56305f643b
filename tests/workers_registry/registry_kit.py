"""What the change-log and follower tests share: plain SQL, a wired dispatcher state, waits.

The follower under test is the one a dispatcher runs (``DispatcherState.startup`` wires it to
the routing table, the upstream selector and the custom-domain cache), driven by explicit
``refresh()`` calls (a long poll interval) so each test decides when changes are applied.
The fixtures ``store`` and ``gateway`` are in this package's ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from dispatcher.app import create_app
from dispatcher.errors import RoutingError
from dispatcher.settings import Settings
from dispatcher.state import DispatcherState
from workers_registry.migrate import alembic_config, upgrade
from workers_registry.store import RegistryStore, create_registry_engine
from workers_registry.tables import REGISTRY_CHANNEL

BASE = "example.com"


async def sql(store: RegistryStore, *statements: str) -> None:
    """Run ``statements`` in one transaction, as an operator's plain SQL would."""
    async with store.engine.begin() as connection:
        for statement in statements:
            await connection.execute(sa.text(statement))


def add_worker(name: str, upstream: str = "http://10.0.0.1:8080") -> str:
    return f"INSERT INTO workers (name, upstreams) VALUES ('{name}', '[\"{upstream}\"]')"


def add_domain(domain: str, worker: str, status: str = "active") -> str:
    return (
        "INSERT INTO custom_domains (domain, worker, status)"
        f" VALUES ('{domain}', '{worker}', '{status}')"
    )


def write(operation: tuple[str, ...]) -> list[str]:
    """The SQL of one write of the property tests: ``("add_worker", name[, upstream])``,
    ``("set_upstream", name, upstream)``, ``("toggle", name)``, ``("rename", old, new)``,
    ``("remove_worker", name)``, ``("add_domain", host, worker[, status])``,
    ``("set_status", host, status)``, ``("move_domain", host, worker)``,
    ``("remove_domain", host)``, ``("remove_all_domains",)``; nothing for anything else."""
    match operation:
        case ("add_worker", name, *upstream):
            return [add_worker(name, *upstream)]
        case ("set_upstream", name, upstream):
            return [f"UPDATE workers SET upstreams = '[\"{upstream}\"]' WHERE name = '{name}'"]
        case ("toggle", name):
            return [f"UPDATE workers SET enabled = NOT enabled WHERE name = '{name}'"]
        case ("rename", old, new):
            return [f"UPDATE workers SET name = '{new}' WHERE name = '{old}'"]
        case ("remove_worker", name):
            return [f"DELETE FROM workers WHERE name = '{name}'"]
        case ("add_domain", host, worker, *status):
            return [add_domain(host, worker, *status)]
        case ("set_status", host, status):
            return [f"UPDATE custom_domains SET status = '{status}' WHERE domain = '{host}'"]
        case ("move_domain", host, worker):
            return [f"UPDATE custom_domains SET worker = '{worker}' WHERE domain = '{host}'"]
        case ("remove_domain", host):
            return [f"DELETE FROM custom_domains WHERE domain = '{host}'"]
        case ("remove_all_domains",):
            return ["DELETE FROM custom_domains"]
    return []


def settings(url: str, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "database_url": url,
        "base_domains": [BASE],
        "registry_poll_interval": 3600,  # the tests call refresh() themselves
        "log_level": "warning",
    }
    return Settings(**{**options, **overrides})


def start(url: str, **overrides: Any) -> DispatcherState:
    """A dispatcher's state (what its lifespan starts), wired as ``create_app`` wires it."""
    return create_app(settings(url, **overrides)).state


@contextlib.asynccontextmanager
async def running(
    url: str, *, deaf: bool = False, **overrides: Any
) -> AsyncIterator[DispatcherState]:
    """A dispatcher's state on ``url``, started, and shut down after; ``deaf``: without its
    Postgres listener, so that it hears only what the test hands it (and what it polls)."""
    state = start(url, **overrides)
    await state.startup()
    try:
        if deaf and state.listener is not None:
            await state.listener.aclose()
        yield state
    finally:
        await state.shutdown()


async def route(gateway: DispatcherState, host: str) -> str:
    """Where a request to ``host`` goes: the worker's name, or the error code."""
    try:
        found = await gateway.route(host, b"/", b"", "GET")
    except RoutingError as exc:
        return exc.code
    return "control" if found is None else found.worker.name


async def assert_as_a_full_reload(
    gateway: DispatcherState, url: str, hosts: tuple[str, ...] = ()
) -> None:
    """``gateway`` holds the workers a dispatcher started on ``url`` now loads, and routes each
    of ``hosts`` as it does."""
    async with running(url) as reloaded:
        assert gateway.table.workers == reloaded.table.workers
        for host in hosts:
            assert await route(gateway, host) == await route(reloaded, host), host


_upgraded: set[str] = set()


def upgrade_once(url: str) -> None:
    """Migrate the registry at ``url`` unless this process did already (a property test's
    examples share one database; each test's is a fresh one with a URL of its own)."""
    if url not in _upgraded:
        asyncio.run(upgrade(url))
        _upgraded.add(url)


def follower(gateway: DispatcherState) -> Any:
    assert gateway.follower is not None
    return gateway.follower


def statements_of(store: RegistryStore) -> list[str]:
    """Every SQL statement ``store``'s engines send from now on, recorded in order."""
    sent: list[str] = []
    for engine in store.engines:
        sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    return sent


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def announced(postgres_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every payload announced on the registry channel from now on, parsed, in order (a raw
    asyncpg LISTENer of its own, not the dispatcher's)."""
    received: list[dict[str, Any]] = []
    listener = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    await listener.add_listener(
        REGISTRY_CHANNEL, lambda *args: received.append(json.loads(args[3]))
    )
    try:
        yield received
    finally:
        await listener.close()


async def announced_up_to(store: RegistryStore, received: list[dict[str, Any]]) -> None:
    """Wait until the last payload in ``received`` announces the registry's version."""
    version = await store.version()
    await until(lambda: received and received[-1]["seq"] == version, "the announcement")


async def migrate_to(url: str, revision: str, *, down: bool = False) -> None:
    """Upgrade (or downgrade) the registry at ``url`` to ``revision``."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    engine = create_registry_engine(url, pooled=False)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()
