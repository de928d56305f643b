"""``DomainVerifier``: checks custom domains on their schedule, and on demand.

One process per fleet runs the schedule: the one holding the leadership lock (Postgres: a
session advisory lock on a dedicated connection, released by the server when that connection
dies; SQLite: an exclusive ``flock`` on a file beside the database, released when the process
exits). The others try again every ``registry_poll_interval`` seconds, so a new leader takes
over within one interval of the old one's end. Every process answers on-demand checks.

The leader asks the registry for the domains that are due (an indexed ``next_check_at``
query) every ``registry_poll_interval`` seconds, checks them concurrently (bounded), and writes
each outcome through the store like any other change, conditional on the row being unchanged
since it was read, so an operator's edit during a check wins. The version triggers then carry
a status change to every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import make_url

from dispatcher.errors import DomainNotFound, RegistryUnavailable
from dispatcher.onboarding.dns import DnsProbe
from dispatcher.onboarding.policy import cname_target, txt_name
from dispatcher.onboarding.schedule import Findings, Plan, needs_txt, plan_check
from dispatcher.settings import Settings
from workers_registry.models import CustomDomain, DomainCheck, DomainStatus
from workers_registry.store import RegistryStore

__all__ = ["CheckReport", "DomainVerifier", "OnboardingMetrics", "log_operator_status"]

_log = structlog.get_logger("dispatcher.onboarding")

# pg_try_advisory_lock key of the fleet's verifier: the bytes of "verifier" as a bigint.
_LEADER_LOCK_KEY = int.from_bytes(b"verifier", "big") - 2**63
_BATCH = 200
_CONCURRENCY = 32
_COUNT_EVERY = 15.0


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of one check: the domain as written (or as found, when an edit won)."""

    domain: CustomDomain
    result: str
    reason: str | None
    previous_status: DomainStatus

    def model(self) -> DomainCheck:
        return DomainCheck(
            result=self.result,
            reason=self.reason,
            previous_status=self.previous_status,
            status=self.domain.status,
        )


class OnboardingMetrics(Collector):
    """``dispatcher_domain_checks_total{result}`` (this process's checks) and
    ``dispatcher_domains{status}`` (the registry's counts, kept by the verifier's leader)."""

    def __init__(self) -> None:
        self.checks: dict[str, int] = {}
        self.by_status: dict[str, int] | None = None

    def count(self, result: str) -> None:
        self.checks[result] = self.checks.get(result, 0) + 1

    def collect(self) -> list[Metric]:
        checks = CounterMetricFamily(
            "dispatcher_domain_checks", "Custom-domain checks by result", labels=["result"]
        )
        for result, value in sorted(self.checks.items()):
            checks.add_metric([result], value)
        families: list[Metric] = [checks]
        if self.by_status is not None:
            domains = GaugeMetricFamily(
                "dispatcher_domains", "Custom domains by status", labels=["status"]
            )
            for status in DomainStatus:
                domains.add_metric([status.value], self.by_status.get(status.value, 0))
            families.append(domains)
        return families


class _Leadership(Protocol):
    async def acquire(self) -> bool: ...

    async def release(self) -> None: ...


class _PostgresLeadership:
    """A session-level advisory lock on a connection of its own."""

    def __init__(self, database_url: str, connect_timeout: float) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._timeout = connect_timeout
        self._connection: Any = None
        self._held = False

    async def acquire(self) -> bool:
        """True while this process holds the lock (checked on every call).

        The connection stays open while another process leads, so trying again costs one
        query, not a new connection.
        """
        try:
            if self._connection is None or self._connection.is_closed():
                self._held = False
                self._connection = await asyncpg.connect(self._dsn, timeout=self._timeout)
            if self._held:
                await self._connection.fetchval("SELECT 1", timeout=self._timeout)
                return True
            self._held = bool(
                await self._connection.fetchval(
                    "SELECT pg_try_advisory_lock($1)", _LEADER_LOCK_KEY, timeout=self._timeout
                )
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            await self.release()
            return False
        return self._held

    async def release(self) -> None:
        self._held = False
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self._timeout)
            if not connection.is_closed():
                connection.terminate()


class _FileLeadership:
    """An exclusive ``flock`` on ``<database>.verifier.lock`` (SQLite)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._fd: int | None = None

    async def acquire(self) -> bool:
        if self._path is None:  # an in-memory database: this process is all there is
            return True
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _leadership(store: RegistryStore, settings: Settings) -> _Leadership:
    if store.dialect == "postgresql":
        return _PostgresLeadership(settings.async_database_url, settings.connect_timeout)
    database = make_url(settings.async_database_url).database
    if not database or database == ":memory:":
        return _FileLeadership(None)
    return _FileLeadership(Path(f"{database}.verifier.lock"))


class DomainVerifier:
    """Runs the check schedule (``start``) and on-demand checks (``check``)."""

    def __init__(
        self,
        store: RegistryStore,
        settings: Settings,
        *,
        metrics: OnboardingMetrics | None = None,
        probe: DnsProbe | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self.metrics = metrics or OnboardingMetrics()
        self._probe = probe or DnsProbe(settings.resolvers, timeout=settings.dns_timeout)
        self._leadership = _leadership(store, settings)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(_CONCURRENCY)
        self.leading = False

    async def start(self) -> None:
        """Start following the schedule in the background (leader or not)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Look for due domains now (a domain was just added or set pending)."""
        self._wake.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._leadership.release()
        self.leading = False

    async def check(self, domain: str) -> CheckReport:
        """Check ``domain`` now, whatever its schedule, and write the outcome.

        ``DomainNotFound`` if it is not registered; ``RegistryUnavailable`` as the store.
        """
        found = await self._store.get_domain(domain)
        if found is None:
            raise DomainNotFound(f"Domain '{domain}' is not registered")
        return await self._check(found, on_demand=True)

    # -- the schedule ----------------------------------------------------------------------

    async def _run(self) -> None:
        interval = self._settings.registry_poll_interval
        counted_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                leading = await self._leadership.acquire()
                if leading != self.leading:
                    _log.info("domain_verifier_leadership", leading=leading)
                    self.leading = leading
                if leading:
                    await self._round()
                    if loop.time() - counted_at >= min(_COUNT_EVERY, interval * 5):
                        self.metrics.by_status = await self._store.count_domains_by_status()
                        counted_at = loop.time()
            except RegistryUnavailable:
                pass  # the follower reports the outage; try again next interval
            except Exception:
                _log.exception("domain_verifier_error")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def _round(self) -> None:
        """Check every domain that is due, a batch at a time."""
        while True:
            due = await self._store.due_domains(datetime.now(UTC), _BATCH)
            if not due:
                return
            await asyncio.gather(*(self._checked(domain) for domain in due))
            if len(due) < _BATCH:
                return

    async def _checked(self, domain: CustomDomain) -> None:
        async with self._slots:
            try:
                await self._check(domain, on_demand=False)
            except RegistryUnavailable:
                pass
            except Exception:
                _log.exception("domain_check_error", domain=domain.domain)

    async def _check(self, domain: CustomDomain, *, on_demand: bool) -> CheckReport:
        settings = self._settings
        target = cname_target(domain.worker, settings)
        points_question = self._probe.points_at(domain.domain, target, settings.base_domains)
        if needs_txt(domain):
            txt, points = await asyncio.gather(
                self._probe.txt_matches(
                    txt_name(domain.domain, settings), domain.verification_token
                ),
                points_question,
            )
            findings = Findings(txt=txt, points=points)
        else:
            findings = Findings(txt=None, points=await points_question)
        plan = plan_check(domain, findings, datetime.now(UTC), settings)
        self.metrics.count(plan.result)
        written = await self._store.record_check(domain, _changes(plan))
        if written is None:  # changed or removed meanwhile: the edit wins
            current = await self._store.get_domain(domain.domain)
            if current is None:
                raise DomainNotFound(f"Domain '{domain.domain}' is not registered")
            return CheckReport(current, plan.result, plan.reason, domain.status)
        if written.status is not domain.status:
            _log.info(
                "domain_status_changed",
                domain=domain.domain,
                worker=domain.worker,
                status=written.status.value,
                previous_status=domain.status.value,
                reason=plan.reason or _ok_reason(findings),
                on_demand=on_demand,
            )
        return CheckReport(written, plan.result, plan.reason, domain.status)


def log_operator_status(domain: CustomDomain, via: str) -> None:
    """The status-change line for a status an operator set (``via``: the admin API, the CLI)."""
    _log.info(
        "domain_status_changed",
        domain=domain.domain,
        worker=domain.worker,
        status=domain.status.value,
        reason=f"set by the operator ({via})",
        on_demand=True,
    )


def _changes(plan: Plan) -> dict[str, Any]:
    return {**plan.changes, "status": plan.status.value}


def _ok_reason(findings: Findings) -> str:
    if findings.txt is not None and findings.txt.verdict == "yes":
        return "TXT record matches and the domain points at the platform"
    return "the domain points at the platform"
