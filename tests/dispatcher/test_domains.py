"""Custom-domain resolver (``dispatcher.domains``): README, "Registry and changes".

The registry lookup is a real async function written here that counts its calls; time is a
fake clock the test moves by hand. Nothing sleeps. The resolver's single-flight is built on
asyncio tasks: ``anyio_backend`` is ``"asyncio"`` (``tests/postgres.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import pytest
from anyio.lowlevel import checkpoint

from dispatcher.domains import CustomDomainResolver
from dispatcher.errors import RegistryUnavailable
from dispatcher.routing import UNAVAILABLE
from workers_registry.models import CustomDomain, DomainStatus

pytestmark = pytest.mark.anyio

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOST = "shop.example.org"


def make_domain(domain: str = HOST, worker: str = "shop", status: str = "active") -> CustomDomain:
    return CustomDomain(
        domain=domain,
        worker=worker,
        status=DomainStatus(status),
        created_at=NOW,
        updated_at=NOW,
    )


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Registry:
    """The lookup the resolver calls: answers from ``records``, counts every call."""

    records: dict[str, CustomDomain] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    down: bool = False
    gate: anyio.Event | None = None

    async def lookup(self, host: str) -> CustomDomain | None:
        self.calls.append(host)
        answer = self.records.get(host)  # the query ran; its result is on the way back
        if self.gate is not None:
            await self.gate.wait()
        else:
            await checkpoint()
        if self.down:
            raise RegistryUnavailable("database is down")
        return answer

    async def lookup_many(self, hosts: list[str]) -> list[CustomDomain]:
        self.calls.extend(hosts)
        await checkpoint()
        if self.down:
            raise RegistryUnavailable("database is down")
        return [self.records[host] for host in hosts if host in self.records]


TTL, NEGATIVE_TTL, ERROR_TTL = 60.0, 10.0, 1.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> Registry:
    return Registry(records={HOST: make_domain()})


def make_resolver(
    registry: Registry, clock: Clock, *, maxsize: int = 1000, error_ttl: float = ERROR_TTL
) -> CustomDomainResolver:
    return CustomDomainResolver(
        registry.lookup,
        registry.lookup_many,
        ttl=TTL,
        negative_ttl=NEGATIVE_TTL,
        maxsize=maxsize,
        error_ttl=error_ttl,
        clock=clock,
    )


# --- single-flight --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outage", "requests"),
    [pytest.param(False, 1000, id="up"), pytest.param(True, 200, id="outage")],
)
async def test_concurrent_misses_for_one_host_make_one_lookup(
    registry: Registry, clock: Clock, outage: bool, requests: int
) -> None:
    resolver = make_resolver(registry, clock)
    registry.down = outage
    registry.gate = anyio.Event()
    answers: list[object] = []

    async def ask() -> None:
        answers.append(await resolver.resolve(HOST))

    async with anyio.create_task_group() as tg:
        for _ in range(requests):
            tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        registry.gate.set()

    assert registry.calls == [HOST]
    assert answers == [UNAVAILABLE if outage else make_domain()] * requests
    assert resolver.queries == 1


async def test_concurrent_misses_for_different_hosts_make_one_lookup_each(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    registry.gate = anyio.Event()
    hosts = [f"h{i}.example.org" for i in range(5)]

    async with anyio.create_task_group() as tg:
        for host in hosts * 20:
            tg.start_soon(resolver.resolve, host)
        await anyio.wait_all_tasks_blocked()
        registry.gate.set()

    assert sorted(registry.calls) == hosts


async def test_a_cancelled_waiter_does_not_cancel_the_shared_lookup(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    registry.gate = anyio.Event()
    answers: list[object] = []
    doomed = anyio.CancelScope()

    async def impatient() -> None:
        with doomed:
            await resolver.resolve(HOST)

    async def patient() -> None:
        answers.append(await resolver.resolve(HOST))

    async with anyio.create_task_group() as tg:
        tg.start_soon(impatient)
        tg.start_soon(patient)
        await anyio.wait_all_tasks_blocked()
        doomed.cancel()
        await anyio.wait_all_tasks_blocked()
        registry.gate.set()

    assert doomed.cancelled_caught
    assert answers == [make_domain()]
    assert registry.calls == [HOST]
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST]


# --- positive and negative TTL --------------------------------------------------------------


async def test_answer_is_served_from_cache_within_ttl(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock)
    assert await resolver.resolve(HOST) == make_domain()
    registry.records[HOST] = make_domain(status="failed")  # changed, but not yet visible
    clock.advance(TTL - 0.001)
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST]


async def test_answer_is_looked_up_again_after_ttl(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock)
    await resolver.resolve(HOST)
    registry.records[HOST] = make_domain(status="failed")
    clock.advance(TTL + 0.001)
    assert await resolver.resolve(HOST) == make_domain(status="failed")
    assert registry.calls == [HOST, HOST]


async def test_unknown_host_is_cached_for_negative_ttl(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock)
    host = "unknown.example.org"
    assert await resolver.resolve(host) is None
    registry.records[host] = make_domain(host)
    clock.advance(NEGATIVE_TTL - 0.001)
    assert await resolver.resolve(host) is None
    assert registry.calls == [host]


async def test_negative_entry_expires_after_negative_ttl_not_ttl(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    host = "unknown.example.org"
    await resolver.resolve(host)
    await resolver.resolve(HOST)
    registry.records[host] = make_domain(host)
    clock.advance(NEGATIVE_TTL + 0.001)
    assert await resolver.resolve(host) == make_domain(host)
    assert await resolver.resolve(HOST) == make_domain()  # positive entry still fresh
    assert registry.calls == [host, HOST, host]


async def test_cached_answers_synchronously_and_false_means_look_it_up(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    assert resolver.cached(HOST) is False
    await resolver.resolve(HOST)
    await resolver.resolve("unknown.example.org")
    assert resolver.cached(HOST) == make_domain()
    assert resolver.cached("unknown.example.org") is None
    clock.advance(NEGATIVE_TTL + 0.001)
    assert resolver.cached("unknown.example.org") is False
    clock.advance(TTL)
    assert resolver.cached(HOST) is False


async def test_hits_misses_and_queries_are_counted(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock)
    assert resolver.hit_ratio == 0.0
    await resolver.resolve(HOST)
    for _ in range(3):
        await resolver.resolve(HOST)
    assert (resolver.hits, resolver.misses, resolver.queries) == (3, 1, 1)
    assert resolver.hit_ratio == 0.75


# --- registry failures ----------------------------------------------------------------------


async def test_stale_answer_is_served_when_the_registry_is_down(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    await resolver.resolve(HOST)
    clock.advance(TTL * 10)
    registry.down = True
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST, HOST]


async def test_stale_negative_answer_is_served_when_the_registry_is_down(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    host = "unknown.example.org"
    await resolver.resolve(host)
    clock.advance(NEGATIVE_TTL * 10)
    registry.down = True
    assert await resolver.resolve(host) is None


async def test_nothing_known_and_registry_down_is_unavailable(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    registry.down = True
    assert await resolver.resolve(HOST) is UNAVAILABLE
    assert len(resolver) == 0  # a failure is not cached as an answer


async def test_failure_is_remembered_for_error_ttl(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock)
    registry.down = True
    assert await resolver.resolve(HOST) is UNAVAILABLE
    registry.down = False
    clock.advance(ERROR_TTL - 0.001)
    assert await resolver.resolve(HOST) is UNAVAILABLE
    assert registry.calls == [HOST]
    clock.advance(0.002)
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST, HOST]


async def test_stale_answer_is_served_without_a_lookup_during_error_ttl(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    await resolver.resolve(HOST)
    clock.advance(TTL + 1)
    registry.down = True
    assert await resolver.resolve(HOST) == make_domain()
    clock.advance(ERROR_TTL / 2)
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST, HOST]


async def test_failure_of_one_host_does_not_block_lookups_of_others(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    registry.down = True
    await resolver.resolve("a.example.org")
    registry.down = False
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == ["a.example.org", HOST]


async def test_recovered_registry_answers_are_cached_again(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    registry.down = True
    await resolver.resolve(HOST)
    registry.down = False
    clock.advance(ERROR_TTL + 0.001)
    assert await resolver.resolve(HOST) == make_domain()
    clock.advance(TTL / 2)
    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST, HOST]


# --- size bound -----------------------------------------------------------------------------


async def test_cache_never_holds_more_than_maxsize_hosts(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock, maxsize=8)
    for i in range(100):
        await resolver.resolve(f"h{i}.example.org")
        assert len(resolver) <= 8
    assert len(resolver) == 8


async def test_least_recently_used_host_is_evicted_first(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock, maxsize=2)
    await resolver.resolve("a.example.org")
    await resolver.resolve("b.example.org")
    await resolver.resolve("a.example.org")  # a is now the most recently used
    await resolver.resolve("c.example.org")  # evicts b
    registry.calls.clear()
    await resolver.resolve("a.example.org")
    assert registry.calls == []
    await resolver.resolve("b.example.org")
    assert registry.calls == ["b.example.org"]


# --- changes (the follower's refresh) ---------------------------------------------------------


async def test_a_change_to_one_host_re_reads_it_in_place_and_no_other(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    other = "other.example.org"
    await resolver.resolve(HOST)
    await resolver.resolve(other)
    registry.records[HOST] = make_domain(worker="blog")

    await resolver.refresh([HOST])

    assert resolver.cached(HOST) == make_domain(worker="blog")  # replaced, still cached
    assert resolver.cached(other) is None  # the negative answer kept
    assert registry.calls == [HOST, other, HOST]
    assert resolver.misses == 2  # the refresh is not a miss


async def test_a_change_to_any_host_re_reads_every_cached_one(
    registry: Registry, clock: Clock
) -> None:
    resolver = make_resolver(registry, clock)
    other = "other.example.org"
    await resolver.resolve(HOST)
    await resolver.resolve(other)
    registry.records[other] = make_domain(domain=other)

    await resolver.refresh(None)

    assert len(resolver) == 2  # not emptied
    assert resolver.cached(other) == make_domain(domain=other)
    assert registry.calls == [HOST, other, HOST, other]


@pytest.mark.parametrize("everything", [False, True], ids=["one-host", "everything"])
async def test_a_change_forgets_a_remembered_failure(
    registry: Registry, clock: Clock, everything: bool
) -> None:
    resolver = make_resolver(registry, clock)
    registry.down = True
    await resolver.resolve(HOST)  # remembered for ERROR_TTL
    registry.down = False

    await resolver.refresh(None if everything else [HOST])

    assert await resolver.resolve(HOST) == make_domain()
    assert registry.calls == [HOST, HOST]


@pytest.mark.parametrize("everything", [False, True], ids=["one-host", "everything"])
async def test_a_change_during_a_lookup_keeps_the_old_answer_out_of_the_cache(
    registry: Registry, clock: Clock, everything: bool
) -> None:
    # A change that arrives while a lookup is on its way back must win: the answer read
    # before the change may serve the requests already waiting for it, but must not be cached
    # for a whole TTL (changes are live within 1 s, README, "Registry and changes").
    resolver = make_resolver(registry, clock)
    registry.gate = anyio.Event()
    answers: list[object] = []

    async def ask() -> None:
        answers.append(await resolver.resolve(HOST))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        registry.records[HOST] = make_domain(status="failed")
        await resolver.refresh(None if everything else [HOST])
        registry.gate.set()

    assert answers == [make_domain()]
    assert await resolver.resolve(HOST) == make_domain(status="failed")
    assert registry.calls == [HOST, HOST]


async def test_a_change_to_an_unknown_host_asks_nothing(registry: Registry, clock: Clock) -> None:
    resolver = make_resolver(registry, clock)
    await resolver.refresh(["never.example.org"])
    assert registry.calls == []
    assert await resolver.resolve(HOST) == make_domain()
