"""The lean worker record (``workers_registry.entries``): its reader of stored rows gives what
the pydantic ``Worker`` gives, for any row at all (the database is hostile)."""

from __future__ import annotations

import math
from dataclasses import astuple
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from workers_registry.entries import ENTRY_FIELDS, WorkerEntry, _as_stored, worker_entry
from workers_registry.models import Worker, WorkerCreate, WorkerSpec

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
UPSTREAM = "http://10.0.0.5:8080"


def pydantic_answer(row: tuple[Any, ...]) -> WorkerEntry | None:
    """What the full model makes of the row: the entry of the ``Worker``, or refused."""
    try:
        worker = Worker.model_validate(
            {**dict(zip(ENTRY_FIELDS, row, strict=True)), "created_at": NOW, "updated_at": NOW}
        )
    except ValidationError:
        return None
    fields = {name: getattr(worker, name) for name in ENTRY_FIELDS}
    return WorkerEntry(**{**fields, "upstreams": tuple(worker.upstreams)})


def lean_answer(row: tuple[Any, ...]) -> WorkerEntry | None:
    try:
        return worker_entry(row)
    except ValidationError:
        return None


def typed(entry: WorkerEntry | None) -> object:
    """The entry's values with their types: ``2 == 2.0`` and ``1 == True``, but an entry
    must hold exactly what pydantic would have."""
    if entry is None:
        return None
    return [
        (type(value), value if not isinstance(value, tuple) else [(type(v), v) for v in value])
        for value in astuple(entry)
    ]


# -- the values a hostile row may hold ----------------------------------------------------------

_URLS = st.one_of(
    st.sampled_from(
        [
            UPSTREAM,
            "https://api.internal/base/path",
            "http://my_app:8000",
            "http://a:65535",
            "http://a:65536",
            "http://a:0",
            "http://a:080",
            "http://a.internal/",
            "HTTP://A.internal",
            " http://a.internal",
            "http://[::1]:9000",
            "http://user@a.internal",
            "http://a.internal/?q=1",
            "http://a.internal/#f",
            "ftp://a.internal",
            "http://",
            "http://a\x00b",
            "",
        ]
    ),
    st.from_regex(
        r"\A[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,12}[A-Za-z0-9_])?"
        r"(?::[0-9]{1,6})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,6}){0,2}/?\Z"
    ),
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
)
_UPSTREAMS = st.one_of(
    st.lists(_URLS, max_size=3),
    st.lists(st.just(UPSTREAM), min_size=63, max_size=66),
    st.lists(_URLS, max_size=2).map(tuple),
    _URLS,
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
_NOT_NUMBERS = st.one_of(
    st.none(), st.booleans(), st.text(max_size=4), st.sampled_from(["5", "0.5", "1e3", " 7 "])
)
_INTS = st.one_of(
    _NOT_NUMBERS,
    st.integers(),
    st.sampled_from([-1, 0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63]),
    st.floats(),
    st.sampled_from([1.0, 5.0, 0.5, math.nan, math.inf]),
)
_FLOATS = st.one_of(
    _NOT_NUMBERS,
    st.floats(),
    st.sampled_from(
        [0.0, -0.0, 5e-324, 0.5, 86_400.0, 86_400.00000001, 1e6, 1e6 + 1e-9, math.nan, math.inf]
    ),
    st.integers(min_value=-2, max_value=2_000_000),
    st.sampled_from([1, 86_400, 86_401, 1_000_000, 1_000_001]),
)
_BOOLS = st.one_of(
    st.booleans(), st.none(), st.sampled_from([0, 1, 2, 0.0, 1.0, "true", "no", "1", b"1"])
)
_NAMES = st.one_of(
    st.text(max_size=8), st.sampled_from(["shop", "Admin", "bad_name"]), _NOT_NUMBERS
)

_HOSTILE = (_NAMES, _UPSTREAMS, _BOOLS, _BOOLS, _INTS, _FLOATS, _INTS, _FLOATS, _INTS, _FLOATS)
_VALID = st.tuples(
    st.sampled_from(["shop", "a", "Admin", ""]),
    st.lists(st.sampled_from([UPSTREAM, "https://b.internal:8443/app"]), min_size=1, max_size=64),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(0, 2**63 - 1),
    st.none() | st.floats(0, 86_400, exclude_min=True),
    st.none() | st.integers(1, 2**31 - 1),
    st.floats(0, 1_000_000, exclude_min=True),
    st.none() | st.integers(1, 2**31 - 1),
    st.none() | st.floats(0, 1_000_000, exclude_min=True),
)


@st.composite
def _rows(draw: st.DrawFn) -> tuple[Any, ...]:
    """A row the store could have written with one to three values replaced by anything:
    every constraint is met but the ones under test (a row of nothing but random values
    almost never gets past its first invalid field)."""
    row = list(draw(_VALID))
    for index in draw(st.sets(st.integers(0, len(row) - 1), min_size=1, max_size=3)):
        row[index] = draw(_HOSTILE[index])
    return tuple(row)


_ROWS = st.one_of(_rows(), st.tuples(*_HOSTILE))


@settings(max_examples=2000)
@given(row=_ROWS)
@example(row=("shop", [UPSTREAM], True, False, None, None, None, None, 5, None))  # burst alone
@example(row=("shop", [UPSTREAM], True, False, None, None, None, 2.0, 5, None))
@example(row=("shop", [UPSTREAM], True, False, None, None, None, 2, 5, None))  # int rate
@example(row=("shop", [UPSTREAM], 1, False, None, None, None, None, None, None))  # int for bool
@example(row=("shop", [UPSTREAM], True, False, True, None, None, None, None, None))  # bool for int
@example(row=("shop", [UPSTREAM], True, False, None, math.nan, None, None, None, None))
@example(row=("shop", [UPSTREAM], True, False, None, math.inf, None, None, None, None))
@example(row=("shop", [UPSTREAM], True, False, 2**63, None, None, None, None, None))
@example(row=("shop", [UPSTREAM + "/"], True, False, None, None, None, None, None, None))
@example(row=("shop", [UPSTREAM] * 65, True, False, None, None, None, None, None, None))
@example(row=(b"shop", [UPSTREAM], True, False, None, None, None, None, None, None))
@example(row=("shop", [UPSTREAM], None, False, None, None, None, None, None, None))
def test_the_lean_reader_answers_as_pydantic_does(row: tuple[Any, ...]) -> None:
    assert typed(lean_answer(row)) == typed(pydantic_answer(row))


#: Edge values of each kind of column, each tried in every column of an otherwise valid row.
_EDGES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    2**63 - 1,
    2**63,
    86_400,
    86_401,
    1_000_000,
    1_000_001,
    0.0,
    -0.0,
    5e-324,
    0.5,
    1.0,
    86_400.0,
    86_400.00000001,
    1e6,
    1e6 + 1e-9,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "1",
    "0.5",
    "true",
    b"1",
    [],
    [UPSTREAM],
    (UPSTREAM,),
    [UPSTREAM + "/"],
    [UPSTREAM] * 64,
    [UPSTREAM] * 65,
    UPSTREAM,
]
_BASE_ROW = ("shop", [UPSTREAM], True, False, 1024, 30.0, 8, 5.0, 10, 2.5)


@pytest.mark.parametrize("value", _EDGES, ids=lambda value: repr(value)[:40])
@pytest.mark.parametrize("field", ENTRY_FIELDS)
def test_each_edge_value_in_each_column_is_read_as_pydantic_reads_it(
    field: str, value: Any
) -> None:
    row = tuple(
        value if name == field else base for name, base in zip(ENTRY_FIELDS, _BASE_ROW, strict=True)
    )
    assert typed(lean_answer(row)) == typed(pydantic_answer(row))


@settings(max_examples=300)
@given(
    spec=st.builds(
        WorkerCreate,
        name=st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z").filter(
            lambda name: name not in {"admin", "api", "www"}
        ),
        upstreams=st.lists(
            st.from_regex(r"\A[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9]{1,8}(?::[1-9][0-9]{0,3})?/?\Z"),
            min_size=1,
            max_size=64,
        ),
        enabled=st.booleans(),
        preserve_host=st.booleans(),
        max_body_bytes=st.none() | st.integers(0, 2**63 - 1),
        upstream_timeout=st.none() | st.floats(0, 86_400, exclude_min=True),
        max_concurrency=st.none() | st.integers(1, 2**31 - 1),
        rate_limit=st.floats(0, 1_000_000, exclude_min=True),
        rate_burst=st.none() | st.integers(1, 2**31 - 1),
        client_rate_limit=st.none() | st.floats(0, 1_000_000, exclude_min=True),
    )
)
def test_every_row_the_store_writes_is_read_without_pydantic(spec: WorkerCreate) -> None:
    # The store writes model_dump(mode="json"); the databases give those values back.
    stored = spec.model_dump(mode="json")
    row = tuple(stored[name] for name in ENTRY_FIELDS)
    assert _as_stored(row) is not None
    assert typed(worker_entry(row)) == typed(pydantic_answer(row))


def test_an_entry_holds_every_field_of_a_worker_but_its_tags_and_timestamps() -> None:
    assert set(ENTRY_FIELDS) == set(WorkerSpec.model_fields) - {"tags"} | {"name"}
    assert set(Worker.model_fields) - set(ENTRY_FIELDS) == {"tags", "created_at", "updated_at"}
