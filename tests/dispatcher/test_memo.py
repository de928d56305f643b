"""The one bounded memo (``dispatcher.memo``): remembers, is bounded, forgets the least
recently used first, and never remembers a call that raised."""

from __future__ import annotations

import pytest

from dispatcher.memo import memo


class Counted:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> int:
        self.calls.append(n)
        if n < 0:
            raise ValueError(n)
        return n * 2


def test_an_answer_is_computed_once_and_remembered() -> None:
    function = Counted()
    double = memo(4)(function)
    assert [double(3), double(3), double(4), double(3)] == [6, 6, 8, 6]
    assert function.calls == [3, 4]


def test_at_most_size_answers_are_kept() -> None:
    double = memo(100)(Counted())
    for n in range(10_000):
        double(n)
    assert double.cache_info().currsize == 100


def test_the_least_recently_used_answer_is_forgotten_first() -> None:
    function = Counted()
    double = memo(2)(function)
    double(1)
    double(2)
    double(1)  # 2 is now the least recently used
    double(3)  # full: forgets 2
    function.calls.clear()
    double(1)
    double(2)
    assert function.calls == [2]


def test_a_call_that_raised_is_not_remembered() -> None:
    function = Counted()
    double = memo(4)(function)
    for _ in range(2):
        with pytest.raises(ValueError):
            double(-1)
    assert function.calls == [-1, -1]
    assert double.cache_info().currsize == 0
