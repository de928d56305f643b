"""``RedisCounters`` against a real redis-server: leases and remembered refusals save round trips
without admitting more than the limit."""

from __future__ import annotations

import asyncio
import math
import time

from dispatcher.ratelimit.counters import RedisCounters
from dispatcher.ratelimit.gcra import Limit
from tests.redis import RedisServer


def test_a_lease_admits_the_next_requests_without_a_round_trip(redis_server: RedisServer) -> None:
    async def run() -> tuple[int, int]:
        counters = RedisCounters(redis_server.url, timeout=1.0)
        try:
            limit = Limit("worker", 10_000, 10_000)  # lease: 100
            verdicts = await asyncio.gather(*(counters.take(["w"], [limit]) for _ in range(150)))
            assert all(verdict is not None and verdict.admitted for verdict in verdicts)
            return counters.calls, 0
        finally:
            await counters.aclose()

    calls, _ = asyncio.run(run())
    assert calls == 2  # 150 requests, concurrent: one call, its lease of 100, then one more


def test_leased_requests_never_exceed_the_burst_plus_the_refill(redis_server: RedisServer) -> None:
    async def run() -> tuple[int, float]:
        first = RedisCounters(redis_server.url, timeout=1.0)
        second = RedisCounters(redis_server.url, timeout=1.0)
        try:
            limit = Limit("worker", 2000, 40)  # lease 4, burst 40, refilled 2 per ms
            takes = [
                counters.take(["w"], [limit]) for counters in (first, second) for _ in range(200)
            ]
            started = time.monotonic()
            verdicts = await asyncio.gather(*takes)
            elapsed = time.monotonic() - started
            admitted = sum(1 for verdict in verdicts if verdict is not None and verdict.admitted)
            return admitted, elapsed
        finally:
            await first.aclose()
            await second.aclose()

    admitted, elapsed = asyncio.run(run())
    # Two processes, one budget: at most the burst, what refilled while the calls ran, and one
    # lease per process carried over (a slow machine makes the bound looser, never wrong).
    assert 40 <= admitted <= 40 + math.ceil(2000 * elapsed) + 2 * 4


def test_a_refusal_is_remembered_until_the_limit_admits_again(redis_server: RedisServer) -> None:
    async def run() -> tuple[list[bool], int]:
        counters = RedisCounters(redis_server.url, timeout=1.0)
        try:
            limit = Limit("worker", 0.1, 1)  # one request, then one per 10 s
            verdicts = [await counters.take(["w"], [limit]) for _ in range(20)]
            return [v is not None and v.admitted for v in verdicts], counters.calls
        finally:
            await counters.aclose()

    admitted, calls = asyncio.run(run())
    assert admitted == [True] + [False] * 19
    assert calls == 2  # the admission and the first refusal; the rest were answered here
