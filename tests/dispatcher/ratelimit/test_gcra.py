"""The GCRA arithmetic, in Python and as the Redis script (against a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from dispatcher.ratelimit.gcra import REDIS_SCRIPT, Limit, take
from tests.redis import RedisServer

SECOND = 1_000_000


def test_a_fresh_key_admits_the_burst_at_once_then_refuses() -> None:
    tats: dict[str, int] = {}
    limit = Limit("worker", rate=10, burst=3)
    verdicts = [take(tats, ["k"], [limit], now=0) for _ in range(4)]
    assert [v.admitted for v in verdicts] == [True, True, True, False]
    assert verdicts[3].wait == SECOND // 10  # the next token is one interval away


def test_the_steady_rate_is_admitted_after_the_burst() -> None:
    tats: dict[str, int] = {}
    limit = Limit("worker", rate=10, burst=1)
    admitted = sum(take(tats, ["k"], [limit], now=t).admitted for t in range(0, SECOND, 1000))
    assert admitted == 10  # one per 100 ms over one second, whatever the offered load


def test_a_request_is_charged_to_every_limit_or_to_none() -> None:
    tats: dict[str, int] = {}
    worker, client = Limit("worker", 100, 100), Limit("client", 1, 1)
    assert take(tats, ["w", "c"], [worker, client], now=0).admitted
    refused = take(tats, ["w", "c"], [worker, client], now=0)
    assert (refused.admitted, refused.refused) == (False, 1)
    # The refused request did not use up the worker's budget.
    assert tats["w"] == worker.interval


@pytest.mark.parametrize(
    ("limit", "policy"),
    [
        pytest.param(Limit("worker", 100, 100), '"worker";q=100;w=1', id="one-second"),
        pytest.param(Limit("worker", 10, 50), '"worker";q=50;w=5', id="burst-of-five-seconds"),
        pytest.param(Limit("client", 0.5, 1), '"client";q=1;w=2', id="slower-than-one-per-s"),
        pytest.param(Limit("client", 10, 5), '"client";q=10;w=1', id="burst-below-rate"),
    ],
)
def test_policy_is_the_draft_field_item(limit: Limit, policy: str) -> None:
    assert limit.policy() == policy


def test_the_redis_script_gives_the_python_verdicts(redis_server: RedisServer) -> None:
    async def run() -> list[tuple[int, int, int]]:
        client = Redis.from_url(redis_server.url)
        try:
            replies = []
            for _ in range(4):
                reply = await client.eval(
                    REDIS_SCRIPT, 2, "w", "c", 1, *(100_000, 300_000), *(SECOND, SECOND)
                )
                replies.append((int(reply[0]), int(reply[1]), int(reply[2])))
            ttl = await client.pttl("w")
            assert 0 < ttl <= 301
            return replies
        finally:
            await client.aclose()

    replies = asyncio.run(run())
    # The client limit (burst 1) refuses the second request; the worker keeps its budget.
    assert replies[0] == (0, 0, 1)
    assert all(
        refused == 2 and 0 < wait <= SECOND and granted == 0
        for refused, wait, granted in replies[1:]
    )


def test_the_redis_script_leases_what_every_key_has_room_for(redis_server: RedisServer) -> None:
    async def run() -> list[int]:
        client = Redis.from_url(redis_server.url)
        try:
            granted = []
            for _ in range(3):  # worker: burst 10; client: burst 4; 3 wanted each time
                reply = await client.eval(
                    REDIS_SCRIPT, 2, "w", "c", 3, *(SECOND, 10 * SECOND), *(SECOND, 4 * SECOND)
                )
                granted.append(int(reply[2]))
            return granted
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [3, 1, 0]  # never more than the smaller room


@pytest.mark.parametrize(
    ("rate", "burst", "lease"),
    [
        pytest.param(100, 100, 1, id="slow-no-lease"),
        pytest.param(1000, 1000, 10, id="ten-ms-of-rate"),
        pytest.param(1000, 20, 2, id="tenth-of-the-burst"),
        pytest.param(1e6, 10**6, 100, id="at-most-100"),
    ],
)
def test_lease_size(rate: float, burst: int, lease: int) -> None:
    assert Limit("worker", rate, burst).lease == lease
