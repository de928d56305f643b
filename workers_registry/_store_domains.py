"""The store's queries of custom domains: reads, writes, imports and the onboarding schedule."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dispatcher.errors import Conflict, InvalidRequest
from workers_registry._store_base import _StoreBase
from workers_registry._store_bulk import _existing, _import_limit, _insert, _labels, _refuse_lines
from workers_registry._store_rows import (
    _DOMAIN_COLUMNS,
    UNREADABLE_ROW,
    _aware,
    _domain,
    _domain_key,
    _domain_missing,
    _now,
    _status_values,
    _unreadable_domain,
    new_verification_token,
)
from workers_registry.models import (
    CustomDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    DomainStatus,
)
from workers_registry.tables import custom_domains, workers

_LOOKUP_DOMAIN = sa.select(*_DOMAIN_COLUMNS).where(
    custom_domains.c.domain == sa.bindparam("domain")
)
_DOMAINS_NAMED = sa.select(*_DOMAIN_COLUMNS).where(
    custom_domains.c.domain.in_(sa.bindparam("keys", expanding=True))
)


class _DomainQueries(_StoreBase):
    """Custom domains."""

    async def import_domains(
        self, specs: Sequence[CustomDomainCreate], labels: Sequence[str] | None = None
    ) -> int:
        """Register every custom domain of ``specs`` in one transaction, or none of them.

        Each gets its verification token and schedule as ``add_domain`` gives them.

        ``InvalidRequest`` naming the records (by ``labels``) whose worker does not exist;
        ``Conflict`` naming those already registered. On Postgres the whole import is
        announced by one notification.
        """
        labels = _labels(labels, len(specs))
        now = _now()
        async with self._transaction(
            self._writer,
            duplicate="A domain of the import is already registered",
            limit=_import_limit(specs),
        ) as connection:
            named = [spec.worker for spec in specs]
            missing = set(named) - await _existing(connection, workers.c.name, set(named))
            _refuse_lines(InvalidRequest, labels, named, missing, "worker '{}' does not exist")
            domains = [spec.domain for spec in specs]
            taken = await _existing(connection, custom_domains.c.domain, domains)
            _refuse_lines(Conflict, labels, domains, taken, "domain '{}' is already registered")
            rows = [
                {
                    **spec.model_dump(mode="json"),
                    **_status_values(spec.status, now),
                    "verification_token": new_verification_token(),
                    "created_at": now,
                    "updated_at": now,
                }
                for spec in specs
            ]
            await _insert(connection, custom_domains, rows)
        return len(specs)

    async def list_domains(self, worker: str | None = None) -> list[CustomDomain]:
        """Every custom domain (of one worker if given), ordered by domain."""
        query = sa.select(*_DOMAIN_COLUMNS).order_by(custom_domains.c.domain)
        if worker is not None:
            query = query.where(custom_domains.c.worker == worker.lower())
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(query)).all()
        return [_domain(row) for row in rows]

    async def get_domain(self, domain: str) -> CustomDomain | None:
        """A custom domain by name (normalised: case, trailing dot, IDNA) or ``None``."""
        return await self.lookup_domain(_domain_key(domain))

    async def lookup_domain(self, domain: str) -> CustomDomain | None:
        """The hot-path lookup: one primary-key SELECT of an already normalised host.

        Returns the entry whatever its status; callers route only ``routable`` ones. A row
        that cannot be read (written around the store) is logged and taken for none.
        """
        try:
            rows = await self._read(_LOOKUP_DOMAIN, {"domain": domain})
            return _domain(rows[0]) if rows else None
        except UNREADABLE_ROW as exc:
            _unreadable_domain(domain, exc)
            return None

    async def domains_named(self, domains: Collection[str]) -> list[CustomDomain]:
        """The custom domains among ``domains`` (normalised keys) that exist; a row that
        cannot be read is logged and skipped (then each key is read alone)."""
        try:
            return [_domain(row) for row in await self._read_by_key(_DOMAINS_NAMED, domains)]
        except UNREADABLE_ROW:
            pass
        # ``lookup_domain`` logs and skips the row that cannot be read.
        found = [await self.lookup_domain(domain) for domain in sorted(domains)]
        return [entry for entry in found if entry is not None]

    async def add_domain(self, spec: CustomDomainCreate) -> CustomDomain:
        """Register a custom domain with a fresh random verification token.

        A ``pending`` domain is due for its first check at once; any other status is the
        operator's word and is not scheduled. ``Conflict`` if the domain is registered
        already; ``InvalidRequest`` (``worker`` field) if its worker does not exist.
        """
        now = _now()
        values = {
            **spec.model_dump(mode="json"),
            **_status_values(spec.status, now),
            "verification_token": new_verification_token(),
            "created_at": now,
            "updated_at": now,
        }
        async with self._transaction(
            self._writer,
            duplicate=f"Domain '{spec.domain}' is already registered",
            unknown_worker=spec.worker,
        ) as connection:
            result = await connection.execute(
                sa.insert(custom_domains).values(values).returning(*_DOMAIN_COLUMNS)
            )
            return _domain(result.one())

    async def update_domain(self, domain: str, patch: CustomDomainPatch) -> CustomDomain:
        """Change a domain's status and/or worker.

        ``DomainNotFound`` if missing; ``InvalidRequest`` (``worker`` field) if the new worker
        does not exist.
        """
        key = _domain_key(domain)
        changes: dict[str, Any] = patch.model_dump(mode="json", exclude_none=True)
        if patch.status is not None:
            changes.update(_status_values(patch.status, _now()))
            changes["verification_token"] = sa.func.coalesce(
                custom_domains.c.verification_token, new_verification_token()
            )
        if not changes:
            found = await self.lookup_domain(key)
            if found is None:
                raise _domain_missing(domain)
            return found
        async with self._transaction(self._writer, unknown_worker=patch.worker) as connection:
            result = await connection.execute(
                sa.update(custom_domains)
                .where(custom_domains.c.domain == key)
                .values({**changes, "updated_at": _now()})
                .returning(*_DOMAIN_COLUMNS)
            )
            row = result.one_or_none()
            if row is None:
                raise _domain_missing(domain)
            return _domain(row)

    async def set_domain_status(self, domain: str, status: DomainStatus | str) -> CustomDomain:
        """Change a domain's status; ``DomainNotFound`` if missing."""
        return await self.update_domain(domain, CustomDomainPatch(status=DomainStatus(status)))

    async def due_domains(self, now: datetime, limit: int) -> list[CustomDomain]:
        """Domains whose next check is due at ``now``, the most overdue first."""
        query = (
            sa.select(*_DOMAIN_COLUMNS)
            .where(custom_domains.c.next_check_at <= now)
            .order_by(custom_domains.c.next_check_at)
            .limit(limit)
        )
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(query)).all()
        return [_domain(row) for row in rows]

    async def next_check_at(self) -> datetime | None:
        """When the earliest scheduled check is due (``None``: nothing is scheduled)."""
        query = sa.select(sa.func.min(custom_domains.c.next_check_at))
        async with self._transaction(self._reader) as connection:
            value = (await connection.execute(query)).scalar_one_or_none()
        return None if value is None else _aware(value)

    async def record_check(
        self, seen: CustomDomain, changes: dict[str, Any]
    ) -> CustomDomain | None:
        """Write the outcome of a check of ``seen``, unless the row changed since it was read.

        ``changes`` are column values (``status``, ``checked_at``, ``next_check_at``,
        ``failure_reason``, ``failed_checks``); a status change also sets
        ``status_changed_at``. The write is conditional on ``updated_at``, so an operator's
        change made while the check was in flight is never overwritten. ``None`` when the row
        changed or is gone.
        """
        now = _now()
        values = {**changes, "updated_at": now}
        if "status" in changes and changes["status"] != seen.status:
            values["status_changed_at"] = now
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.update(custom_domains)
                .where(
                    custom_domains.c.domain == seen.domain,
                    custom_domains.c.updated_at == seen.updated_at,
                )
                .values(values)
                .returning(*_DOMAIN_COLUMNS)
            )
            row = result.one_or_none()
        return None if row is None else _domain(row)

    async def count_domains_by_status(self) -> dict[str, int]:
        """How many custom domains have each status."""
        query = sa.select(custom_domains.c.status, sa.func.count()).group_by(
            custom_domains.c.status
        )
        async with self._transaction(self._reader) as connection:
            rows = (await connection.execute(query)).all()
        return {str(status): int(count) for status, count in rows}

    async def remove_domain(self, domain: str) -> None:
        """Remove a custom domain; ``DomainNotFound`` if missing."""
        async with self._transaction(self._writer) as connection:
            result = await connection.execute(
                sa.delete(custom_domains).where(custom_domains.c.domain == _domain_key(domain))
            )
            if result.rowcount == 0:
                raise _domain_missing(domain)
