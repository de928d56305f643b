"""``RegistryStore``: the async gateway to the registry database (Postgres or SQLite).

It owns the engine and every query the dispatcher, the admin API and the CLI make. It does not
cache (``dispatcher.domains`` does) and does not listen for changes (``changes.py`` does).

The store is split by concept into private modules beside this one; this module puts
``RegistryStore`` together and is the only import path the rest of the project uses:

- ``_store_engine``: database URLs, the engine, per-backend transaction modes
- ``_store_base``: connections and the error-mapping boundary (``_transaction``)
- ``_store_rows``: columns, row validation, stock "not found" errors
- ``_store_workers`` / ``_store_domains`` / ``_store_changes``: the queries of each concept
- ``_store_bulk``: the SQL of imports

Errors: every database exception is mapped onto ``dispatcher.errors`` at one boundary,
``RegistryStore._transaction`` (in ``_store_base``), and chained with ``from exc``; driver
text never leaves here.

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

from workers_registry._store_changes import Change, _ChangeQueries
from workers_registry._store_domains import _DomainQueries
from workers_registry._store_engine import (
    Dialect,
    async_database_url,
    autocommit,
    create_registry_engine,
    for_writing,
)
from workers_registry._store_rows import new_verification_token
from workers_registry._store_workers import LOAD_CHUNK, _WorkerQueries

__all__ = [
    "LOAD_CHUNK",
    "Change",
    "Dialect",
    "RegistryStore",
    "async_database_url",
    "autocommit",
    "create_registry_engine",
    "for_writing",
    "new_verification_token",
]


class RegistryStore(_WorkerQueries, _DomainQueries, _ChangeQueries):
    """Workers and custom domains in the registry database.

    Build one per process with ``from_url`` (in the app lifespan) and ``aclose`` it on
    shutdown; it is safe to share between tasks. Every method may raise
    ``RegistryUnavailable``.
    """
