"""The onboarding state machine and its back-off, as pure functions (no DNS, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.onboarding.dns import Finding
from dispatcher.onboarding.schedule import MOVED_AFTER_MISSES, Findings, backoff, plan_check
from dispatcher.settings import Settings
from workers_registry.models import CustomDomain, DomainStatus

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SETTINGS = Settings()
YES = Finding("yes")
NO_TXT = Finding("no", "No TXT record at _dispatcher-challenge.shop.example.org", "txt_missing")
ELSEWHERE = Finding("no", "shop.example.org is a CNAME to x.example.net", "not_pointed")
TIMEOUT = Finding("unknown", "The DNS servers did not answer", "timeout")


def domain(status: DomainStatus, **fields: Any) -> CustomDomain:
    values: dict[str, Any] = {
        "domain": "shop.example.org",
        "worker": "shop",
        "status": status,
        "created_at": NOW - timedelta(hours=1),
        "updated_at": NOW - timedelta(minutes=1),
        "status_changed_at": NOW - timedelta(hours=1),
        "verification_token": "token",
        "next_check_at": NOW,
        "failure_reason": "an earlier reason",
    }
    return CustomDomain(**{**values, **fields})


@pytest.mark.parametrize(
    ("failed_checks", "seconds"),
    [
        pytest.param(0, 60, id="first-retry-after-the-minimum"),
        pytest.param(1, 120, id="doubles"),
        pytest.param(5, 1920, id="keeps-doubling"),
        pytest.param(8, 14_400, id="capped-at-the-maximum"),
        pytest.param(10_000, 14_400, id="no-overflow-after-many-checks"),
    ],
)
def test_backoff_doubles_from_the_minimum_up_to_the_maximum(
    failed_checks: int, seconds: int
) -> None:
    assert backoff(failed_checks, SETTINGS) == timedelta(seconds=seconds)


def test_the_first_ten_checks_fall_within_about_half_a_day_by_default() -> None:
    elapsed = sum((backoff(n, SETTINGS) for n in range(9)), timedelta())
    assert timedelta(hours=4) < elapsed < timedelta(hours=12)


def test_a_pending_domain_with_txt_and_pointing_becomes_active_for_a_day() -> None:
    plan = plan_check(domain(DomainStatus.PENDING), Findings(YES, YES), NOW, SETTINGS)
    assert (plan.result, plan.status, plan.reason) == ("active", DomainStatus.ACTIVE, None)
    assert plan.changes["next_check_at"] == NOW + timedelta(days=1)
    assert (plan.changes["failed_checks"], plan.changes["failure_reason"]) == (0, None)


def test_a_pending_domain_without_txt_stays_pending_with_the_reason_and_backs_off() -> None:
    before = domain(DomainStatus.PENDING, failed_checks=3)
    plan = plan_check(before, Findings(NO_TXT, YES), NOW, SETTINGS)
    assert (plan.status, plan.result, plan.reason) == ("pending", "txt_missing", NO_TXT.reason)
    assert plan.changes["next_check_at"] == NOW + timedelta(seconds=480)
    assert plan.changes["failed_checks"] == 4
    assert plan.changes["checked_at"] == NOW


def test_a_timeout_changes_only_the_schedule() -> None:
    plan = plan_check(domain(DomainStatus.PENDING), Findings(TIMEOUT, TIMEOUT), NOW, SETTINGS)
    assert (plan.status, plan.result, plan.reason) == ("pending", "timeout", "an earlier reason")
    assert set(plan.changes) == {"next_check_at", "failed_checks"}


def test_a_pending_domain_past_the_timeout_fails_with_the_last_reason() -> None:
    old = domain(DomainStatus.PENDING, status_changed_at=NOW - timedelta(days=7))
    plan = plan_check(old, Findings(NO_TXT, YES), NOW, SETTINGS)
    assert plan.status is DomainStatus.FAILED
    assert plan.reason == f"Not verified within 7 days: {NO_TXT.reason}"
    assert plan.changes["next_check_at"] is None


def test_a_pending_domain_whose_dns_never_answered_fails_too() -> None:
    old = domain(DomainStatus.PENDING, status_changed_at=NOW - timedelta(days=8))
    old = old.model_copy(update={"failure_reason": None})
    plan = plan_check(old, Findings(TIMEOUT, TIMEOUT), NOW, SETTINGS)
    assert plan.status is DomainStatus.FAILED
    assert plan.reason == "Not verified within 7 days: the DNS servers never answered"


def test_an_active_domain_missed_fewer_than_three_times_stays_active() -> None:
    before = domain(DomainStatus.ACTIVE, failed_checks=MOVED_AFTER_MISSES - 2)
    plan = plan_check(before, Findings(None, ELSEWHERE), NOW, SETTINGS)
    assert (plan.status, plan.reason) == (DomainStatus.ACTIVE, ELSEWHERE.reason)
    assert plan.changes["failed_checks"] == MOVED_AFTER_MISSES - 1
    assert plan.changes["next_check_at"] == NOW + timedelta(days=1)


def test_an_active_domain_missed_three_times_in_a_row_is_moved() -> None:
    before = domain(DomainStatus.ACTIVE, failed_checks=MOVED_AFTER_MISSES - 1)
    plan = plan_check(before, Findings(None, ELSEWHERE), NOW, SETTINGS)
    assert plan.status is DomainStatus.MOVED
    assert plan.reason is not None and "3 checks in a row" in plan.reason
    assert plan.changes["next_check_at"] is None


def test_an_active_domain_found_again_resets_its_misses() -> None:
    before = domain(DomainStatus.ACTIVE, failed_checks=2)
    plan = plan_check(before, Findings(None, YES), NOW, SETTINGS)
    assert (plan.status, plan.changes["failed_checks"]) == (DomainStatus.ACTIVE, 0)


def test_an_unanswered_recheck_of_an_active_domain_is_not_a_miss() -> None:
    before = domain(DomainStatus.ACTIVE, failed_checks=2)
    plan = plan_check(before, Findings(None, TIMEOUT), NOW, SETTINGS)
    assert plan.status is DomainStatus.ACTIVE
    assert set(plan.changes) == {"next_check_at"}


def test_a_moved_domain_that_fails_an_on_demand_check_stays_off_the_schedule() -> None:
    plan = plan_check(domain(DomainStatus.MOVED), Findings(NO_TXT, ELSEWHERE), NOW, SETTINGS)
    assert (plan.status, plan.changes["next_check_at"]) == (DomainStatus.MOVED, None)
