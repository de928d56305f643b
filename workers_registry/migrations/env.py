"""Alembic environment of the registry schema (async drivers only).

``workers_registry.migrate.upgrade`` is the normal way in: it opens an async connection, takes
the migration lock and runs alembic on that connection through ``run_sync``; alembic finds it
in ``config.attributes["connection"]`` and the whole upgrade happens in the caller's
transaction. Without a connection (alembic used directly with a ``sqlalchemy.url`` option),
this module builds its own async engine and does the same with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from workers_registry.tables import metadata

__all__ = ["do_run_migrations", "run_async_migrations"]

config = context.config


def do_run_migrations(connection: Connection) -> None:
    """Run the pending migrations on ``connection`` (a sync facade of an async connection)."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """Render the migrations as SQL (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set the sqlalchemy.url option or pass a connection")
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
