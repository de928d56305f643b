"""``memo(size)``: the dispatcher's one bounded memo, for pure functions on the hot path.

Used where an answer is a function of its arguments alone and the same arguments repeat
(hosts, worker names, upstream URLs, peers, a routing table's subdomains). Not for caches of
outside facts that expire (the custom-domain cache in ``dispatcher.domains`` has TTLs).

The eviction rule, the same for every memo: at most ``size`` answers are kept; remembering one
more forgets the least recently used one. So a flood of distinct hostile arguments costs a
bounded amount of memory and only ever evicts, never grows. A call that raises is not
remembered; a function whose refusals should be remembered returns them instead.

It is ``functools.lru_cache``: its hit path runs in C, no Python frame per call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar, cast

__all__ = ["Memo", "memo"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Memo(Protocol[P, R_co]):
    """A remembering function: called like the function it wraps."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def cache_info(self) -> functools._CacheInfo: ...

    def cache_clear(self) -> None: ...


def memo(size: int) -> Callable[[Callable[P, R]], Memo[P, R]]:
    """Decorate (or wrap) a pure function so that it remembers up to ``size`` answers."""
    return cast(Callable[[Callable[P, R]], Memo[P, R]], functools.lru_cache(maxsize=size))
