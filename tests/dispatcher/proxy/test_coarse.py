"""Coarse timers: due ones fire (at most a tick late), discarded ones never, the tick stops."""

from __future__ import annotations

import asyncio

from dispatcher.proxy.coarse import CoarseTimers


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fired = loop.create_future()
        self.loop = loop

    def expire(self) -> None:
        assert not self.fired.done(), "expired twice"
        self.fired.set_result(self.loop.time())


def test_due_timers_fire_discarded_ones_do_not_and_the_tick_stops() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        soon, later, dropped = Item(loop), Item(loop), Item(loop)
        start = loop.time()
        timers.add(soon, 0.01)
        timers.add(later, 0.12)
        timers.add(dropped, 0.01)
        timers.discard(dropped)
        fired_soon = await asyncio.wait_for(soon.fired, 2)
        assert not later.fired.done()
        fired_later = await asyncio.wait_for(later.fired, 2)
        assert fired_soon - start >= 0.01  # never early; late by about a tick (not timed here)
        assert fired_later - start >= 0.12
        assert not dropped.fired.done()
        assert len(timers) == 0
        assert timers._handle is None  # nothing pending: no tick left running

    asyncio.run(main())
