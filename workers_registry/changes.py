"""Following the registry: the in-memory worker snapshot and how changes reach it.

Every dispatcher process holds all workers in memory (``RegistrySnapshot``) and follows the
registry's version counter, which database triggers bump on every change (plain SQL edits
included). A cheap ``SELECT version`` every ``poll_interval`` seconds notices a change; the
follower then reloads the snapshot and tells its listener. ``wake()`` asks for an immediate
check (the hook for push notifications such as Postgres ``LISTEN``).

On Postgres, ``PostgresListener`` holds one dedicated connection that ``LISTEN``s on the
triggers' channel and wakes the follower on every ``NOTIFY``, so a change is live in every
process within milliseconds; after a lost connection it reconnects by itself and forces a
check (notifications sent while it was away are gone, the version poll covers them).

When the registry cannot be reached the last snapshot stays in service, ``healthy`` turns
false, and polling carries on until the database answers again: no restart needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from dispatcher.errors import RegistryUnavailable
from workers_registry.models import Worker
from workers_registry.store import RegistryStore
from workers_registry.tables import REGISTRY_CHANNEL

__all__ = ["PostgresListener", "RegistryFollower", "RegistrySnapshot"]

_log = structlog.get_logger("workers_registry.changes")


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Every worker at one registry version."""

    version: int
    workers: tuple[Worker, ...]
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def age(self) -> float:
        return time.monotonic() - self.loaded_at


class RegistryFollower:
    """Keeps a ``RegistrySnapshot`` current and reports each new one to ``on_change``."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        poll_interval: float,
        on_change: Callable[[RegistrySnapshot], None],
    ) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.snapshot = RegistrySnapshot(version=-1, workers=())
        self.healthy = False
        self.reloads = 0

    async def start(self) -> None:
        """Load the first snapshot (or note the outage) and start following."""
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Check the registry now rather than at the next poll."""
        self._wake.set()

    async def refresh(self) -> bool:
        """Reload the snapshot if the registry version moved; False if it could not be asked."""
        try:
            version = await self._store.version()
            if version != self.snapshot.version:
                version, workers = await self._store.load_workers()
                self.snapshot = RegistrySnapshot(version, tuple(workers))
                self.reloads += 1
                self._on_change(self.snapshot)
                _log.info("registry_reloaded", version=version, workers=len(workers))
        except RegistryUnavailable:
            if self.healthy:
                _log.warning("registry_unreachable", serving_version=self.snapshot.version)
            self.healthy = False
            return False
        if not self.healthy:
            self.healthy = True
            _log.info("registry_reachable", version=self.snapshot.version)
        return True

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            await self.refresh()


class PostgresListener:
    """``LISTEN`` on the registry channel; call ``on_notify`` for every change.

    Owns one asyncpg connection outside the store's pool. ``connected`` is false while the
    connection is down; a background task reconnects every ``retry_interval`` seconds and
    calls ``on_reconnect`` once it is back.
    """

    def __init__(
        self,
        database_url: str,
        *,
        on_notify: Callable[[], None],
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
        self._on_notify()

    def _terminated(self, connection: Any) -> None:
        if self.connected:
            _log.warning("registry_listener_lost")
        self.connected = False
        self._connection = None
        self._lost.set()
