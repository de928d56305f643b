"""Custom-domain onboarding: verification token, check schedule, the ``moved`` status.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Adds to ``custom_domains``: ``verification_token`` (the TXT value; existing rows get a random
one), ``status_changed_at``, ``checked_at``, ``next_check_at`` (indexed: the verifier asks for
the domains that are due), ``failure_reason`` and ``failed_checks``, and lets ``status`` be
``moved``.

SQLite cannot change a CHECK constraint in place: alembic's batch mode copies the table, and
the copy has none of the original's triggers (the registry's version and change-log triggers).
They are read from ``sqlite_master`` before the copy and created again after it, whatever they
are, so this migration does not need to know them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_STATUSES = "status IN ('pending', 'verified', 'active', 'failed')"
_NEW_STATUSES = "status IN ('pending', 'verified', 'active', 'moved', 'failed')"

_RANDOM_TOKEN = {
    "postgresql": "md5(random()::text || clock_timestamp()::text || domain)",
    "sqlite": "lower(hex(randomblob(16)))",
}


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


@contextmanager
def _keeping_sqlite_triggers() -> Iterator[None]:
    """Create the table's triggers again after a batch copy of it (SQLite only)."""
    bind = op.get_bind()
    triggers: list[str] = []
    if bind.dialect.name == "sqlite":
        rows = bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'custom_domains'"
        )
        triggers = [str(row[0]) for row in rows]
    yield
    for trigger in triggers:
        op.execute(trigger)


def _set_status_check(allowed: str) -> None:
    with _keeping_sqlite_triggers(), op.batch_alter_table("custom_domains") as batch:
        batch.drop_constraint(op.f("ck_custom_domains_status"), type_="check")
        batch.create_check_constraint(op.f("ck_custom_domains_status"), sa.text(allowed))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with _keeping_sqlite_triggers(), op.batch_alter_table("custom_domains") as batch:
        batch.add_column(sa.Column("verification_token", sa.Text(), nullable=True))
        batch.add_column(_timestamp("status_changed_at"))
        batch.add_column(_timestamp("checked_at"))
        batch.add_column(_timestamp("next_check_at"))
        batch.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("failed_checks", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.create_index(op.f("ix_custom_domains_next_check_at"), "custom_domains", ["next_check_at"])
    # Rows from before onboarding: a token (so they can be checked on demand), and their
    # status counted from their last change.
    token = _RANDOM_TOKEN.get(dialect, _RANDOM_TOKEN["sqlite"])  # a constant of this module
    op.execute(
        "UPDATE custom_domains SET"  # noqa: S608
        f" verification_token = {token}, status_changed_at = updated_at"
        " WHERE verification_token IS NULL"
    )
    _set_status_check(_NEW_STATUSES)


def downgrade() -> None:
    op.execute("UPDATE custom_domains SET status = 'failed' WHERE status = 'moved'")
    _set_status_check(_OLD_STATUSES)
    op.drop_index(op.f("ix_custom_domains_next_check_at"), table_name="custom_domains")
    with _keeping_sqlite_triggers(), op.batch_alter_table("custom_domains") as batch:
        for column in (
            "failed_checks",
            "failure_reason",
            "next_check_at",
            "checked_at",
            "status_changed_at",
            "verification_token",
        ):
            batch.drop_column(column)
