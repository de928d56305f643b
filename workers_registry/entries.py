"""``WorkerEntry``: what the data plane holds of a worker, and the reader of its stored row.

The dispatcher holds every worker in memory (100,000 at platform scale). Routing, forwarding
and rate limiting read ten fields of a worker; the admin API and the CLI listings read the
whole pydantic ``Worker`` (tags, timestamps). A ``WorkerEntry`` is those ten fields, with the
same names as on ``Worker``, in a slotted object: about 170 bytes against a ``Worker``'s 1.4 KB
(strings aside), and read from a row at under a tenth of ``Worker.model_validate``'s cost.

Every value read from the database is hostile (plain SQL writes around the store). The reader,
``worker_entry``, accepts a row at once only when every value has exactly the type the column
should give and satisfies the constraints of ``WorkerSpec``, read from the model's own fields
(one source of truth): upstreams a list of 1 to 64 URLs each already in the canonical form
``check_upstream_url`` returns, integers (never ``bool``) and floats in their ranges, a
``rate_burst`` only with a ``rate_limit``. Anything else (an ``int`` where a float belongs, a
URL with a trailing slash, NaN, a string, ...) goes through pydantic, which converts it or
rejects it exactly as ``Worker`` would: the rows accepted, and the values, are pydantic's by
construction, and the fast path is only a shortcut for the rows pydantic would take unchanged.

Pure data and validation; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

import annotated_types

from workers_registry.models import WorkerSpec, is_canonical_upstream_url

__all__ = ["ENTRY_FIELDS", "WorkerEntry", "worker_entry"]


@dataclass(slots=True)
class WorkerEntry:
    """A worker as routing, forwarding and rate limiting see it (a stored row, validated).

    Treat it as immutable: the routing table, the rate limiter (by identity) and the upstream
    selector share it, and a change to a worker replaces its entry. It is not frozen only
    because a frozen dataclass is slower to make (each field set through
    ``object.__setattr__``): 1.1 us more per entry, a third of reading a row, on every one
    of the 100,000 of a full load.
    """

    name: str
    upstreams: tuple[str, ...]
    enabled: bool = True
    preserve_host: bool = False
    max_body_bytes: int | None = None
    upstream_timeout: float | None = None
    max_concurrency: int | None = None
    rate_limit: float | None = None
    rate_burst: int | None = None
    client_rate_limit: float | None = None


#: The columns a ``WorkerEntry`` is read from, in the order ``worker_entry`` takes them.
ENTRY_FIELDS: Final = tuple(WorkerEntry.__dataclass_fields__)


class _StoredRoute(WorkerSpec):
    """The routing columns of a stored row, validated as ``Worker`` validates them: every
    constraint of ``WorkerSpec``, and the name taken as stored (``Worker._check_name``)."""

    name: str


def _bounds(field: str, kind: type) -> tuple[float, float]:
    """The range of an optional number field of ``WorkerSpec``: ``(low, high)``.

    Integers are bounded ``low <= value <= high`` and floats ``low < value <= high``; a
    field constrained any other way is refused at import, so the fast path can never drift
    from the model unnoticed.
    """
    annotated, none = get_args(WorkerSpec.model_fields[field].annotation)
    base, info = get_args(annotated)
    lower = annotated_types.Ge if kind is int else annotated_types.Gt
    found = {type(rule): rule for rule in info.metadata}
    if base is not kind or none is not type(None) or found.keys() != {lower, annotated_types.Le}:
        raise TypeError(f"WorkerSpec.{field}: the fast reader of rows cannot check {annotated}")
    low = found[lower]
    return (low.ge if kind is int else low.gt), found[annotated_types.Le].le


def _length(field: str) -> tuple[int, int]:
    rules = {type(rule): rule for rule in WorkerSpec.model_fields[field].metadata}
    return rules[annotated_types.MinLen].min_length, rules[annotated_types.MaxLen].max_length


_MIN_UPSTREAMS, _MAX_UPSTREAMS = _length("upstreams")
_BODY_LOW, _BODY_HIGH = _bounds("max_body_bytes", int)
_TIMEOUT_LOW, _TIMEOUT_HIGH = _bounds("upstream_timeout", float)
_CONCURRENCY_LOW, _CONCURRENCY_HIGH = _bounds("max_concurrency", int)
_RATE_LOW, _RATE_HIGH = _bounds("rate_limit", float)
_BURST_LOW, _BURST_HIGH = _bounds("rate_burst", int)
if _bounds("client_rate_limit", float) != (_RATE_LOW, _RATE_HIGH):
    raise TypeError("WorkerSpec: rate_limit and client_rate_limit are one kind of rate")


def worker_entry(row: Sequence[Any]) -> WorkerEntry:
    """The entry of a stored row: its ``ENTRY_FIELDS`` values, in that order.

    Raises pydantic's ``ValidationError`` for a row ``Worker`` would refuse.
    """
    entry = _as_stored(row)
    if entry is not None:
        return entry
    stored = _StoredRoute.model_validate(dict(zip(ENTRY_FIELDS, row, strict=True)))
    return WorkerEntry(
        stored.name,
        tuple(stored.upstreams),
        stored.enabled,
        stored.preserve_host,
        stored.max_body_bytes,
        stored.upstream_timeout,
        stored.max_concurrency,
        stored.rate_limit,
        stored.rate_burst,
        stored.client_rate_limit,
    )


def _as_stored(row: Sequence[Any]) -> WorkerEntry | None:
    """The entry of ``row`` if pydantic would take every value of it as it is (the store
    wrote it), else ``None``.

    Exact types only: ``bool`` is an ``int`` subclass, and pydantic turns an ``int`` given
    for a float into a ``float``; such rows are left to pydantic. NaN fails every comparison.
    """
    (name, urls, enabled, preserve_host, body, timeout, concurrency, rate, burst, client_rate) = row
    if not (
        type(name) is str
        and type(urls) is list
        and _MIN_UPSTREAMS <= len(urls) <= _MAX_UPSTREAMS
        and type(enabled) is bool
        and type(preserve_host) is bool
        and (body is None or (type(body) is int and _BODY_LOW <= body <= _BODY_HIGH))
        and (
            timeout is None or (type(timeout) is float and _TIMEOUT_LOW < timeout <= _TIMEOUT_HIGH)
        )
        and (
            concurrency is None
            or (type(concurrency) is int and _CONCURRENCY_LOW <= concurrency <= _CONCURRENCY_HIGH)
        )
        and (rate is None or (type(rate) is float and _RATE_LOW < rate <= _RATE_HIGH))
        and (
            burst is None
            or (rate is not None and type(burst) is int and _BURST_LOW <= burst <= _BURST_HIGH)
        )
        and (
            client_rate is None
            or (type(client_rate) is float and _RATE_LOW < client_rate <= _RATE_HIGH)
        )
    ):
        return None
    for url in urls:
        if type(url) is not str or not is_canonical_upstream_url(url):
            return None
    return WorkerEntry(
        name,
        tuple(urls),
        enabled,
        preserve_host,
        body,
        timeout,
        concurrency,
        rate,
        burst,
        client_rate,
    )
