"""The onboarding state machine: what a check's findings do to a domain. Pure; no I/O.

    pending  --TXT matches, points at the platform-->  active   (re-checked every
    pending  --TXT matches------------------------->  verified  domain_recheck_interval)
    pending  --no TXT / wrong value / NXDOMAIN----->  pending + failure_reason, next check
                                                        after the back-off
    pending  --past domain_verify_timeout---------->  failed
    verified --points at the platform-------------->  active
    active   --not pointing, 3 checks in a row----->  moved    (no routing, no certificate)
    any      --timeout / SERVFAIL------------------>  only the next check time changes

Back-off: ``domain_verify_min_interval`` doubling per check without success, capped at
``domain_verify_max_interval``. ``moved`` and ``failed`` are not checked on a schedule; an
on-demand check (``domains verify``) runs the pending rules on them, so a customer who fixed
their records is taken back without the operator touching the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dispatcher.onboarding.dns import Finding
from dispatcher.settings import Settings
from workers_registry.models import CustomDomain, DomainStatus

__all__ = ["MOVED_AFTER_MISSES", "Findings", "Plan", "backoff", "plan_check"]

#: Consecutive checks of an active domain that find it elsewhere before it becomes ``moved``.
MOVED_AFTER_MISSES = 3

_MAX_DOUBLINGS = 32


@dataclass(frozen=True, slots=True)
class Findings:
    """What one check found: the TXT question (``None`` when not asked) and the pointing one."""

    txt: Finding | None
    points: Finding


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one check: the metric ``result``, the new ``status``, the ``reason``
    (``None``: nothing wrong) and the column values to write."""

    result: str
    status: DomainStatus
    reason: str | None
    changes: dict[str, Any] = field(default_factory=dict)


def backoff(failed_checks: int, settings: Settings) -> timedelta:
    """The wait before the next check of a domain after ``failed_checks`` checks in vain."""
    doublings = min(max(failed_checks, 0), _MAX_DOUBLINGS)
    seconds = min(
        settings.domain_verify_min_interval * 2**doublings, settings.domain_verify_max_interval
    )
    return timedelta(seconds=seconds)


def needs_txt(domain: CustomDomain) -> bool:
    """Whether a check of ``domain`` asks for the TXT record (ownership not proven yet)."""
    return domain.status not in (DomainStatus.VERIFIED, DomainStatus.ACTIVE)


def plan_check(domain: CustomDomain, found: Findings, now: datetime, settings: Settings) -> Plan:
    """What ``found`` does to ``domain`` at ``now``."""
    if domain.status is DomainStatus.ACTIVE:
        return _active(domain, found.points, now, settings)
    if domain.status is DomainStatus.VERIFIED:
        return _verified(domain, found.points, now, settings)
    assert found.txt is not None, "a domain not yet verified is checked for its TXT record"
    return _unproven(domain, found.txt, found.points, now, settings)


def _scheduled(domain: CustomDomain, when: datetime) -> datetime | None:
    # moved and failed domains stay off the schedule (they are checked on demand only).
    if domain.status in (DomainStatus.MOVED, DomainStatus.FAILED):
        return None
    return when


def _unproven(
    domain: CustomDomain, txt: Finding, points: Finding, now: datetime, settings: Settings
) -> Plan:
    recheck = now + timedelta(seconds=settings.domain_recheck_interval)
    if txt.verdict == "yes":
        if points.verdict == "yes":
            return Plan("active", DomainStatus.ACTIVE, None, _reset(now, recheck))
        waiting = f"TXT record verified; {points.reason or 'not pointing at the platform yet'}"
        verified = _reset(now, now + backoff(0, settings))
        verified["failure_reason"] = waiting
        return Plan("verified", DomainStatus.VERIFIED, waiting, verified)
    misses = domain.failed_checks + 1
    changes: dict[str, Any] = {
        "failed_checks": misses,
        "next_check_at": _scheduled(domain, now + backoff(domain.failed_checks, settings)),
    }
    reason: str | None
    if txt.verdict == "unknown":
        result, reason = txt.cause, domain.failure_reason
    else:
        nxdomain = points.verdict == "nxdomain"
        result = points.cause if nxdomain else txt.cause
        reason = points.reason if nxdomain else txt.reason
        changes.update(checked_at=now, failure_reason=reason)
    if domain.status is DomainStatus.PENDING and _timed_out(domain, now, settings):
        reason = f"Not verified within {_duration(settings.domain_verify_timeout)}: " + (
            reason or "the DNS servers never answered"
        )
        changes.update(failure_reason=reason, next_check_at=None)
        return Plan(result, DomainStatus.FAILED, reason, changes)
    return Plan(result, domain.status, reason, changes)


def _verified(domain: CustomDomain, points: Finding, now: datetime, settings: Settings) -> Plan:
    recheck = now + timedelta(seconds=settings.domain_recheck_interval)
    if points.verdict == "yes":
        return Plan("active", DomainStatus.ACTIVE, None, _reset(now, recheck))
    changes: dict[str, Any] = {
        "failed_checks": domain.failed_checks + 1,
        "next_check_at": now + backoff(domain.failed_checks + 1, settings),
    }
    if points.verdict == "unknown":
        return Plan(points.cause, domain.status, domain.failure_reason, changes)
    reason = f"TXT record verified; {points.reason}"
    changes.update(checked_at=now, failure_reason=reason)
    return Plan(points.cause, domain.status, reason, changes)


def _active(domain: CustomDomain, points: Finding, now: datetime, settings: Settings) -> Plan:
    recheck = now + timedelta(seconds=settings.domain_recheck_interval)
    if points.verdict == "yes":
        return Plan("active", DomainStatus.ACTIVE, None, _reset(now, recheck))
    if points.verdict == "unknown":
        retry = min(settings.domain_verify_max_interval, settings.domain_recheck_interval)
        retried: dict[str, Any] = {"next_check_at": now + timedelta(seconds=retry)}
        return Plan(points.cause, domain.status, domain.failure_reason, retried)
    misses = domain.failed_checks + 1
    changes: dict[str, Any] = {
        "failed_checks": misses,
        "checked_at": now,
        "failure_reason": points.reason,
        "next_check_at": recheck,
    }
    if misses >= MOVED_AFTER_MISSES:
        reason = f"No longer points at the platform ({misses} checks in a row): {points.reason}"
        changes.update(failure_reason=reason, next_check_at=None)
        return Plan(points.cause, DomainStatus.MOVED, reason, changes)
    return Plan(points.cause, domain.status, points.reason, changes)


def _reset(now: datetime, next_check: datetime) -> dict[str, Any]:
    return {
        "checked_at": now,
        "next_check_at": next_check,
        "failed_checks": 0,
        "failure_reason": None,
    }


def _timed_out(domain: CustomDomain, now: datetime, settings: Settings) -> bool:
    since = domain.status_changed_at or domain.created_at
    return (now - since).total_seconds() >= settings.domain_verify_timeout


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} seconds"
