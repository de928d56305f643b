"""Timers checked on a coarse tick, for the per-request ones that almost never fire.

A response deadline or the arming of a disconnect watcher is set for every request and nearly
always cleared long before it is due. An event-loop timer handle made and cancelled each time
costs far more than the dict insert and delete used here; the price is precision: a timer
fires up to one tick late. The tick runs only while timers are pending.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

__all__ = ["TICK", "CoarseTimers", "Expiring"]

#: Seconds between checks: how late a coarse timer may fire.
TICK: Final = 0.05


class Expiring(Protocol):
    def expire(self) -> None:
        """Called once the timer is due (not if it was discarded first)."""


class CoarseTimers:
    """Pending timers of one event loop, keyed by the object that expires."""

    __slots__ = ("_due", "_handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: dict[Expiring, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, item: Expiring, delay: float) -> None:
        """Call ``item.expire()`` in ``delay`` seconds (up to one tick later)."""
        self._due[item] = self.loop.time() + delay
        if self._handle is None:
            self._handle = self.loop.call_later(TICK, self._tick)

    def discard(self, item: Expiring) -> None:
        self._due.pop(item, None)

    def _tick(self) -> None:
        now = self.loop.time()
        due = self._due
        for item in [item for item, when in due.items() if when <= now]:
            del due[item]
            item.expire()
        self._handle = self.loop.call_later(TICK, self._tick) if due else None
