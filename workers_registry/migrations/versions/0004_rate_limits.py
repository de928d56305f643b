"""Per-worker request-rate limits: ``rate_limit``, ``rate_burst``, ``client_rate_limit``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

Three nullable columns on ``workers`` (NULL: no limit; ``rate_burst`` NULL: one second's worth
of ``rate_limit``). Adding nullable columns without defaults rewrites nothing on either
backend. The version triggers of 0001 fire on row changes only, so this migration announces
nothing by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("rate_limit", sa.Float),
    ("rate_burst", sa.Integer),
    ("client_rate_limit", sa.Float),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("workers", sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not alembic's batch mode: a batch
    # copy of ``workers`` would drop its version triggers and the custom domains' foreign key.
    for name, _ in reversed(_COLUMNS):
        op.drop_column("workers", name)
