"""The store's queries of the change log and of rows by key (what a follower reads)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from workers_registry._store_base import _StoreBase
from workers_registry._store_rows import (
    _ENTRY_COLUMNS,
    _entries,
    _now,
)
from workers_registry.entries import WorkerEntry
from workers_registry.tables import registry_changes, workers

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
_WORKERS_NAMED = sa.select(*_ENTRY_COLUMNS).where(
    workers.c.name.in_(sa.bindparam("keys", expanding=True))
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


class _ChangeQueries(_StoreBase):
    """The change log and the rows it names."""

    async def changes_after(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Up to ``limit`` change-log entries after ``seq``, in order."""
        rows = await self._read(_CHANGES_AFTER, {"after": seq, "limit": limit})
        return [Change(row.seq, row.table_name, row.key, row.op) for row in rows]

    async def workers_named(self, names: Collection[str]) -> list[WorkerEntry]:
        """The entries of the workers among ``names`` that exist (valid rows only), in no
        particular order."""
        rows = await self._read_by_key(_WORKERS_NAMED, names)
        return _entries(rows)

    async def prune_changes(self, retention: float) -> int:
        """Delete change-log entries older than ``retention`` seconds; how many went."""
        cutoff = _now() - timedelta(seconds=retention)
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.delete(registry_changes).where(registry_changes.c.changed_at < cutoff)
            )
        return int(result.rowcount or 0)
