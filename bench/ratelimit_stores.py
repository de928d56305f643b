"""What one rate-limit check costs the dispatcher, by client library: CPU and Redis commands.

    python -m bench.ratelimit_stores --redis-url redis://127.0.0.1:6379/0 [--checks 20000]

Runs ``checks`` checks from ``concurrency`` tasks (as requests in flight would) against a
running Redis, with limits never reached (every check admits), and prints for each way of
checking: the client-side CPU per check (``time.process_time``, what the dispatcher's core
pays) and the round trips per check (Redis's ``total_reads_processed`` before and after: one
read event per request arriving on a connection). The ways:

- ``gcra-evalsha``: the GCRA script, one ``EVALSHA`` per check (redis-py asyncio): the cost
  of a round trip, as the dispatcher pays it for limits below 200 requests per second;
- ``gcra-leases``: the dispatcher's ``RedisCounters`` (leases of ``Limit.lease`` requests,
  here 100: a limit of 10,000 requests per second or more);
- ``gcra-pipelined``: the script, the checks of one event-loop turn sent as one pipeline
  (a batching variant, measured to decide whether to batch);
- ``limits-*``: the ``limits`` library's async Redis storage on redis-py
  (``pip install limits``; skipped when missing): moving window, sliding window counter and
  fixed window, one ``hit`` per limit.

Each way is run with one limit (the worker's) and with two (worker and client).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from dispatcher.ratelimit.counters import _SCRIPT_SHA, RedisCounters
from dispatcher.ratelimit.gcra import REDIS_SCRIPT, Limit

Check = Callable[[int], Awaitable[Any]]

_WORKER = Limit("worker", 1e6, 1_000_000)
_CLIENT = Limit("client", 1e6, 1_000_000)


async def _commands(redis: Redis) -> int:
    """Read events Redis processed: one per request arriving on a connection, so about one
    per round trip (a pipeline's commands arrive in one)."""
    info = await redis.info("stats")
    return int(info["total_reads_processed"])


async def _measure(name: str, check: Check, checks: int, concurrency: int, redis: Redis) -> None:
    await asyncio.gather(*(check(i) for i in range(concurrency)))  # warm-up: connections
    before = await _commands(redis)
    each = checks // concurrency

    async def run(task: int) -> None:
        for i in range(each):
            await check(task * each + i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run(task) for task in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = each * concurrency
    commands = (await _commands(redis)) - before - 1  # the INFO itself
    print(
        f"{name:34} {cpu / done * 1e6:7.1f} us CPU/check  {commands / done:5.2f} round trips/check"
        f"  {done / wall:9,.0f} checks/s"
    )


class _Pipelined:
    """The GCRA script, every check of one loop turn in one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[tuple[list[Any], asyncio.Future[Any]]] = []

    def take(self, keys: list[str], limits: list[Limit]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        args: list[Any] = [len(keys), *keys, 1]
        for limit in limits:
            args += (limit.interval, limit.tolerance)
        if not self._pending:
            loop.call_soon(lambda: loop.create_task(self._flush()))
        self._pending.append((args, future))
        return future

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        pipe = self._redis.pipeline(transaction=False)
        for args, _ in batch:
            pipe.evalsha(_SCRIPT_SHA, *args)
        replies = await pipe.execute()
        for (_, future), reply in zip(batch, replies, strict=True):
            future.set_result(reply)


async def main_async(url: str, checks: int, concurrency: int) -> None:
    redis = Redis.from_url(url)
    await redis.script_load(REDIS_SCRIPT)
    counters = RedisCounters(url, timeout=1.0)
    pipelined = _Pipelined(redis)
    print(f"{checks} checks, {concurrency} concurrent tasks, limits never reached")
    for limits in ([_WORKER], [_WORKER, _CLIENT]):
        label = f"{len(limits)} limit{'s' if len(limits) > 1 else ''}"

        def keys(i: int, n: int = len(limits)) -> list[str]:
            return ["bench:w", f"bench:c:{i % 10}"][:n]

        async def evalsha(i: int, limits: list[Limit] = limits) -> Any:
            args = [1, *(n for limit in limits for n in (limit.interval, limit.tolerance))]
            return await redis.evalsha(_SCRIPT_SHA, len(limits), *keys(i), *args)

        async def leased(i: int, limits: list[Limit] = limits) -> Any:
            return await counters.take(keys(i), limits)

        async def piped(i: int, limits: list[Limit] = limits) -> Any:
            return await pipelined.take(keys(i), limits)

        await _measure(f"gcra-evalsha, {label}", evalsha, checks, concurrency, redis)
        await _measure(f"gcra-leases, {label}", leased, checks, concurrency, redis)
        await _measure(f"gcra-pipelined, {label}", piped, checks, concurrency, redis)
        try:
            from limits import RateLimitItemPerSecond
            from limits.aio import strategies
            from limits.aio.storage import RedisStorage
        except ImportError:
            print("limits: not installed (pip install limits), skipped")
            continue
        storage = RedisStorage(f"async+{url}", implementation="redispy")
        item = RateLimitItemPerSecond(1_000_000)
        for kind, strategy in [
            ("moving", strategies.MovingWindowRateLimiter),
            ("sliding", strategies.SlidingWindowCounterRateLimiter),
            ("fixed", strategies.FixedWindowRateLimiter),
        ]:
            limiter = strategy(storage)

            async def hit(
                i: int, n: int = len(limits), limiter: Any = limiter, item: Any = item
            ) -> Any:
                for key in keys(i, n):
                    await limiter.hit(item, key)

            await _measure(f"limits-{kind}, {label}", hit, checks, concurrency, redis)
    await counters.aclose()
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit_stores")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main_async(args.redis_url, args.checks, args.concurrency))


if __name__ == "__main__":
    main()
