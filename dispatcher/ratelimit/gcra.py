"""The rate-limit arithmetic: GCRA (the generic cell rate algorithm), pure.

A limit of ``rate`` requests per second with a ``burst`` is a token bucket of ``burst`` tokens
refilled at ``rate`` per second, kept as one number per key: the theoretical arrival time
(TAT) of the next request. With ``interval = 1 / rate`` and ``tolerance = burst * interval``,
a request at ``now`` is admitted when ``max(TAT, now) + interval - now <= tolerance``, and
then moves TAT to that sum. A fresh key admits ``burst`` requests at once, then one every
``interval``; over any window of ``W`` seconds at most ``burst + rate * W`` are admitted.

Times are integer microseconds. The same algorithm runs in Python (``take``, for counters
kept in the process) and in Redis (``REDIS_SCRIPT``, one atomic script for every key of a
request: all of its limits admit it, or none is charged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["ADMITTED", "LEASE_SECONDS", "REDIS_SCRIPT", "Limit", "Verdict", "take"]

_MICROS: Final = 1_000_000

#: How long a process may keep leased requests before the rest is dropped (never returned).
LEASE_SECONDS: Final = 0.25


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit on one key: ``name`` is the policy shown to clients (``worker``, ``client``)."""

    name: str
    rate: float  # requests per second
    burst: int  # requests admitted at once

    @property
    def interval(self) -> int:
        """Microseconds between two requests at the steady rate (at least 1)."""
        return max(1, round(_MICROS / self.rate))

    @property
    def tolerance(self) -> int:
        return self.burst * self.interval

    @property
    def lease(self) -> int:
        """Requests a dispatcher may take from Redis at once for later requests: about 10 ms
        of the rate, at most a tenth of the burst and 100 (1 below 200 requests per second:
        every request asks Redis). Every leased request is charged before it is admitted, so
        leases never admit more than the limit; a process may hold its lease for up to
        ``LEASE_SECONDS``, which can shift up to ``lease`` requests per process into a later
        window."""
        return max(1, min(100, math.floor(self.rate / 100), self.burst // 10))

    def policy(self) -> str:
        """This limit as an item of the ``RateLimit-Policy`` field (httpapi ratelimit draft):
        ``q`` requests per window of ``w`` whole seconds, the window being the time the burst
        takes to refill (at least one second)."""
        window = max(1, math.ceil(self.burst / self.rate))
        return f'"{self.name}";q={max(1, math.floor(self.rate * window))};w={window}'


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the counters said: ``refused`` is the index of the limit that refused (or -1),
    ``wait`` the microseconds until that limit admits a request again."""

    refused: int
    wait: int = 0

    @property
    def admitted(self) -> bool:
        return self.refused < 0


ADMITTED: Final = Verdict(-1)


def take(tats: dict[str, int], keys: list[str], limits: list[Limit], now: int) -> Verdict:
    """Charge one request to every key (each with its limit) in ``tats``, or to none."""
    new: list[int] = []
    for index, (key, limit) in enumerate(zip(keys, limits, strict=True)):
        tat = max(tats.get(key, now), now) + limit.interval
        wait = tat - now - limit.tolerance
        if wait > 0:
            return Verdict(index, wait)
        new.append(tat)
    for key, tat in zip(keys, new, strict=True):
        tats[key] = tat
    return ADMITTED


#: ``take`` as a Redis script that may also lease tokens: it charges up to ``ARGV[1]`` requests
#: at once (as many as every key has room for, at least one) so a dispatcher can admit the
#: next ones from its lease without a round trip. KEYS: one per limit; ARGV: the number
#: wanted, then interval and tolerance per key. Reads the Redis server's clock (one clock
#: for every dispatcher, whatever their skew); keys expire once their bucket is full again,
#: so an idle key costs no memory. Returns ``{refused index (0 = admitted, 1-based
#: otherwise), wait in microseconds, requests granted}``.
REDIS_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local grant = tonumber(ARGV[1])
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local room = math.floor((tolerance - (tat - now)) / interval)
  if room < 1 then return {i, tat + interval - tolerance - now, 0} end
  if room < grant then grant = room end
  tats[i] = tat
end
for i = 1, #KEYS do
  local tat = tats[i] + grant * tonumber(ARGV[2 * i])
  redis.call('SET', KEYS[i], string.format('%.0f', tat),
             'PX', math.ceil((tat - now) / 1000) + 1)
end
return {0, 0, grant}
"""
