"""Upstream selection and failover (``dispatcher.proxy.upstreams``) with a fake clock and fake
attempts: the order targets are tried in, which are ejected and restored, when a request moves
on to the next target and when it may not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dispatcher.errors import UpstreamConnectFailed, UpstreamTimeout
from dispatcher.proxy.transport import RequestBody
from dispatcher.proxy.upstreams import Target, UpstreamSelector
from workers_registry.entries import WorkerEntry

URLS = ["http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"]

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_worker(urls: list[str] = URLS) -> WorkerEntry:
    return WorkerEntry("shop", tuple(urls))


class Upstreams:
    """Fake attempts: the ports in ``refusing`` refuse the connection, the others answer."""

    def __init__(self, *refusing: int, failing: Exception | None = None) -> None:
        self.refusing = set(refusing)
        self.failing = failing
        self.tried: list[int] = []

    async def attempt(self, target: Target, position: int) -> str:
        assert position == len(self.tried)
        self.tried.append(target.origin.port)
        if target.origin.port in self.refusing:
            raise UpstreamConnectFailed()
        if self.failing is not None:
            raise self.failing
        return target.url


async def test_the_first_target_that_accepts_answers() -> None:
    selector = UpstreamSelector(clock=Clock())
    upstreams = Upstreams()
    answer = await selector.first_accepting(selector.candidates(make_worker()), upstreams.attempt)
    assert (answer, upstreams.tried, selector.ejected()) == (URLS[0], [9001], {})


async def test_a_refusing_target_is_ejected_and_the_next_one_answers() -> None:
    selector = UpstreamSelector(eject_seconds=10.0, clock=Clock())
    upstreams = Upstreams(9001)
    answer = await selector.first_accepting(selector.candidates(make_worker()), upstreams.attempt)
    assert answer == URLS[1]
    assert upstreams.tried == [9001, 9002]
    assert selector.ejected() == {URLS[0]: 10.0}


async def test_when_every_target_refuses_the_last_refusal_is_raised() -> None:
    selector = UpstreamSelector(clock=Clock())
    upstreams = Upstreams(9001, 9002, 9003)
    with pytest.raises(UpstreamConnectFailed):
        await selector.first_accepting(selector.candidates(make_worker()), upstreams.attempt)
    assert upstreams.tried == [9001, 9002, 9003]
    assert set(selector.ejected()) == set(URLS)


async def test_a_body_already_sent_is_not_replayed_on_the_next_target() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    body = RequestBody(chunks(), 1)
    body.sent = 1
    selector = UpstreamSelector(clock=Clock())
    upstreams = Upstreams(9001)
    with pytest.raises(UpstreamConnectFailed):
        await selector.first_accepting(selector.candidates(make_worker()), upstreams.attempt, body)
    assert upstreams.tried == [9001]


async def test_a_body_not_sent_yet_moves_on_to_the_next_target() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    selector = UpstreamSelector(clock=Clock())
    upstreams = Upstreams(9001)
    answer = await selector.first_accepting(
        selector.candidates(make_worker()), upstreams.attempt, RequestBody(chunks(), 1)
    )
    assert answer == URLS[1]


async def test_other_failures_pass_through_without_ejecting_or_moving_on() -> None:
    selector = UpstreamSelector(clock=Clock())
    upstreams = Upstreams(failing=UpstreamTimeout())
    with pytest.raises(UpstreamTimeout):
        await selector.first_accepting(selector.candidates(make_worker()), upstreams.attempt)
    assert (upstreams.tried, selector.ejected()) == ([9001], {})


async def test_an_ejected_target_that_answers_again_is_restored() -> None:
    clock = Clock()
    selector = UpstreamSelector(eject_seconds=10.0, clock=clock)
    worker = make_worker(URLS[:1])
    with pytest.raises(UpstreamConnectFailed):
        await selector.first_accepting(selector.candidates(worker), Upstreams(9001).attempt)
    assert set(selector.ejected()) == {URLS[0]}
    # A lone target is tried even while ejected (better a likely failure than a sure one).
    assert await selector.first_accepting(selector.candidates(worker), Upstreams().attempt)
    assert selector.ejected() == {}


def test_targets_take_turns_and_ejected_ones_are_skipped_until_their_time_is_up() -> None:
    clock = Clock()
    selector = UpstreamSelector(eject_seconds=10.0, clock=clock)
    worker = make_worker()
    firsts = [selector.candidates(worker)[0].url for _ in range(3)]
    assert firsts == URLS
    selector.eject(selector.candidates(worker)[0])  # URLS[0], whose turn it is
    assert [t.url for t in selector.candidates(worker)] == [URLS[1], URLS[2]]
    clock.now += 10.0
    assert [t.url for t in selector.candidates(worker)] == [URLS[2], URLS[0], URLS[1]]


def test_when_every_target_is_ejected_all_are_tried_anyway() -> None:
    selector = UpstreamSelector(clock=Clock())
    worker = make_worker()
    for target in selector.candidates(worker):
        selector.eject(target)
    assert len(selector.candidates(worker)) == len(URLS)
