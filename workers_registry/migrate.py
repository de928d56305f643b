"""Apply the registry's alembic migrations to a database (``dispatcher db upgrade``).

alembic is configured here, in code (no ``alembic.ini``). ``upgrade`` is idempotent and safe
to run from several processes at once (every dispatcher replica migrates on start):

- Postgres: the upgrade runs in one transaction that first takes a transaction-level advisory
  lock, so migrators queue; the next one in finds the schema at head and does nothing. DDL is
  transactional there, so a failed migration leaves nothing behind, and the lock goes with the
  transaction even if the process dies.
- SQLite: the upgrade runs in one ``BEGIN IMMEDIATE`` transaction (the file's write lock);
  the database is switched to WAL journaling first, so readers in other processes are not
  blocked by writers.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.errors import RegistryUnavailable
from workers_registry.store import autocommit, create_registry_engine, for_writing

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade",
    "upgrade_sync",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# pg_advisory_xact_lock key shared by every migrator: the bytes of "dispatch" as a bigint.
_MIGRATION_LOCK_KEY = int.from_bytes(b"dispatch", "big")

# alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``),
# so two upgrades in one process must not interleave; one lock per event loop.
_alembic_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)

_UNREACHABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    OSError,  # includes TimeoutError
)


def alembic_config() -> Config:
    """An alembic ``Config`` for the registry migrations (no ini file)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration revision."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(
    database_url: str, *, connect_timeout: float = 5.0, lock_timeout: float = 300.0
) -> None:
    """Bring the registry schema at ``database_url`` to the newest revision.

    ``lock_timeout`` bounds the wait for another process's migration (and each statement).
    Raises ``RegistryUnavailable`` if the database cannot be reached.
    """
    engine = create_registry_engine(
        database_url, connect_timeout=connect_timeout, query_timeout=lock_timeout, pooled=False
    )
    try:
        if engine.dialect.name == "sqlite":
            await _use_wal(engine)
        async with for_writing(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            async with _alembic_lock():
                await connection.run_sync(_upgrade_on, alembic_config(), "head")
    except _UNREACHABLE as exc:
        raise RegistryUnavailable(
            "Cannot apply the registry migrations: the database cannot be reached"
        ) from exc
    finally:
        await engine.dispose()


def upgrade_sync(database_url: str) -> None:
    """``upgrade`` for synchronous callers (the CLI); not from inside a running event loop."""
    asyncio.run(upgrade(database_url))


async def current_revision(database_url: str, *, connect_timeout: float = 5.0) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""
    engine = create_registry_engine(database_url, connect_timeout=connect_timeout, pooled=False)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_revision_of)
    finally:
        await engine.dispose()


def _alembic_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _alembic_locks.get(loop)
    if lock is None:
        lock = _alembic_locks[loop] = asyncio.Lock()
    return lock


async def _use_wal(engine: AsyncEngine) -> None:
    # journal_mode cannot change inside a transaction: run it with no BEGIN at all. SQLite
    # answers "database is locked" at once (no busy wait) while another connection holds a
    # lock, which during concurrent upgrades means another migrator got here first and is
    # switching the file to WAL itself: that is not an error.
    try:
        async with autocommit(engine).connect() as connection:
            await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except sa_exc.OperationalError as exc:
        if "locked" not in str(exc.orig):
            raise


def _upgrade_on(connection: Connection, config: Config, revision: str) -> None:
    # env.py picks the connection up and runs inside our (already open) transaction.
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
