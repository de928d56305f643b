"""Review of issue 12: payloads an announcement parser must refuse without raising, and what a
forged one may do to a running follower.

A ``NOTIFY`` on the registry channel can come from any role that can connect to the database
(``pg_notify`` needs no privilege), so every payload is hostile: the parser returns ``None``
or a sound announcement, never raises, and never hands the follower a number the registry
(a ``bigint`` sequence) cannot reach.
"""

from __future__ import annotations

import json

import pytest

from dispatcher.state import DispatcherState
from tests.workers_registry.registry_kit import add_worker, follower, sql
from workers_registry.announcements import read_announcement
from workers_registry.store import RegistryStore

pytestmark = pytest.mark.anyio

_BIGINT = 2**63 - 1  # registry_version.version and registry_changes.seq


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("[" * 3000 + "]" * 3000, id="nested arrays"),
        pytest.param('{"a":' * 1500 + "1" + "}" * 1500, id="nested objects"),
        pytest.param(
            '{"seq": 5, "first": 5, "changes": ' + "[" * 3000 + "]" * 3000 + "}",
            id="nested changes after a sound sequence",
        ),
        pytest.param("[" * 7999, id="unterminated nesting"),
    ],
)
def test_a_deeply_nested_payload_is_refused_without_raising(payload: str) -> None:
    assert read_announcement(payload) is None


@pytest.mark.parametrize(
    "seq",
    [_BIGINT + 1, 2**64, 10**400, int("9" * 4000)],
    ids=["2**63", "2**64", "1e400", "4000 digits"],
)
def test_a_sequence_beyond_any_registry_is_refused(seq: int) -> None:
    assert read_announcement(json.dumps({"seq": seq})) is None
    first = {"seq": _BIGINT, "first": seq, "changes": [["workers", "x", "update"]]}
    assert read_announcement(json.dumps(first)) in (
        None,
        read_announcement(f'{{"seq": {_BIGINT}}}'),
    )


def test_the_largest_sequence_a_registry_can_reach_is_read() -> None:
    announcement = read_announcement(json.dumps({"seq": _BIGINT}))
    assert announcement is not None and announcement.seq == _BIGINT


async def test_a_forged_huge_sequence_never_breaks_the_metrics_while_the_registry_is_away(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    """Until the follower asks the registry (which it cannot during an outage), what it heard
    is all it knows: the metrics must still render."""
    if gateway.listener is not None:
        await gateway.listener.aclose()
    await sql(store, add_worker("shop"))
    await follower(gateway).refresh()

    follower(gateway).heard(read_announcement('{"seq": ' + "9" * 400 + "}"))  # refused
    follower(gateway).heard(read_announcement(json.dumps({"seq": _BIGINT})))  # the largest

    assert b"dispatcher_registry_apply_lag" in gateway.metrics.render()
    # Taken in (a refused payload alone left the head where it was, so that a bound on it
    # held before too), and never beyond what a registry can reach.
    assert follower(gateway).head == _BIGINT
