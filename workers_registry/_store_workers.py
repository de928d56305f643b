"""The store's queries of workers and of the registry version."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import sqlalchemy as sa

from dispatcher.errors import Conflict
from workers_registry._store_base import _StoreBase
from workers_registry._store_bulk import _existing, _import_limit, _insert, _labels, _refuse_lines
from workers_registry._store_rows import (
    _ENTRY_COLUMNS,
    _SPEC_FIELDS,
    _WORKER_COLUMNS,
    _entries,
    _now,
    _worker,
    _worker_missing,
    _workers,
)
from workers_registry.entries import WorkerEntry
from workers_registry.models import Worker, WorkerCreate, WorkerSpec
from workers_registry.tables import REGISTRY_VERSION_ID, registry_version, workers

_VERSION_QUERY = sa.select(registry_version.c.version).where(
    registry_version.c.id == REGISTRY_VERSION_ID
)
#: Rows a full load reads and validates between two turns of the event loop (~1.2 ms of CPU
#: as lean entries, ~5 ms as pydantic models).
LOAD_CHUNK = 250
_LOAD_QUERY = (
    sa.select(*_ENTRY_COLUMNS).order_by(workers.c.name).execution_options(yield_per=LOAD_CHUNK)
)


class _WorkerQueries(_StoreBase):
    """Workers: the version, full loads, single reads and writes, imports."""

    async def version(self) -> int:
        """The registry version: it grows with every change to workers or domains."""
        return int((await self._read(_VERSION_QUERY))[0][0])

    async def load_workers(self, *, limit: float = 120.0) -> tuple[int, list[WorkerEntry]]:
        """The version and every worker's ``WorkerEntry`` (ordered by name), read from one
        snapshot: the routing columns only (no tags, no timestamps).

        Rows arrive and are validated ``LOAD_CHUNK`` at a time with a turn of the event loop
        between chunks, so loading 100,000 workers never holds the loop for long. ``limit``
        (seconds) bounds the whole load (the per-query timeout would cut a large one short).
        """
        loaded: list[WorkerEntry] = []
        async with self._transaction(self._snapshot, limit=limit) as connection:
            version = int((await connection.execute(_VERSION_QUERY)).scalar_one())
            result = await connection.stream(_LOAD_QUERY)
            async for rows in result.partitions():
                loaded.extend(_entries(rows))
                await asyncio.sleep(0)
        return version, loaded

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
            names = [spec.name for spec in specs]
            taken = await _existing(connection, workers.c.name, names)
            _refuse_lines(Conflict, labels, names, taken, "worker '{}' already exists")
            rows = [
                {**spec.model_dump(mode="json"), "created_at": now, "updated_at": now}
                for spec in specs
            ]
            await _insert(connection, workers, rows)
        return len(specs)
