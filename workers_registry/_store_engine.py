"""The registry's engine: async driver URLs, pool and timeouts, and per-backend transactions.

See ``workers_registry.store`` for how SQLite transactions are emitted.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

Dialect = Literal["postgresql", "sqlite"]

# Connection execution option read by the SQLite "begin" hook: the statement that opens a
# transaction ("BEGIN", "BEGIN IMMEDIATE") or None for none at all (single-statement reads).
_SQLITE_BEGIN = "registry_sqlite_begin"

_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def async_database_url(url: str) -> str:
    """``url`` with its async driver made explicit (``postgresql://`` -> ``+asyncpg``)."""
    scheme, sep, rest = url.partition("://")
    driver = _ASYNC_DRIVERS.get(scheme.lower()) if sep else None
    if driver is None:
        raise ValueError(
            "unsupported database URL: use sqlite+aiosqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return f"{driver}://{rest}"


def _read_json(text: str | bytes) -> Any:
    """A JSON column's value as read: its document, or the text itself when it is not JSON.

    Every byte from the database is hostile, and SQLite keeps JSON as plain text that plain
    SQL can set to anything: text that does not parse (or nests deeper than orjson's 1024
    levels, where ``json.loads`` would hit the recursion limit) must cost that row, not the
    whole read. As text it fails the row's validation (``upstreams`` is a list, ``tags`` a
    map), so the row is skipped and logged like any invalid row.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def create_registry_engine(
    url: str,
    *,
    connect_timeout: float = 5.0,
    query_timeout: float = 5.0,
    pooled: bool = True,
    pre_ping: bool = True,
) -> AsyncEngine:
    """An ``AsyncEngine`` configured for the registry.

    Postgres (asyncpg): connect timeout, per-statement ``command_timeout``, a small pool with
    pre-ping so connections broken by a database restart are replaced. SQLite (aiosqlite):
    busy timeout, foreign keys on, and BEGIN emitted by SQLAlchemy (see the module docstring).
    ``pooled=False`` uses no pool (one-shot tools such as migrations). ``pre_ping`` checks a
    pooled Postgres connection before each use (asyncpg: a BEGIN/ROLLBACK round trip pair);
    without it the first query after a database restart fails, and the pool is then renewed.
    """
    sa_url = make_url(async_database_url(url))
    kwargs: dict[str, Any] = {"json_deserializer": _read_json}
    if not pooled:
        kwargs["poolclass"] = NullPool
    if sa_url.get_backend_name() == "postgresql":
        if pooled:
            kwargs.update(
                pool_size=5,
                max_overflow=5,
                pool_timeout=query_timeout,
                pool_recycle=1800,
            )
        engine = create_async_engine(
            sa_url,
            pool_pre_ping=pre_ping,
            connect_args={
                "timeout": connect_timeout,
                "command_timeout": query_timeout,
                "server_settings": {"application_name": "dispatcher-registry"},
            },
            **kwargs,
        )
    else:
        engine = create_async_engine(sa_url, connect_args={"timeout": query_timeout}, **kwargs)
        _install_sqlite_hooks(engine)
    return engine


def for_writing(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with transactions that take the write lock up front.

    On SQLite a transaction that starts reading and later writes can fail with "database is
    locked" without waiting; ``BEGIN IMMEDIATE`` waits on the busy timeout instead. Postgres
    needs nothing.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SQLITE_BEGIN: "BEGIN IMMEDIATE"})
    return engine


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` without transactions: each statement stands alone (single-statement reads,
    and statements such as ``PRAGMA journal_mode`` that must run outside a transaction)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SQLITE_BEGIN: None})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    # https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#sqlite-transactions
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        begin = connection.get_execution_options().get(_SQLITE_BEGIN, "BEGIN")
        if begin:
            connection.exec_driver_sql(begin)
