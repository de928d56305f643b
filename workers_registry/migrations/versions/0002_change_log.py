"""The change log: every change to workers and custom domains, by sequence number.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

``registry_changes`` holds one entry per changed row: ``seq`` (the registry version the change
brought the registry to), the table, the row's key and the operation. The version counter of
0001 *is* the sequence: a trigger takes the ``registry_version`` row lock, adds the number of
rows changed and writes their entries in the same transaction, so sequence numbers have no
holes and are visible in commit order (the lock is held to commit). A follower that applied
sequence N reads ``seq > N``; if the next entry it finds is not N + 1 the log was pruned past it.

Postgres: statement-level triggers with transition tables (one bump and one INSERT ... SELECT
per statement, however many rows it changed), a TRUNCATE trigger writing one ``truncate`` entry
without a key, and ONE ``NOTIFY dispatcher_registry, '{"seq": N}'`` per transaction: a deferred
constraint trigger on ``registry_version`` announces the version at commit; Postgres delivers
identical payloads of one transaction once. SQLite: row triggers doing the same per row
(no NOTIFY there; followers poll). An UPDATE that renames a key records the old key too.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

__all__ = ["downgrade", "upgrade"]

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LOGGED = {"workers": "name", "custom_domains": "domain"}
_OPERATIONS = ("insert", "update", "delete")

_PG_RECORD_FUNCTION = """
CREATE FUNCTION registry_record_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    keys text[];
    last_seq bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        keys := ARRAY[NULL::text];
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('SELECT array_agg(%I) FROM new_rows', TG_ARGV[0]) INTO keys;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT array_agg(%I) FROM old_rows', TG_ARGV[0]) INTO keys;
    ELSE  -- UPDATE: the new keys, and the old ones a rename left behind
        EXECUTE format(
            'SELECT array_agg(k) FROM (SELECT %1$I AS k FROM new_rows'
            ' UNION SELECT %1$I FROM old_rows) AS changed', TG_ARGV[0]
        ) INTO keys;
    END IF;
    IF keys IS NULL THEN
        RETURN NULL;  -- the statement changed no row
    END IF;
    UPDATE registry_version SET version = version + cardinality(keys) WHERE id = 1
        RETURNING version INTO last_seq;
    INSERT INTO registry_changes (seq, table_name, key, op)
        SELECT last_seq - cardinality(keys) + ordinality, TG_TABLE_NAME, key, lower(TG_OP)
        FROM unnest(keys) WITH ORDINALITY AS changed(key, ordinality);
    RETURN NULL;
END;
$$
"""

_PG_ANNOUNCE_FUNCTION = """
CREATE FUNCTION registry_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Runs at commit, once per bump; every call of one transaction sends the same payload
    -- (the final version) and Postgres delivers it once.
    PERFORM pg_notify('dispatcher_registry', json_build_object(
        'seq', (SELECT version FROM registry_version WHERE id = 1)
    )::text);
    RETURN NULL;
END;
$$
"""

_PG_TRANSITION = {"insert": "NEW TABLE AS new_rows", "delete": "OLD TABLE AS old_rows"}

_SQLITE_ENTRY = (
    "INSERT INTO registry_changes (seq, table_name, key, op, changed_at)"
    " SELECT version, '{table}', {row}.{key}, '{op}', strftime('%Y-%m-%d %H:%M:%f', 'now')"
    " FROM registry_version WHERE id = 1"
)
_SQLITE_BUMP = "UPDATE registry_version SET version = version + 1 WHERE id = 1"


def _sqlite_trigger(table: str, key: str, operation: str) -> str:
    row = "OLD" if operation == "delete" else "NEW"
    body = [_SQLITE_BUMP, _SQLITE_ENTRY.format(table=table, row=row, key=key, op=operation)]
    if operation == "update":  # a rename: the old key is gone
        body += [
            f"{_SQLITE_BUMP} AND OLD.{key} IS NOT NEW.{key}",
            _SQLITE_ENTRY.format(table=table, row="OLD", key=key, op=operation)
            + f" AND OLD.{key} IS NOT NEW.{key}",
        ]
    return (
        f"CREATE TRIGGER {table}_{operation}_log_change AFTER {operation.upper()} ON {table}"
        f" BEGIN {'; '.join(body)}; END"
    )


def upgrade() -> None:
    op.create_table(
        "registry_changes",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column(
            "changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_registry_changes")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in _LOGGED:
            op.execute(f"DROP TRIGGER {table}_truncate_bump_version ON {table}")
            op.execute(f"DROP TRIGGER {table}_bump_version ON {table}")
        op.execute("DROP FUNCTION registry_bump_version()")
        op.execute(_PG_RECORD_FUNCTION)
        op.execute(_PG_ANNOUNCE_FUNCTION)
        for table, key in _LOGGED.items():
            for operation in _OPERATIONS:
                transitions = _PG_TRANSITION.get(
                    operation, "OLD TABLE AS old_rows NEW TABLE AS new_rows"
                )
                op.execute(
                    f"CREATE TRIGGER {table}_{operation}_log_change"
                    f" AFTER {operation.upper()} ON {table} REFERENCING {transitions}"
                    f" FOR EACH STATEMENT EXECUTE FUNCTION registry_record_changes('{key}')"
                )
            op.execute(
                f"CREATE TRIGGER {table}_truncate_log_change AFTER TRUNCATE ON {table}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION registry_record_changes('{key}')"
            )
        op.execute(
            "CREATE CONSTRAINT TRIGGER registry_version_announce AFTER UPDATE ON registry_version"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION registry_announce()"
        )
    else:
        for table, key in _LOGGED.items():
            for operation in _OPERATIONS:
                op.execute(f"DROP TRIGGER {table}_{operation}_bump_version")
                op.execute(_sqlite_trigger(table, key, operation))


def downgrade() -> None:
    initial = context.script.get_revision("0001").module  # its trigger definitions
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER registry_version_announce ON registry_version")
        for table in _LOGGED:
            op.execute(f"DROP TRIGGER {table}_truncate_log_change ON {table}")
            for operation in _OPERATIONS:
                op.execute(f"DROP TRIGGER {table}_{operation}_log_change ON {table}")
        op.execute("DROP FUNCTION registry_announce()")
        op.execute("DROP FUNCTION registry_record_changes()")
        op.execute(initial._PG_BUMP_FUNCTION)
        for table, key in _LOGGED.items():
            op.execute(
                f"CREATE TRIGGER {table}_bump_version"
                f" AFTER INSERT OR UPDATE OR DELETE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION registry_bump_version('{key}')"
            )
            op.execute(
                f"CREATE TRIGGER {table}_truncate_bump_version AFTER TRUNCATE ON {table}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION registry_bump_version('{key}')"
            )
    else:
        for table in _LOGGED:
            for operation in _OPERATIONS:
                op.execute(f"DROP TRIGGER {table}_{operation}_log_change")
                op.execute(initial._SQLITE_TRIGGER.format(table=table, operation=operation))
    op.drop_table("registry_changes")
