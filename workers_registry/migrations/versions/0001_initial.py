"""Initial registry schema: workers, custom domains, the version counter and its triggers.

Revision ID: 0001
Revises:
Create Date: 2025-11-24

Every INSERT, UPDATE and DELETE on ``workers`` and ``custom_domains`` bumps
``registry_version.version`` by one through triggers, so edits made with plain SQL are seen by
the dispatchers' version poll too. On Postgres the trigger also sends
``NOTIFY dispatcher_registry, '{"table", "op", "key", "version"}'`` (delivered on commit, so a
rolled-back change announces nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["downgrade", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables whose changes bump the version, with the column that names a row.
_VERSIONED = {"workers": "name", "custom_domains": "domain"}
_OPERATIONS = ("insert", "update", "delete")

_PG_BUMP_FUNCTION = """
CREATE FUNCTION registry_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    new_version bigint;
    changed jsonb;
BEGIN
    UPDATE registry_version SET version = version + 1 WHERE id = 1
        RETURNING version INTO new_version;
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);  -- NULL for the statement-level TRUNCATE trigger
    END IF;
    PERFORM pg_notify('dispatcher_registry', json_build_object(
        'table', TG_TABLE_NAME,
        'op', lower(TG_OP),
        'key', changed ->> TG_ARGV[0],
        'version', new_version
    )::text);
    RETURN NULL;
END;
$$
"""

_SQLITE_TRIGGER = (
    "CREATE TRIGGER {table}_{operation}_bump_version AFTER {operation} ON {table} BEGIN"
    " UPDATE registry_version SET version = version + 1 WHERE id = 1; END"
)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("upstreams", _json(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("preserve_host", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_body_bytes", sa.BigInteger(), nullable=True),
        sa.Column("upstream_timeout", sa.Float(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("tags", _json(), nullable=False, server_default=sa.text("'{}'")),
        *_timestamps(),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    op.create_table(
        "custom_domains",
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'pending'")),
        *_timestamps(),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_custom_domains")),
        sa.ForeignKeyConstraint(
            ["worker"],
            ["workers.name"],
            name=op.f("fk_custom_domains_worker_workers"),
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'verified', 'active', 'failed')",
            name=op.f("ck_custom_domains_status"),
        ),
    )
    op.create_index(op.f("ix_custom_domains_worker"), "custom_domains", ["worker"])
    op.create_table(
        "registry_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_version")),
        sa.CheckConstraint("id = 1", name=op.f("ck_registry_version_single_row")),
    )
    op.execute("INSERT INTO registry_version (id, version) VALUES (1, 0)")

    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_BUMP_FUNCTION)
        for table, key in _VERSIONED.items():
            op.execute(
                f"CREATE TRIGGER {table}_bump_version"
                f" AFTER INSERT OR UPDATE OR DELETE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION registry_bump_version('{key}')"
            )
            op.execute(
                f"CREATE TRIGGER {table}_truncate_bump_version"
                f" AFTER TRUNCATE ON {table}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION registry_bump_version('{key}')"
            )
    else:
        # SQLite: AFTER triggers are per row; one per table and operation.
        for table in _VERSIONED:
            for operation in _OPERATIONS:
                op.execute(_SQLITE_TRIGGER.format(table=table, operation=operation))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _VERSIONED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_truncate_bump_version ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_bump_version ON {table}")
        op.execute("DROP FUNCTION IF EXISTS registry_bump_version()")
    else:
        for table in _VERSIONED:
            for operation in _OPERATIONS:
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{operation}_bump_version")
    op.drop_table("registry_version")
    op.drop_index(op.f("ix_custom_domains_worker"), table_name="custom_domains")
    op.drop_table("custom_domains")
    op.drop_table("workers")
