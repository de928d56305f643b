"""``Memo``: the dispatcher's one bounded memo, for pure functions of one key on the hot path.

Used where an answer is a function of its key alone and keys repeat (hosts, worker names, IP
literals, upstream URLs, peers, a routing table's subdomains and control hosts). Not for caches
of outside facts that expire (the custom-domain cache in ``dispatcher.domains`` has TTLs).

The eviction rule, the same for every memo: at most ``size`` answers are kept; when the memo is
full, it is emptied before the next answer is remembered. A flood of distinct hostile keys
therefore costs bounded memory, and at worst one recomputation per key after each emptying; no
bookkeeping is paid on a hit. A computation that raises is not remembered (a function whose
refusals should be remembered returns them instead).

``memo[key]`` is a plain dict lookup when the answer is known (no Python frame, no allocation);
``@memo(size)`` makes a function of one key that lookup (the memo's bound ``__getitem__``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["Memo", "memo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(dict[K, V]):
    """``memo[key]`` is ``function(key)``, computed on first use and remembered (see above)."""

    __slots__ = ("_function", "_size")

    def __init__(self, function: Callable[[K], V], size: int) -> None:
        super().__init__()
        self._function = function
        self._size = size

    def __missing__(self, key: K) -> V:
        value = self._function(key)
        if len(self) >= self._size:
            self.clear()
        self[key] = value
        return value


def memo(size: int) -> Callable[[Callable[[K], V]], Callable[[K], V]]:
    """Decorate a pure function of one key: calling it looks the key up in a ``Memo``."""

    def remember(function: Callable[[K], V]) -> Callable[[K], V]:
        return Memo(function, size).__getitem__

    return remember
