"""Following the registry: applying its change log to what a process holds in memory.

Every dispatcher process holds all workers in memory and caches custom domains one host at a
time. The registry's triggers record every changed row in ``registry_changes`` with a sequence
number (the registry version; see migration 0002). ``RegistryFollower`` remembers the last
sequence it applied and, when woken (a Postgres ``NOTIFY``, or the version poll every
``poll_interval`` seconds, the only mechanism on SQLite), reads the entries after it, in
order, and applies them one key at a time:

- a worker key: that worker's current row is read and handed to ``on_worker`` (the worker, or
  ``None`` when it is gone or its row is invalid); nothing else in the table moves;
- a custom-domain key: handed to ``on_domains``, which refreshes or drops that cached host
  only.

Entries arrive in batches of ``batch`` keys, applied with a turn of the event loop between
chunks, so a bulk change of 100,000 rows does not hold the loop. Notifications carry the
sequence they announce: one at or below what is applied (a duplicate, a late one) costs
nothing. A full load (``on_load`` with a ``RegistrySnapshot``, then ``on_domains(None)``:
refresh every cached host) happens only at start, after a ``truncate`` of ``workers``, or when
the log no longer holds the entry after the applied sequence (pruned past it while this
process was away, or the database was replaced): a *resync*. A listener outage needs no
resync: the entries are still in the log and the next wake-up reads them.

Announcements that carry their changes (``workers_registry.announcements``): when the one
after the applied sequence names its entries, they are applied without reading the log, so a
small change costs a process one read of the changed row (none when it holds nothing of
it). Those entries are *confirmed* against the log afterwards, in one read per
``poll_interval`` (or per ``_CONFIRM_AT`` entries), and the keys they named are read once
more then (the row read when one arrived may predate its entry: a forged announcement can
name the next key before that change commits). Where the log does not bear a payload out (a
forged ``NOTIFY``, a bug: ``registry_announcement_unconfirmed``, counted in ``refuted``), the
applied sequence steps back to the last entry it did and the log is followed from there.

Entries older than ``retention`` seconds are pruned (by every process, cheaply, every
``prune_interval`` seconds). When the registry cannot be reached, what is in memory stays in
service, ``healthy`` turns false, and polling carries on until the database answers again.

On Postgres, ``PostgresListener`` holds one dedicated connection that ``LISTEN``s on the
triggers' channel and hands the follower every announcement (``heard``); after a lost
connection it reconnects by itself and wakes the follower, which catches up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import structlog

from dispatcher.errors import RegistryUnavailable
from workers_registry.announcements import Announcement
from workers_registry.entries import WorkerEntry
from workers_registry.store import LOAD_CHUNK, Change, RegistryStore

__all__ = ["RegistryFollower", "RegistrySnapshot"]

_log = structlog.get_logger("workers_registry.changes")

_WORKERS = "workers"
_DOMAINS = "custom_domains"
#: Announcements kept while waiting for the ones before them (more are only wake-ups).
_PENDING = 256
#: Confirm the entries applied from announcements once this many wait.
_CONFIRM_AT = 1000


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Every worker at one registry version (a full load)."""

    version: int
    workers: tuple[WorkerEntry, ...]


class RegistryFollower:
    """Keeps a process's workers and cached domains current with the registry's change log."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        poll_interval: float,
        on_load: Callable[[RegistrySnapshot], None],
        on_worker: Callable[[str, WorkerEntry | None], None] = lambda name, worker: None,
        on_domains: Callable[[Collection[str] | None], Awaitable[None]] | None = None,
        retention: float = 3600.0,
        batch: int = 10_000,
    ) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._on_load = on_load
        self._on_worker = on_worker
        self._on_domains = on_domains
        self._retention = retention
        self._prune_interval = min(60.0, retention / 4)
        self._next_prune = 0.0
        self._batch = batch
        self._wake = asyncio.Event()
        self._ask = False  # a wake-up that named no sequence: ask the registry
        self._heard = 0  # wake-ups that named a sequence not applied yet
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: Sequence of the last change applied (-1 before the first load).
        self.applied = -1
        #: Highest sequence known to exist (from a notification or the version poll).
        self.head = -1
        self.applied_at = time.monotonic()
        self._behind_since: float | None = None
        #: Every entry up to this sequence was read from the log (or checked against it);
        #: the ones after it that announcements carried wait in ``_unconfirmed``.
        self.confirmed = -1
        self._unconfirmed: dict[int, Change] = {}
        self._confirmed_at = time.monotonic()
        #: Announcements carrying changes not applied yet, by their first sequence.
        self._announced: dict[int, Announcement] = {}
        self.healthy = False
        self.reloads = 0  # full loads, the first one included
        self.resyncs = 0  # full loads after the first: the log could not bridge the gap
        self.changes_applied = 0
        self.refuted = 0  # announcements the log did not bear out (forged, or a bug)

    @property
    def lag(self) -> int:
        """Changes known to exist and not applied yet."""
        return max(0, self.head - self.applied)

    @property
    def lag_seconds(self) -> float:
        """How long the oldest known unapplied change has been waiting (0 when caught up)."""
        since = self._behind_since
        return 0.0 if since is None or self.lag == 0 else time.monotonic() - since

    async def start(self) -> None:
        """Load the workers (or note the outage) and start following."""
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def heard(self, announcement: Announcement | None) -> None:
        """A notification (``None``: it named no sequence, but something may have changed).

        The changes it carries, if any, are kept to be applied in order, without a read of
        the log; a duplicate or late one costs nothing.
        """
        if announcement is None:
            self.wake()
            return
        changes = announcement.changes
        if changes and changes[0].seq > self.applied and len(self._announced) < _PENDING:
            self._announced[changes[0].seq] = announcement
        self.wake(announcement.seq)

    def wake(self, seq: int | None = None) -> None:
        """Check the registry now; ``seq`` is the sequence a notification announced.

        A sequence already applied (a duplicate or late notification) wakes nothing.
        """
        if seq is None:
            self._ask = True
        elif seq <= self.applied:
            return
        else:
            self._heard += 1
            self._saw(seq)
        self._wake.set()

    async def refresh(self, *, poll: bool = True, confirm: bool = False) -> bool:
        """Apply what the registry changed since the last call; False if it could not be asked.

        With ``poll`` false only what is known to exist is read (a notification woke the
        follower): nothing at all when it was applied already. What announcements said is
        checked against the log once per ``poll_interval``, or now with ``confirm``.
        """
        async with self._lock:
            try:
                await self._catch_up(poll)
                if self._unconfirmed and (
                    confirm or time.monotonic() - self._confirmed_at >= self._poll_interval
                ):
                    await self._confirm()
                    await self._catch_up(poll=False)  # what the log holds past a step back
                await self._prune()
            except RegistryUnavailable:
                if self.healthy:
                    _log.warning("registry_unreachable", applied_seq=self.applied)
                self.healthy = False
                return False
        if not self.healthy:
            self.healthy = True
            _log.info("registry_reachable", applied_seq=self.applied)
        return True

    async def confirm(self) -> bool:
        """Check now what announcements said against the log (``refresh`` does it once per
        ``poll_interval``); False if the registry could not be asked."""
        return await self.refresh(poll=False, confirm=True)

    def _saw(self, seq: int) -> None:
        if seq > self.head:
            if self.head <= self.applied:
                self._behind_since = time.monotonic()
            self.head = seq

    async def _catch_up(self, poll: bool) -> None:
        if self.applied < 0:
            await self._load(resync=False)
            return
        if self.head <= self.applied:  # nothing announced
            if not poll:
                return
            # Ask (the poll).
            version = await self._store.version()
            if version < self.applied:
                if not (self._unconfirmed and self.confirmed <= version):
                    await self._load(resync=True)  # the database was replaced or restored
                    return
                # Announcements took this process past the registry: keep what the log
                # bears out, and follow the log from there.
                await self._confirm()
            self._saw(version)
        while self.head > self.applied:
            announced = self._next_announced()
            if announced is not None:  # the notification named the keys: no read of the log
                if not await self._apply(announced.changes):
                    return
                self._unconfirmed.update((change.seq, change) for change in announced.changes)
                if len(self._unconfirmed) >= _CONFIRM_AT:  # (bounded, however fast they come)
                    await self._confirm()
                continue
            confirmed = self.confirmed == self.applied
            changes = await self._store.changes_after(self.applied, self._batch)
            if not changes and await self._store.version() == self.applied:
                # Nothing after ours, and nothing was missed: the sequence announced was not
                # the registry's (a forged NOTIFY). Believe the registry.
                self._refuted(announced_seq=self.head)
                self.head = self.applied
                return
            if not changes or changes[0].seq != self.applied + 1:
                # The entries after ours were pruned: the log cannot bridge the gap.
                await self._load(resync=True)
                return
            if not await self._apply(changes):
                return
            if confirmed:
                self.confirmed = self.applied
            self._saw(changes[-1].seq)

    def _next_announced(self) -> Announcement | None:
        """The kept announcement that starts right after the applied sequence, if any (the
        ones it overtook are dropped)."""
        pending = self._announced
        if pending:
            for first in [first for first in pending if first <= self.applied]:
                del pending[first]
            return pending.pop(self.applied + 1, None)
        return None

    async def _confirm(self) -> None:
        """Check the entries applied from announcements against the log.

        The keys they named are read again once the log holds their entries: a row read when
        an announcement arrived may predate its entry (a forged one that named the next key
        before the real change committed), and the log alone cannot tell. Where the log does
        not bear an announcement out, the applied sequence steps back to the last entry it
        did, and the log is followed from there (the caller catches up): nothing an
        announcement carried was installed as such (every key it named was read from the
        registry), so only the entries it hid need applying, and no full load is needed.
        """
        announced: list[Change] = []
        while self.confirmed < self.applied:
            entries = await self._store.changes_after(
                self.confirmed, min(self._batch, self.applied - self.confirmed)
            )
            for entry in entries:
                said = self._unconfirmed.pop(entry.seq, None)
                if entry.seq != self.confirmed + 1 or (
                    said is not None and (said.table, said.key) != (entry.table, entry.key)
                ):
                    break
                if said is not None:
                    announced.append(entry)
                self.confirmed = entry.seq
            else:
                if entries:
                    continue
            self._refuted(confirmed_seq=self.confirmed, applied_seq=self.applied)
            self.refuted += 1
            self.applied = self.confirmed  # (head stays ahead: the log is read from here)
            self._behind_since = time.monotonic()
            break
        self._unconfirmed.clear()
        self._confirmed_at = time.monotonic()
        if announced:
            await self._read_keys(announced)

    def _refuted(self, **context: int) -> None:
        """The registry does not bear out what was announced: believe none of what waits."""
        _log.warning("registry_announcement_unconfirmed", **context)
        self._announced.clear()

    async def _load(self, *, resync: bool) -> None:
        # Loading 100,000 workers makes a million objects: with the cyclic collector on, the
        # allocations trigger collections that walk all of them (hundreds of ms each, on the
        # event loop). Reference counting frees what the load discards; ``on_load`` may
        # ``gc.freeze()`` what it keeps (the server does) before collection resumes.
        # Nothing announced before the load is believed beyond what the load reads: not the
        # sequence it said was reached, not the changes waiting to be applied.
        self._announced.clear()
        heard = self._heard
        collecting = gc.isenabled()
        gc.disable()
        try:
            version, workers = await self._store.load_workers()
            self._on_load(RegistrySnapshot(version, tuple(workers)))
        finally:
            if collecting:
                gc.enable()
        if self._heard == heard:  # (a notification during the load may announce more)
            self.head = version
        self._applied(version)
        self.confirmed = version
        self._unconfirmed.clear()
        self._confirmed_at = time.monotonic()
        self.reloads += 1
        if resync:
            self.resyncs += 1
            _log.warning("registry_resynced", version=version, workers=len(workers))
        else:
            _log.info("registry_loaded", version=version, workers=len(workers))
        if resync and self._on_domains is not None:
            await self._on_domains(None)

    async def _apply(self, changes: Sequence[Change]) -> bool:
        """Apply one batch; False when it ended in a full load instead."""
        if not await self._read_keys(changes):
            return False
        self.changes_applied += len(changes)
        self._applied(changes[-1].seq)
        return True

    async def _read_keys(self, changes: Sequence[Change]) -> bool:
        """Hand on the current state of every key ``changes`` name; False when a TRUNCATE of
        ``workers`` made it a full load instead."""
        worker_keys: set[str] = set()
        domain_keys: set[str] | None = set()
        for change in changes:
            if change.table == _WORKERS:
                if change.key is None:  # TRUNCATE workers: every worker is gone
                    await self._load(resync=True)
                    return False
                worker_keys.add(change.key)
            elif change.table == _DOMAINS and domain_keys is not None:
                if change.key is None:  # TRUNCATE custom_domains: every cached host changed
                    domain_keys = None
                else:
                    domain_keys.add(change.key)
        await self._apply_workers(worker_keys)
        if self._on_domains is not None and domain_keys != set():
            await self._on_domains(domain_keys)
        return True

    async def _apply_workers(self, names: set[str]) -> None:
        ordered = sorted(names)
        for start in range(0, len(ordered), LOAD_CHUNK):
            chunk = ordered[start : start + LOAD_CHUNK]
            found = {worker.name: worker for worker in await self._store.workers_named(chunk)}
            for name in chunk:
                self._on_worker(name, found.get(name))
            if len(ordered) > LOAD_CHUNK:
                await asyncio.sleep(0)

    def _applied(self, seq: int) -> None:
        self.applied = seq
        self.applied_at = time.monotonic()
        if self.head < seq:
            self.head = seq
        if self.head > seq:
            self._behind_since = time.monotonic()

    async def _prune(self) -> None:
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + self._prune_interval
            pruned = await self._store.prune_changes(self._retention)
            if pruned:
                _log.info("registry_changes_pruned", entries=pruned)

    async def _follow(self) -> None:
        while True:
            poll = True  # unless woken first: the version poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
                    poll = self._ask
            self._wake.clear()
            self._ask = False
            try:
                await self.refresh(poll=poll)
            except Exception:  # whatever it was, following must go on
                # Not applied: the next wake-up or poll tries again from the same sequence.
                # A follower that stopped here would serve what it holds for good.
                self.healthy = False
                _log.exception("registry_follow_failed", applied_seq=self.applied)
