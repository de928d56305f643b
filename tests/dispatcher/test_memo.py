"""The one bounded memo (``dispatcher.memo``): remembers, is bounded (emptied when full), and
never remembers a computation that raised."""

from __future__ import annotations

import pytest

from dispatcher.memo import Memo


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
    double = Memo(function, 4)
    assert [double[3], double[3], double[4], double[3]] == [6, 6, 8, 6]
    assert function.calls == [3, 4]


def test_at_most_size_answers_are_kept() -> None:
    double = Memo(Counted(), 100)
    for n in range(10_000):
        assert double[n] == n * 2
        assert len(double) <= 100


def test_a_full_memo_is_emptied_before_the_next_answer_is_remembered() -> None:
    function = Counted()
    double = Memo(function, 2)
    double[1]
    double[2]
    double[3]  # full: 1 and 2 are forgotten
    assert dict(double) == {3: 6}
    function.calls.clear()
    double[1]
    assert function.calls == [1]


def test_a_computation_that_raised_is_not_remembered() -> None:
    function = Counted()
    double = Memo(function, 4)
    for _ in range(2):
        with pytest.raises(ValueError):
            double[-1]
    assert function.calls == [-1, -1]
    assert len(double) == 0
