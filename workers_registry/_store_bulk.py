"""Bulk SQL of imports: existing keys by chunks, fast multi-row inserts, rejection errors."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence, Sized
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.errors import Conflict, InvalidRequest

#: Rows per INSERT statement of an import on Postgres.
_IMPORT_ROWS_PER_STATEMENT = 50_000
#: Keys per ``IN (...)`` query when rows are read by key.
_KEYS_PER_QUERY = 1000


def _refuse_lines(
    error: type[Conflict] | type[InvalidRequest],
    labels: Sequence[str],
    keys: Sequence[str],
    bad: Collection[str],
    message: str,
) -> None:
    """Refuse the import if a line's key (``keys``, one per line) is in ``bad``.

    The error names the lines (by ``labels``), the first few of them, each with ``message``
    formatted with its key.
    """
    if not bad:
        return
    details = [
        {"field": label, "message": message.format(key)}
        for key, label in zip(keys, labels, strict=True)
        if key in bad
    ][:20]
    first = details[0]
    raise error(
        f"The import was rejected, nothing was written: {first['field']}: {first['message']}",
        details=details,
    )


def _labels(labels: Sequence[str] | None, count: int) -> Sequence[str]:
    return labels if labels is not None else [f"record {index + 1}" for index in range(count)]


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
