"""The store's connections and its one error-mapping boundary, ``_StoreBase._transaction``.

Every database exception raised by a query of the store is mapped onto
``dispatcher.errors`` here and nowhere else (see ``workers_registry.store``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, Self, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dispatcher.errors import Conflict, DispatcherError, InvalidRequest, RegistryUnavailable
from workers_registry._store_bulk import _KEYS_PER_QUERY
from workers_registry._store_engine import Dialect, autocommit, create_registry_engine, for_writing

# What "the database cannot answer" looks like from here. Every DBAPIError that is not a
# constraint violation counts: asyncpg reports a server shutdown as a plain driver Error.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,  # pool checkout timeout
    sa_exc.DisconnectionError,
    sa_exc.PendingRollbackError,
    OSError,  # refused, reset, unreachable; includes TimeoutError
)

# SQLite extended result codes (https://www.sqlite.org/rescode.html).
_SQLITE_CONSTRAINT_FOREIGNKEY = 787
_SQLITE_CONSTRAINT_PRIMARYKEY = 1555
_SQLITE_CONSTRAINT_UNIQUE = 2067


def _constraint_kind(exc: sa_exc.IntegrityError) -> Literal["unique", "foreign_key", "other"]:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)  # asyncpg (through SQLAlchemy's adapter)
    if sqlstate == "23505":
        return "unique"
    if sqlstate == "23503":
        return "foreign_key"
    code = getattr(orig, "sqlite_errorcode", None)
    if code in (_SQLITE_CONSTRAINT_PRIMARYKEY, _SQLITE_CONSTRAINT_UNIQUE):
        return "unique"
    if code == _SQLITE_CONSTRAINT_FOREIGNKEY:
        return "foreign_key"
    return "other"


def _integrity_error(
    exc: sa_exc.IntegrityError, *, duplicate: str | None, unknown_worker: str | None
) -> DispatcherError:
    kind = _constraint_kind(exc)
    if kind == "unique" and duplicate is not None:
        return Conflict(duplicate)
    if kind == "foreign_key" and unknown_worker is not None:
        message = f"Worker '{unknown_worker}' does not exist"
        return InvalidRequest(message, details=[{"field": "worker", "message": message}])
    return InvalidRequest("The registry rejected this change")


def _dropped(exc: BaseException) -> bool:
    """Did ``exc`` come from a connection the database had dropped (the pool now renews it)?"""
    cause = exc.__cause__
    return isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated


class _StoreBase:
    """The engines, their per-purpose views (reader, writer, snapshot, lookups), ``_transaction``
    and ``_read``.

    ``lookups`` serves the reads a running dispatcher makes all the time (a custom-domain
    miss, the follower's change-log and key reads): on Postgres, an engine whose pool does not
    ping a connection before each use (a round-trip pair per read otherwise); ``_read`` retries
    once on a fresh connection when the one it got had been dropped (a database restart).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        query_timeout: float = 5.0,
        lookups: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        self._lookups_engine = lookups
        self._query_timeout = query_timeout
        self._writer = for_writing(engine)
        self._reader = autocommit(engine)
        self._lookups = autocommit(lookups) if lookups is not None else self._reader
        if engine.dialect.name == "postgresql":
            self._snapshot = engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        else:
            self._snapshot = engine  # a deferred BEGIN: every read sees one state

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connect_timeout: float = 5.0,
        query_timeout: float = 5.0,
        pre_ping: bool = True,
    ) -> Self:
        """A store on ``url`` (``sqlite[+aiosqlite]://`` or ``postgresql[+asyncpg]://``)."""
        engine = create_registry_engine(
            url, connect_timeout=connect_timeout, query_timeout=query_timeout, pre_ping=pre_ping
        )
        lookups = None
        if pre_ping and engine.dialect.name == "postgresql":
            lookups = create_registry_engine(
                url, connect_timeout=connect_timeout, query_timeout=query_timeout, pre_ping=False
            )
        return cls(engine, query_timeout=query_timeout, lookups=lookups)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()
        if self._lookups_engine is not None:
            await self._lookups_engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def dialect(self) -> Dialect:
        return cast(Dialect, self._engine.dialect.name)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def engines(self) -> tuple[AsyncEngine, ...]:
        """Every engine of the store (the lookups' own, on Postgres)."""
        lookups = self._lookups_engine
        return (self._engine,) if lookups is None else (self._engine, lookups)

    async def _read(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> list[Row[Any]]:
        """The rows of one read on the lookups engine, retried once if its connection had
        been dropped."""
        for retry in (False, True):
            try:
                async with self._transaction(self._lookups) as connection:
                    return list((await connection.execute(statement, parameters)).all())
            except RegistryUnavailable as exc:
                if retry or not _dropped(exc):
                    raise
        raise AssertionError("unreachable")

    async def _read_by_key(self, query: sa.Select[Any], keys: Collection[str]) -> list[Row[Any]]:
        """``_read`` of ``query`` (its ``keys`` parameter an expanding list) for every key, in
        one query per ``_KEYS_PER_QUERY`` keys."""
        ordered = sorted(keys)
        rows: list[Row[Any]] = []
        for start in range(0, len(ordered), _KEYS_PER_QUERY):
            rows.extend(await self._read(query, {"keys": ordered[start : start + _KEYS_PER_QUERY]}))
        return rows

    @asynccontextmanager
    async def _transaction(
        self,
        engine: AsyncEngine,
        *,
        duplicate: str | None = None,
        unknown_worker: str | None = None,
        limit: float | None = None,
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction under the query timeout: the one place errors are mapped.

        ``duplicate`` is the ``Conflict`` message for a primary-key clash; ``unknown_worker``
        the worker name to report when a foreign key finds no worker; ``limit`` replaces the
        query timeout (seconds) for a transaction of many statements (loads, imports).
        """
        timeout = self._query_timeout if limit is None else limit
        try:
            async with asyncio.timeout(timeout), engine.begin() as connection:
                yield connection
        except sa_exc.IntegrityError as exc:
            raise _integrity_error(exc, duplicate=duplicate, unknown_worker=unknown_worker) from exc
        except TimeoutError as exc:
            raise RegistryUnavailable(
                f"The worker registry did not answer within {timeout:g} s"
            ) from exc
        except _UNAVAILABLE as exc:
            raise RegistryUnavailable("The worker registry database cannot be reached") from exc
