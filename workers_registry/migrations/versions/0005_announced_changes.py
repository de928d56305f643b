"""Announcements that carry the changes of small transactions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Until now a transaction was announced with ``{"seq": N}`` only, so every process that heard it
read the change log to learn what changed: one query per change and process. Now the
announcement of a transaction that changed at most ``ANNOUNCED_CHANGES`` rows also carries
them:

    {"seq": N, "first": F, "changes": [["workers", "shop", "update"], ...]}

``first`` is the transaction's first sequence number and ``changes`` its log entries F..N in
order (table, key, operation; the key ``null`` for a TRUNCATE). A larger transaction (a bulk
import) is still announced with ``{"seq": N}`` alone, and a follower reads the log as before.

How the announcement knows ``first``: the record trigger notes the transaction's first
sequence number in a transaction-local setting (``dispatcher.first_seq``, ``set_config(...,
true)``: gone at commit or rollback, and undone with a rolled-back savepoint, as the entries
are). Every call of the deferred announce trigger of one transaction still builds the same
payload (the final state), so Postgres delivers it once. A setting that is not a plain number,
or that does not describe at most ``ANNOUNCED_CHANGES`` entries ending at N, and a payload
over ``_MAX_PAYLOAD`` bytes (Postgres refuses 8,000) fall back to ``{"seq": N}``: a malformed
setting can never make a commit fail.

Followers treat what an announcement carries as a hint they confirm against the log (see
``workers_registry.changes``). Followers of an earlier release read only ``seq`` and ignore
the rest. SQLite has no NOTIFY: nothing changes there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

__all__ = ["ANNOUNCED_CHANGES", "downgrade", "upgrade"]

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The most changes one announcement carries.
ANNOUNCED_CHANGES = 32
_MAX_PAYLOAD = 7900

_PG_RECORD_FUNCTION = """
CREATE OR REPLACE FUNCTION registry_record_changes() RETURNS trigger
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
    -- The transaction's first sequence number, for its announcement (transaction-local).
    IF coalesce(current_setting('dispatcher.first_seq', true), '') = '' THEN
        PERFORM set_config(
            'dispatcher.first_seq', (last_seq - cardinality(keys) + 1)::text, true
        );
    END IF;
    RETURN NULL;
END;
$$
"""

_PG_ANNOUNCE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION registry_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    noted text;
    first_seq bigint;
    payload text;
BEGIN
    -- Runs at commit, once per bump; every call of one transaction builds the same payload
    -- (from the final state) and Postgres delivers it once.
    SELECT version INTO last_seq FROM registry_version WHERE id = 1;
    noted := current_setting('dispatcher.first_seq', true);
    IF noted ~ '^[0-9]{{1,18}}$' THEN
        first_seq := noted::bigint;
        IF first_seq <= last_seq AND last_seq - first_seq < {ANNOUNCED_CHANGES} THEN
            SELECT json_build_object(
                'seq', last_seq,
                'first', first_seq,
                'changes', json_agg(json_build_array(table_name, key, op) ORDER BY seq)
            )::text
            INTO payload
            FROM registry_changes WHERE seq BETWEEN first_seq AND last_seq;
        END IF;
    END IF;
    IF payload IS NULL OR octet_length(payload) > {_MAX_PAYLOAD} THEN
        payload := json_build_object('seq', last_seq)::text;
    END IF;
    PERFORM pg_notify('dispatcher_registry', payload);
    RETURN NULL;
END;
$$
"""  # noqa: S608 (built from constants)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_RECORD_FUNCTION)
        op.execute(_PG_ANNOUNCE_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        previous = context.script.get_revision("0002").module  # the definitions it replaced
        for definition in (previous._PG_RECORD_FUNCTION, previous._PG_ANNOUNCE_FUNCTION):
            op.execute(definition.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
