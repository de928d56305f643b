"""The registry schema as SQLAlchemy Core tables: the one description the store queries.

The same schema on Postgres and SQLite. The tables are *created* by the alembic migrations in
``workers_registry/migrations`` (which also install the version triggers); ``metadata`` here is
what the store builds its statements from and what autogenerate compares against, so a change
to a table means a new migration. No I/O in this module.

- ``workers``: one row per tenant; ``upstreams`` is the ordered list of base URLs.
- ``custom_domains``: customer domains mapped to a worker (cascade on delete and rename), with
  their onboarding state (verification token, check schedule, last failure).
- ``registry_version``: a single row (``id = 1``) whose ``version`` every insert, update and
  delete on the two tables above bumps by one per row, through triggers, so edits made with
  plain SQL count too. The version is the sequence number of the last change.
- ``registry_changes``: the change log the same triggers write, one entry per changed row:
  ``seq`` (the version that change brought), ``table_name``, ``key`` (the row's primary key;
  none for a TRUNCATE), ``op`` (``insert|update|delete|truncate``) and ``changed_at``. Pruned
  after ``registry_change_retention`` seconds. On Postgres each transaction that changed
  something is announced once on the ``REGISTRY_CHANNEL`` channel with ``{"seq": N}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

__all__ = [
    "REGISTRY_CHANNEL",
    "REGISTRY_VERSION_ID",
    "UTCDateTime",
    "custom_domains",
    "metadata",
    "registry_changes",
    "registry_version",
    "workers",
]

#: The Postgres ``LISTEN``/``NOTIFY`` channel the version trigger announces changes on.
REGISTRY_CHANNEL = "dispatcher_registry"

#: Primary key of the one row of ``registry_version``.
REGISTRY_VERSION_ID = 1

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """``timestamptz`` that always round-trips as an aware UTC ``datetime``.

    SQLite has no time zone type: values are stored as naive UTC text and given back their
    ``tzinfo`` on the way out, so both backends hand the store the same kind of value.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on Postgres (indexable, compact), JSON text on SQLite.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _timestamps() -> tuple[sa.Column[datetime], sa.Column[datetime]]:
    return (
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", UTCDateTime(), nullable=False, server_default=sa.func.now()),
    )


workers = sa.Table(
    "workers",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("upstreams", _JSON, nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("preserve_host", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("max_body_bytes", sa.BigInteger(), nullable=True),
    sa.Column("upstream_timeout", sa.Float(), nullable=True),
    sa.Column("max_concurrency", sa.Integer(), nullable=True),
    sa.Column("tags", _JSON, nullable=False, server_default=sa.text("'{}'")),
    *_timestamps(),
    sa.Column("rate_limit", sa.Float(), nullable=True),
    sa.Column("rate_burst", sa.Integer(), nullable=True),
    sa.Column("client_rate_limit", sa.Float(), nullable=True),
)

custom_domains = sa.Table(
    "custom_domains",
    metadata,
    sa.Column("domain", sa.Text(), primary_key=True),
    sa.Column(
        "worker",
        sa.Text(),
        sa.ForeignKey("workers.name", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'pending'")),
    *_timestamps(),
    # Onboarding (migration 0003): the TXT token, the check schedule and its outcome.
    sa.Column("verification_token", sa.Text(), nullable=True),
    sa.Column("status_changed_at", UTCDateTime(), nullable=True),
    sa.Column("checked_at", UTCDateTime(), nullable=True),
    sa.Column("next_check_at", UTCDateTime(), nullable=True, index=True),
    sa.Column("failure_reason", sa.Text(), nullable=True),
    sa.Column("failed_checks", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.CheckConstraint(
        "status IN ('pending', 'verified', 'active', 'moved', 'failed')", name="status"
    ),
)

registry_version = sa.Table(
    "registry_version",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.CheckConstraint(f"id = {REGISTRY_VERSION_ID}", name="single_row"),
)

registry_changes = sa.Table(
    "registry_changes",
    metadata,
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("table_name", sa.Text(), nullable=False),
    sa.Column("key", sa.Text(), nullable=True),
    sa.Column("op", sa.Text(), nullable=False),
    sa.Column("changed_at", UTCDateTime(), nullable=False, server_default=sa.func.now()),
)
