"""Following the registry: the in-memory worker snapshot and how changes reach it.

Every dispatcher process holds all workers in memory (``RegistrySnapshot``) and follows the
registry's version counter, which database triggers bump on every change (plain SQL edits
included). A cheap ``SELECT version`` every ``poll_interval`` seconds notices a change; the
follower then reloads the snapshot and tells its listener. ``wake()`` asks for an immediate
check (the hook for push notifications such as Postgres ``LISTEN``).

When the registry cannot be reached the last snapshot stays in service, ``healthy`` turns
false, and polling carries on until the database answers again: no restart needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from dispatcher.errors import RegistryUnavailable
from workers_registry.models import Worker
from workers_registry.store import RegistryStore

__all__ = ["RegistryFollower", "RegistrySnapshot"]

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
