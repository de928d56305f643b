"""Rows to models and back: the store's columns, row validation, and its stock errors."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.engine import Row

from dispatcher.errors import DomainNotFound, InvalidHost, WorkerNotFound
from dispatcher.hosts import normalize_domain
from workers_registry.entries import ENTRY_FIELDS, WorkerEntry, worker_entry
from workers_registry.models import CustomDomain, DomainStatus, Worker, WorkerSpec
from workers_registry.tables import custom_domains, workers

# Logged under the public module's name, as before the store was split.
_log = structlog.get_logger("workers_registry.store")

_WORKER_COLUMNS = tuple(workers.c)
#: What the data plane reads of a worker (``WorkerEntry``): no tags, no timestamps.
_ENTRY_COLUMNS = tuple(workers.c[name] for name in ENTRY_FIELDS)
_DOMAIN_COLUMNS = tuple(custom_domains.c)
_SPEC_FIELDS: set[str] = set(WorkerSpec.model_fields)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | str) -> datetime:
    # An aggregate (min) is not typed by the column, so SQLite hands back its text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_verification_token() -> str:
    """A random TXT value for a domain's ownership check (128 bits, hex)."""
    return secrets.token_hex(16)


def _status_values(status: DomainStatus, now: datetime) -> dict[str, Any]:
    """The onboarding columns of a status set by an operator.

    ``pending`` starts the checks (the first one due now, the timeout counted from now);
    any other status is the operator's decision and is not checked on a schedule.
    """
    return {
        "status_changed_at": now,
        "next_check_at": now if status is DomainStatus.PENDING else None,
        "failed_checks": 0,
        "failure_reason": None,
    }


def _domain_key(domain: str) -> str:
    """The stored form of a domain given by an operator; unparsable input stays as is."""
    try:
        return normalize_domain(domain.strip())
    except InvalidHost:
        return domain


def _worker_missing(name: str) -> WorkerNotFound:
    return WorkerNotFound(f"Worker '{name}' does not exist")


def _domain_missing(domain: str) -> DomainNotFound:
    return DomainNotFound(f"Domain '{domain}' is not registered")


#: Every field of a stored worker is set: one set shared by every worker read (pydantic would
#: give each its own, 728 bytes of a worker's ~1.4 KB). Never mutated: a copy of a frozen
#: model gets a copy of it.
_ALL_WORKER_FIELDS: set[str] = set(Worker.model_fields)


def _worker(row: Row[Any]) -> Worker | None:
    try:
        worker = Worker.model_validate(row._asdict())
        object.__setattr__(worker, "__pydantic_fields_set__", _ALL_WORKER_FIELDS)
        return worker
    except ValidationError as exc:
        # Only rows written around the store (plain SQL) can be invalid. Skip them instead of
        # making the whole registry unreadable.
        _log.warning("registry.invalid_worker_row", worker=row.name, errors=exc.error_count())
        return None


def _workers(rows: Sequence[Row[Any]]) -> list[Worker]:
    return [worker for row in rows if (worker := _worker(row)) is not None]


def _entry(row: Row[Any]) -> WorkerEntry | None:
    try:
        return worker_entry(row)
    except ValidationError as exc:
        # As ``_worker``: a row written around the store is skipped, not fatal.
        _log.warning("registry.invalid_worker_row", worker=row[0], errors=exc.error_count())
        return None


def _entries(rows: Sequence[Row[Any]]) -> list[WorkerEntry]:
    """The entries of ``_ENTRY_COLUMNS`` rows; invalid rows are logged and skipped."""
    return [entry for row in rows if (entry := _entry(row)) is not None]


def _domain(row: Row[Any]) -> CustomDomain:
    return CustomDomain.model_validate(row._asdict())


#: What reading a domain row raises when plain SQL put something else in a column (SQLite
#: keeps any value in any column): the column types' conversions (a timestamp) raise
#: ``ValueError`` or ``TypeError``, and pydantic's ``ValidationError`` is a ``ValueError``.
UNREADABLE_ROW = (ValueError, TypeError)


def _unreadable_domain(domain: str, exc: Exception) -> None:
    # As an invalid worker row: that host is skipped (not registered), not fatal.
    _log.warning("registry.invalid_domain_row", domain=domain, error=type(exc).__name__)
