"""``RegistryStore``: the async gateway to the registry database (Postgres or SQLite).

It owns the engine and every query the dispatcher, the admin API and the CLI make. It does not
cache (``dispatcher.domains`` does) and does not listen for changes (``changes.py`` does).

Errors: every database exception is mapped onto ``dispatcher.errors`` at one boundary,
``RegistryStore._transaction``, and chained with ``from exc``; driver text never leaves here.

- cannot connect, connection lost, timeout, any other driver error -> ``RegistryUnavailable``
- duplicate primary key -> ``Conflict``
- a domain naming an unknown worker -> ``InvalidRequest`` with ``details`` on ``worker``
- missing rows -> ``WorkerNotFound`` / ``DomainNotFound``

Each operation runs under ``asyncio.timeout(query_timeout)``, so a dead or hung database makes
callers fail fast instead of waiting. Each write is one transaction; the version triggers
(see the migrations) run inside it, so a failed write changes nothing, not even the version.

Transactions per backend:

- Postgres: reads run in autocommit (one round trip for ``lookup_domain``); ``load_workers``
  reads in one ``REPEATABLE READ`` snapshot so its version matches its rows.
- SQLite: the ``sqlite3`` driver's own transaction handling is switched off and the store
  emits ``BEGIN`` itself (``BEGIN IMMEDIATE`` for writes, so concurrent writers queue on the
  busy timeout instead of failing), and ``PRAGMA foreign_keys=ON`` is set on every connection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Collection, Sequence, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import sqlalchemy as sa
import structlog
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from dispatcher.errors import (
    Conflict,
    DispatcherError,
    DomainNotFound,
    InvalidHost,
    InvalidRequest,
    RegistryUnavailable,
    WorkerNotFound,
)
from dispatcher.hosts import normalize_domain
from workers_registry.models import (
    CustomDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    DomainStatus,
    Worker,
    WorkerCreate,
    WorkerSpec,
)
from workers_registry.tables import (
    REGISTRY_VERSION_ID,
    custom_domains,
    registry_changes,
    registry_version,
    workers,
)

__all__ = [
    "Change",
    "RegistryStore",
    "async_database_url",
    "autocommit",
    "create_registry_engine",
    "for_writing",
    "new_verification_token",
]

Dialect = Literal["postgresql", "sqlite"]

_log = structlog.get_logger(__name__)

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

_WORKER_COLUMNS = tuple(workers.c)
_DOMAIN_COLUMNS = tuple(custom_domains.c)
_SPEC_FIELDS: set[str] = set(WorkerSpec.model_fields)

_VERSION_QUERY = sa.select(registry_version.c.version).where(
    registry_version.c.id == REGISTRY_VERSION_ID
)
_CHANGES_AFTER = (
    sa.select(
        registry_changes.c.seq,
        registry_changes.c.table_name,
        registry_changes.c.key,
        registry_changes.c.op,
    )
    .where(registry_changes.c.seq > sa.bindparam("after"))
    .order_by(registry_changes.c.seq)
    .limit(sa.bindparam("limit"))
)
_WORKERS_NAMED = sa.select(*_WORKER_COLUMNS).where(
    workers.c.name.in_(sa.bindparam("keys", expanding=True))
)
_DOMAINS_NAMED = sa.select(*_DOMAIN_COLUMNS).where(
    custom_domains.c.domain.in_(sa.bindparam("keys", expanding=True))
)
#: Rows per INSERT statement of an import on Postgres.
_IMPORT_ROWS_PER_STATEMENT = 50_000
#: Keys per ``IN (...)`` query when rows are read by key.
_KEYS_PER_QUERY = 1000
#: Rows a full load reads and validates between two turns of the event loop (~5 ms).
LOAD_CHUNK = 250
_LOOKUP_DOMAIN = sa.select(*_DOMAIN_COLUMNS).where(
    custom_domains.c.domain == sa.bindparam("domain")
)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: row ``key`` of ``table`` changed by ``op`` at ``seq``.

    ``key`` is ``None`` for a ``truncate`` (every row of the table).
    """

    seq: int
    table: str
    key: str | None
    op: str


def async_database_url(url: str) -> str:
    """``url`` with its async driver made explicit (``postgresql://`` -> ``+asyncpg``)."""
    scheme, sep, rest = url.partition("://")
    driver = _ASYNC_DRIVERS.get(scheme.lower()) if sep else None
    if driver is None:
        raise ValueError(
            "unsupported database URL: use sqlite+aiosqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return f"{driver}://{rest}"


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
    kwargs: dict[str, Any] = {}
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


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | str) -> datetime:
    # An aggregate (min) is not typed by the column, so SQLite hands back its text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_verification_token() -> str:
    """A random TXT value for a domain's ownership check (128 bits, hex)."""
    return secrets.token_hex(16)


def _status_values(status: DomainStatus, now: datetime) -> dict[str, Any]:
    """The onboarding columns of a status set by an operator.

    ``pending`` starts the checks (the first one due now, the timeout counted from now);
    any other status is the operator's decision and is not checked on a schedule.
    """
    return {
        "status_changed_at": now,
        "next_check_at": now if status is DomainStatus.PENDING else None,
        "failed_checks": 0,
        "failure_reason": None,
    }


def _domain_key(domain: str) -> str:
    """The stored form of a domain given by an operator; unparsable input stays as is."""
    try:
        return normalize_domain(domain.strip())
    except InvalidHost:
        return domain


def _worker_missing(name: str) -> WorkerNotFound:
    return WorkerNotFound(f"Worker '{name}' does not exist")


def _domain_missing(domain: str) -> DomainNotFound:
    return DomainNotFound(f"Domain '{domain}' is not registered")


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


def _rejected(
    error: type[Conflict] | type[InvalidRequest], problems: list[tuple[str, str]]
) -> DispatcherError:
    """An import refused because of ``problems`` (label, message), the first few named."""
    details = [{"field": label, "message": message} for label, message in problems[:20]]
    first = details[0]
    return error(
        f"The import was rejected, nothing was written: {first['field']}: {first['message']}",
        details=details,
    )


def _labels(labels: Sequence[str] | None, count: int) -> Sequence[str]:
    return labels if labels is not None else [f"record {index + 1}" for index in range(count)]


#: Every field of a stored worker is set: one set shared by every worker read (pydantic would
#: give each its own, 728 bytes of a worker's ~1.4 KB). Never mutated: a copy of a frozen
#: model gets a copy of it.
_ALL_WORKER_FIELDS: set[str] = set(Worker.model_fields)


def _worker(row: Row[Any]) -> Worker | None:
    try:
        worker = Worker.model_validate(row._asdict())
        object.__setattr__(worker, "__pydantic_fields_set__", _ALL_WORKER_FIELDS)
        return worker
    except ValidationError as exc:
        # Only rows written around the store (plain SQL) can be invalid. Skip them instead of
        # making the whole registry unreadable.
        _log.warning("registry.invalid_worker_row", worker=row.name, errors=exc.error_count())
        return None


def _workers(rows: Sequence[Row[Any]]) -> list[Worker]:
    return [worker for row in rows if (worker := _worker(row)) is not None]


def _domain(row: Row[Any]) -> CustomDomain:
    return CustomDomain.model_validate(row._asdict())


class RegistryStore:
    """Workers and custom domains in the registry database.

    Build one per process with ``from_url`` (in the app lifespan) and ``aclose`` it on
    shutdown; it is safe to share between tasks. Every method may raise
    ``RegistryUnavailable``.
    """

    def __init__(self, engine: AsyncEngine, *, query_timeout: float = 5.0) -> None:
        self._engine = engine
        self._query_timeout = query_timeout
        self._writer = for_writing(engine)
        self._reader = autocommit(engine)
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
    ) -> RegistryStore:
        """A store on ``url`` (``sqlite[+aiosqlite]://`` or ``postgresql[+asyncpg]://``)."""
        engine = create_registry_engine(
            url, connect_timeout=connect_timeout, query_timeout=query_timeout, pre_ping=pre_ping
        )
        return cls(engine, query_timeout=query_timeout)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    async def __aenter__(self) -> RegistryStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def dialect(self) -> Dialect:
        return cast(Dialect, self._engine.dialect.name)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

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

    # -- version -------------------------------------------------------------------------

    async def version(self) -> int:
        """The registry version: it grows with every change to workers or domains."""
        async with self._transaction(self._reader) as connection:
            return int((await connection.execute(_VERSION_QUERY)).scalar_one())

    async def load_workers(self, *, limit: float = 120.0) -> tuple[int, list[Worker]]:
        """The version and every worker (ordered by name), read from one snapshot.

        Rows arrive and are validated ``LOAD_CHUNK`` at a time with a turn of the event loop
        between chunks, so loading 100,000 workers never holds the loop for long. ``limit``
        (seconds) bounds the whole load (the per-query timeout would cut a large one short).
        """
        loaded: list[Worker] = []
        query = sa.select(*_WORKER_COLUMNS).order_by(workers.c.name)
        async with self._transaction(self._snapshot, limit=limit) as connection:
            version = int((await connection.execute(_VERSION_QUERY)).scalar_one())
            result = await connection.stream(query.execution_options(yield_per=LOAD_CHUNK))
            async for rows in result.partitions():
                loaded.extend(_workers(rows))
                await asyncio.sleep(0)
        return version, loaded

    # -- the change log --------------------------------------------------------------------

    async def changes_after(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Up to ``limit`` change-log entries after ``seq``, in order."""
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(_CHANGES_AFTER, {"after": seq, "limit": limit})).all()
        return [Change(row.seq, row.table_name, row.key, row.op) for row in rows]

    async def workers_named(self, names: Collection[str]) -> list[Worker]:
        """The workers among ``names`` that exist (valid rows only), in no particular order."""
        rows = await self._rows_by_key(_WORKERS_NAMED, names)
        return _workers(rows)

    async def domains_named(self, domains: Collection[str]) -> list[CustomDomain]:
        """The custom domains among ``domains`` (normalised keys) that exist."""
        return [_domain(row) for row in await self._rows_by_key(_DOMAINS_NAMED, domains)]

    async def _rows_by_key(self, query: sa.Select[Any], keys: Collection[str]) -> list[Row[Any]]:
        ordered = sorted(keys)
        rows: list[Row[Any]] = []
        for start in range(0, len(ordered), _KEYS_PER_QUERY):
            chunk = ordered[start : start + _KEYS_PER_QUERY]
            async with self._transaction(self._reader) as connection:
                rows.extend((await connection.execute(query, {"keys": chunk})).all())
        return rows

    async def prune_changes(self, retention: float) -> int:
        """Delete change-log entries older than ``retention`` seconds; how many went."""
        cutoff = _now() - timedelta(seconds=retention)
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.delete(registry_changes).where(registry_changes.c.changed_at < cutoff)
            )
        return int(result.rowcount or 0)

    # -- workers -------------------------------------------------------------------------

    async def list_workers(self) -> list[Worker]:
        """Every worker, ordered by name."""
        async with self._transaction(self._reader) as connection:
            result = await connection.execute(sa.select(*_WORKER_COLUMNS).order_by(workers.c.name))
            return _workers(result.all())

    async def get_worker(self, name: str) -> Worker | None:
        async with self._transaction(self._reader) as connection:
            result = await connection.execute(
                sa.select(*_WORKER_COLUMNS).where(workers.c.name == name.lower())
            )
            row = result.one_or_none()
        return None if row is None else _worker(row)

    async def add_worker(self, spec: WorkerCreate) -> Worker:
        """Register a new worker; ``Conflict`` if the name is taken."""
        now = _now()
        values = {**spec.model_dump(mode="json"), "created_at": now, "updated_at": now}
        async with self._transaction(
            self._writer, duplicate=f"Worker '{spec.name}' already exists"
        ) as connection:
            result = await connection.execute(
                sa.insert(workers).values(values).returning(*_WORKER_COLUMNS)
            )
            return Worker.model_validate(result.one()._asdict())

    async def replace_worker(self, name: str, spec: WorkerSpec) -> Worker:
        """Replace everything but the name and ``created_at``; ``WorkerNotFound`` if missing."""
        values = {**spec.model_dump(mode="json", include=_SPEC_FIELDS), "updated_at": _now()}
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.update(workers)
                .where(workers.c.name == name.lower())
                .values(values)
                .returning(*_WORKER_COLUMNS)
            )
            row = result.one_or_none()
            if row is None:
                raise _worker_missing(name)
            return Worker.model_validate(row._asdict())

    async def remove_worker(self, name: str) -> None:
        """Remove a worker and its custom domains; ``WorkerNotFound`` if missing."""
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.delete(workers).where(workers.c.name == name.lower())
            )
            if result.rowcount == 0:
                raise _worker_missing(name)

    async def import_workers(
        self, specs: Sequence[WorkerCreate], labels: Sequence[str] | None = None
    ) -> int:
        """Register every worker of ``specs`` in one transaction, or none of them.

        ``Conflict`` naming the records (by ``labels``, e.g. ``line 12``) whose name is taken.
        On Postgres the whole import is announced by one notification.
        """
        labels = _labels(labels, len(specs))
        now = _now()
        async with self._transaction(
            self._writer,
            duplicate="A worker of the import already exists",
            limit=_import_limit(specs),
        ) as connection:
            taken = await _existing(connection, workers.c.name, [spec.name for spec in specs])
            if taken:
                problems = [
                    (label, f"worker '{spec.name}' already exists")
                    for spec, label in zip(specs, labels, strict=True)
                    if spec.name in taken
                ]
                raise _rejected(Conflict, problems)
            rows = [
                {**spec.model_dump(mode="json"), "created_at": now, "updated_at": now}
                for spec in specs
            ]
            await _insert(connection, workers, rows)
        return len(specs)

    # -- custom domains ------------------------------------------------------------------

    async def import_domains(
        self, specs: Sequence[CustomDomainCreate], labels: Sequence[str] | None = None
    ) -> int:
        """Register every custom domain of ``specs`` in one transaction, or none of them.

        Each gets its verification token and schedule as ``add_domain`` gives them.

        ``InvalidRequest`` naming the records (by ``labels``) whose worker does not exist;
        ``Conflict`` naming those already registered. On Postgres the whole import is
        announced by one notification.
        """
        labels = _labels(labels, len(specs))
        now = _now()
        async with self._transaction(
            self._writer,
            duplicate="A domain of the import is already registered",
            limit=_import_limit(specs),
        ) as connection:
            named = {spec.worker for spec in specs}
            missing = named - await _existing(connection, workers.c.name, named)
            if missing:
                problems = [
                    (label, f"worker '{spec.worker}' does not exist")
                    for spec, label in zip(specs, labels, strict=True)
                    if spec.worker in missing
                ]
                raise _rejected(InvalidRequest, problems)
            taken = await _existing(
                connection, custom_domains.c.domain, [spec.domain for spec in specs]
            )
            if taken:
                problems = [
                    (label, f"domain '{spec.domain}' is already registered")
                    for spec, label in zip(specs, labels, strict=True)
                    if spec.domain in taken
                ]
                raise _rejected(Conflict, problems)
            rows = [
                {
                    **spec.model_dump(mode="json"),
                    **_status_values(spec.status, now),
                    "verification_token": new_verification_token(),
                    "created_at": now,
                    "updated_at": now,
                }
                for spec in specs
            ]
            await _insert(connection, custom_domains, rows)
        return len(specs)

    async def list_domains(self, worker: str | None = None) -> list[CustomDomain]:
        """Every custom domain (of one worker if given), ordered by domain."""
        query = sa.select(*_DOMAIN_COLUMNS).order_by(custom_domains.c.domain)
        if worker is not None:
            query = query.where(custom_domains.c.worker == worker.lower())
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(query)).all()
        return [_domain(row) for row in rows]

    async def get_domain(self, domain: str) -> CustomDomain | None:
        """A custom domain by name (normalised: case, trailing dot, IDNA) or ``None``."""
        return await self.lookup_domain(_domain_key(domain))

    async def lookup_domain(self, domain: str) -> CustomDomain | None:
        """The hot-path lookup: one primary-key SELECT of an already normalised host.

        Returns the entry whatever its status; callers route only ``routable`` ones.
        """
        async with self._transaction(self._reader) as connection:
            row = (await connection.execute(_LOOKUP_DOMAIN, {"domain": domain})).one_or_none()
        return None if row is None else _domain(row)

    async def add_domain(self, spec: CustomDomainCreate) -> CustomDomain:
        """Register a custom domain with a fresh random verification token.

        A ``pending`` domain is due for its first check at once; any other status is the
        operator's word and is not scheduled. ``Conflict`` if the domain is registered
        already; ``InvalidRequest`` (``worker`` field) if its worker does not exist.
        """
        now = _now()
        values = {
            **spec.model_dump(mode="json"),
            **_status_values(spec.status, now),
            "verification_token": new_verification_token(),
            "created_at": now,
            "updated_at": now,
        }
        async with self._transaction(
            self._writer,
            duplicate=f"Domain '{spec.domain}' is already registered",
            unknown_worker=spec.worker,
        ) as connection:
            result = await connection.execute(
                sa.insert(custom_domains).values(values).returning(*_DOMAIN_COLUMNS)
            )
            return _domain(result.one())

    async def update_domain(self, domain: str, patch: CustomDomainPatch) -> CustomDomain:
        """Change a domain's status and/or worker.

        ``DomainNotFound`` if missing; ``InvalidRequest`` (``worker`` field) if the new worker
        does not exist.
        """
        key = _domain_key(domain)
        changes: dict[str, Any] = patch.model_dump(mode="json", exclude_none=True)
        if patch.status is not None:
            changes.update(_status_values(patch.status, _now()))
            changes["verification_token"] = sa.func.coalesce(
                custom_domains.c.verification_token, new_verification_token()
            )
        if not changes:
            found = await self.lookup_domain(key)
            if found is None:
                raise _domain_missing(domain)
            return found
        async with self._transaction(self._writer, unknown_worker=patch.worker) as connection:
            result = await connection.execute(
                sa.update(custom_domains)
                .where(custom_domains.c.domain == key)
                .values({**changes, "updated_at": _now()})
                .returning(*_DOMAIN_COLUMNS)
            )
            row = result.one_or_none()
            if row is None:
                raise _domain_missing(domain)
            return _domain(row)

    async def set_domain_status(self, domain: str, status: DomainStatus | str) -> CustomDomain:
        """Change a domain's status; ``DomainNotFound`` if missing."""
        return await self.update_domain(domain, CustomDomainPatch(status=DomainStatus(status)))

    async def due_domains(self, now: datetime, limit: int) -> list[CustomDomain]:
        """Domains whose next check is due at ``now``, the most overdue first."""
        query = (
            sa.select(*_DOMAIN_COLUMNS)
            .where(custom_domains.c.next_check_at <= now)
            .order_by(custom_domains.c.next_check_at)
            .limit(limit)
        )
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(query)).all()
        return [_domain(row) for row in rows]

    async def next_check_at(self) -> datetime | None:
        """When the earliest scheduled check is due (``None``: nothing is scheduled)."""
        query = sa.select(sa.func.min(custom_domains.c.next_check_at))
        async with self._transaction(self._reader) as connection:
            value = (await connection.execute(query)).scalar_one_or_none()
        return None if value is None else _aware(value)

    async def record_check(
        self, seen: CustomDomain, changes: dict[str, Any]
    ) -> CustomDomain | None:
        """Write the outcome of a check of ``seen``, unless the row changed since it was read.

        ``changes`` are column values (``status``, ``checked_at``, ``next_check_at``,
        ``failure_reason``, ``failed_checks``); a status change also sets
        ``status_changed_at``. The write is conditional on ``updated_at``, so an operator's
        change made while the check was in flight is never overwritten. ``None`` when the row
        changed or is gone.
        """
        now = _now()
        values = {**changes, "updated_at": now}
        if "status" in changes and changes["status"] != seen.status:
            values["status_changed_at"] = now
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.update(custom_domains)
                .where(
                    custom_domains.c.domain == seen.domain,
                    custom_domains.c.updated_at == seen.updated_at,
                )
                .values(values)
                .returning(*_DOMAIN_COLUMNS)
            )
            row = result.one_or_none()
        return None if row is None else _domain(row)

    async def count_domains_by_status(self) -> dict[str, int]:
        """How many custom domains have each status."""
        query = sa.select(custom_domains.c.status, sa.func.count()).group_by(
            custom_domains.c.status
        )
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(query)).all()
        return {str(status): int(count) for status, count in rows}

    async def remove_domain(self, domain: str) -> None:
        """Remove a custom domain; ``DomainNotFound`` if missing."""
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.delete(custom_domains).where(custom_domains.c.domain == _domain_key(domain))
            )
            if result.rowcount == 0:
                raise _domain_missing(domain)


def _import_limit(specs: Sized) -> float:
    """Seconds an import of ``specs`` may take: a minute, plus one per 10,000 records."""
    return 60.0 + len(specs) / 10_000


async def _existing(
    connection: AsyncConnection, column: sa.Column[str], keys: Collection[str]
) -> set[str]:
    """The keys among ``keys`` that ``column`` holds (one query per thousand keys)."""
    ordered = sorted(keys)
    found: set[str] = set()
    query = sa.select(column).where(column.in_(sa.bindparam("keys", expanding=True)))
    for start in range(0, len(ordered), _KEYS_PER_QUERY):
        chunk = ordered[start : start + _KEYS_PER_QUERY]
        found.update((await connection.execute(query, {"keys": chunk})).scalars())
    return found


async def _insert(connection: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` into ``table``.

    Postgres: one ``INSERT ... SELECT FROM unnest(<one array per column>)`` per 50,000 rows, so
    the statement trigger runs a few times, not once per row (an ``executemany`` through
    asyncpg runs the statement once per row). SQLite: ``executemany`` (its triggers are per
    row anyway).
    """
    if not rows:
        return
    if connection.dialect.name != "postgresql":
        await connection.execute(sa.insert(table), rows)
        return
    names = list(rows[0])
    columns = [table.c[name] for name in names]
    statement = sa.insert(table).from_select(
        names, sa.select(sa.text("*")).select_from(sa.func.unnest(*map(_pg_array, columns)))
    )
    for start in range(0, len(rows), _IMPORT_ROWS_PER_STATEMENT):
        chunk = rows[start : start + _IMPORT_ROWS_PER_STATEMENT]
        await connection.execute(
            statement,
            {
                column.name: [_pg_value(column, row[column.name]) for row in chunk]
                for column in columns
            },
        )


def _pg_array(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """The parameter holding one column's values, as a Postgres array of the column's type
    (JSON is sent as text and cast element by element)."""
    if isinstance(column.type, sa.JSON):
        text = sa.bindparam(column.name, type_=postgresql.ARRAY(sa.Text()))
        return sa.cast(text, postgresql.ARRAY(postgresql.JSONB()))
    return sa.bindparam(column.name, type_=postgresql.ARRAY(column.type))


def _pg_value(column: sa.Column[Any], value: Any) -> Any:
    if isinstance(column.type, sa.JSON) and value is not None:
        return json.dumps(value)
    return value
