"""``LocalCounters``: the GCRA counters in this process's memory (no ``rate_limit_url``)."""

from __future__ import annotations

import time
from typing import Any

from dispatcher.ratelimit.gcra import Limit, Verdict, take

__all__ = ["LocalCounters"]


class LocalCounters:
    """GCRA counters in this process's memory (no ``rate_limit_url``): each process counts
    alone. At most ``max_keys`` keys; expired ones are dropped when that is reached."""

    backend = "local"

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: dict[str, int] = {}
        self._max_keys = max_keys

    def take(self, keys: list[str], limits: list[Limit]) -> Verdict:
        now = time.monotonic_ns() // 1000
        tats = self._tats
        if len(tats) >= self._max_keys:
            for key in [key for key, tat in tats.items() if tat <= now]:
                del tats[key]
            if len(tats) >= self._max_keys:
                tats.clear()  # every key is busy: forget them rather than grow without end
        return take(tats, keys, limits, now)

    def state(self) -> dict[str, Any]:
        return {"backend": self.backend, "status": "ok", "keys": len(self._tats)}

    async def aclose(self) -> None:
        """Nothing to release."""
