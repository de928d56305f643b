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

Entries older than ``retention`` seconds are pruned (by every process, cheaply, every
``prune_interval`` seconds). When the registry cannot be reached, what is in memory stays in
service, ``healthy`` turns false, and polling carries on until the database answers again.

On Postgres, ``PostgresListener`` holds one dedicated connection that ``LISTEN``s on the
triggers' channel and wakes the follower on every ``NOTIFY``; after a lost connection it
reconnects by itself and wakes the follower, which catches up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from dispatcher.errors import RegistryUnavailable
from workers_registry.entries import WorkerEntry
from workers_registry.store import LOAD_CHUNK, Change, RegistryStore
from workers_registry.tables import REGISTRY_CHANNEL

__all__ = ["PostgresListener", "RegistryFollower", "RegistrySnapshot", "announced_sequence"]

_log = structlog.get_logger("workers_registry.changes")

_WORKERS = "workers"
_DOMAINS = "custom_domains"


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Every worker at one registry version (a full load)."""

    version: int
    workers: tuple[WorkerEntry, ...]
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def age(self) -> float:
        return time.monotonic() - self.loaded_at


def announced_sequence(payload: str) -> int | None:
    """The sequence a ``NOTIFY`` payload announces (``{"seq": N}``), or ``None`` if it names
    none (anything else on the channel still wakes the follower)."""
    try:
        seq = json.loads(payload).get("seq") if len(payload) < 256 else None
    except (ValueError, AttributeError):
        return None
    return seq if type(seq) is int and seq >= 0 else None


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
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: Sequence of the last change applied (-1 before the first load).
        self.applied = -1
        #: Highest sequence known to exist (from a notification or the version poll).
        self.head = -1
        self.applied_at = time.monotonic()
        self._behind_since: float | None = None
        self.healthy = False
        self.reloads = 0  # full loads, the first one included
        self.resyncs = 0  # full loads after the first: the log could not bridge the gap
        self.changes_applied = 0

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

    def wake(self, seq: int | None = None) -> None:
        """Check the registry now; ``seq`` is the sequence a notification announced.

        A sequence already applied (a duplicate or late notification) wakes nothing.
        """
        if seq is not None:
            if seq <= self.applied:
                return
            self._saw(seq)
        self._wake.set()

    async def refresh(self) -> bool:
        """Apply what the registry changed since the last call; False if it could not be asked."""
        async with self._lock:
            try:
                await self._catch_up()
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

    def _saw(self, seq: int) -> None:
        if seq > self.head:
            if self.head <= self.applied:
                self._behind_since = time.monotonic()
            self.head = seq

    async def _catch_up(self) -> None:
        if self.applied < 0:
            await self._load(resync=False)
            return
        if self.head <= self.applied:  # nothing announced: ask (the poll)
            version = await self._store.version()
            if version < self.applied:  # the database was replaced or restored
                await self._load(resync=True)
                return
            self._saw(version)
        while self.head > self.applied:
            changes = await self._store.changes_after(self.applied, self._batch)
            if not changes or changes[0].seq != self.applied + 1:
                # The entries after ours were pruned: the log cannot bridge the gap.
                await self._load(resync=True)
                return
            if not await self._apply(changes):
                return
            self._saw(changes[-1].seq)

    async def _load(self, *, resync: bool) -> None:
        # Loading 100,000 workers makes a million objects: with the cyclic collector on, the
        # allocations trigger collections that walk all of them (hundreds of ms each, on the
        # event loop). Reference counting frees what the load discards; ``on_load`` may
        # ``gc.freeze()`` what it keeps (the server does) before collection resumes.
        collecting = gc.isenabled()
        gc.disable()
        try:
            version, workers = await self._store.load_workers()
            self._on_load(RegistrySnapshot(version, tuple(workers)))
        finally:
            if collecting:
                gc.enable()
        self._applied(version)
        self.reloads += 1
        if resync:
            self.resyncs += 1
            _log.warning("registry_resynced", version=version, workers=len(workers))
        else:
            _log.info("registry_loaded", version=version, workers=len(workers))
        if resync and self._on_domains is not None:
            await self._on_domains(None)

    async def _apply(self, changes: list[Change]) -> bool:
        """Apply one batch; False when it ended in a full load instead."""
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
        self.changes_applied += len(changes)
        self._applied(changes[-1].seq)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            await self.refresh()


class PostgresListener:
    """``LISTEN`` on the registry channel; call ``on_notify`` with the announced sequence.

    Owns one asyncpg connection outside the store's pool. ``connected`` is false while the
    connection is down; a background task reconnects every ``retry_interval`` seconds and
    calls ``on_reconnect`` once it is back.
    """

    def __init__(
        self,
        database_url: str,
        *,
        on_notify: Callable[[int | None], None],
        on_reconnect: Callable[[], None],
        connect_timeout: float = 5.0,
        retry_interval: float = 1.0,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._connect_timeout = connect_timeout
        self._retry_interval = retry_interval
        self._connection: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), self._connect_timeout)
            self._connection = None
        self.connected = False

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        connection.add_termination_listener(self._terminated)
        await connection.add_listener(REGISTRY_CHANNEL, self._notified)
        self._connection = connection
        self._lost.clear()
        self.connected = True

    async def _keep_connected(self) -> None:
        while True:
            if self.connected:
                await self._lost.wait()
            await asyncio.sleep(self._retry_interval)
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError, TimeoutError):
                continue
            _log.info("registry_listener_reconnected")
            self._on_reconnect()

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(announced_sequence(payload))

    def _terminated(self, connection: Any) -> None:
        if self.connected:
            _log.warning("registry_listener_lost")
        self.connected = False
        self._connection = None
        self._lost.set()
