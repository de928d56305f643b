"""The registry's metrics (issue 12, "metrics that behave"): what ``/metrics`` says of the
follower, and that its counters never go down, not even across a resync."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.state import DispatcherState
from tests.workers_registry.registry_kit import add_domain, add_worker, follower, route, sql
from workers_registry.store import RegistryStore

pytestmark = pytest.mark.anyio

_COUNTERS = (
    "dispatcher_registry_changes_applied_total",
    "dispatcher_registry_resyncs_total",
    "dispatcher_registry_reloads_total",
    "dispatcher_domain_cache_misses_total",
)


def _scrape(gateway: DispatcherState) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(gateway.metrics.render().decode())
        for sample in family.samples
        if sample.name.startswith(("dispatcher_registry_", "dispatcher_domain_cache_"))
    }


async def test_the_follower_metrics_say_what_it_applied_and_never_go_down(
    store: RegistryStore, gateway: DispatcherState
) -> None:
    await sql(store, add_worker("shop"), add_domain("shop.example.org", "shop"))
    await sql(store, add_worker("blog"))
    await follower(gateway).refresh()
    assert await route(gateway, "shop.example.org") == "shop"  # a miss, then cached
    before = _scrape(gateway)

    assert before["dispatcher_registry_changes_applied_total"] == 3
    assert before["dispatcher_registry_applied_sequence"] == await store.version() == 3
    assert before["dispatcher_registry_apply_lag"] == 0
    assert before["dispatcher_registry_resyncs_total"] == 0
    assert before["dispatcher_domain_cache_misses_total"] == 1

    # A resync (the log pruned past what the process saw) replaces the table and re-reads
    # the cached hosts: the counters carry on from where they were.
    await sql(store, add_worker("docs"), "DELETE FROM registry_changes")
    await follower(gateway).refresh()
    after = _scrape(gateway)

    assert after["dispatcher_registry_resyncs_total"] == 1
    assert (
        after["dispatcher_registry_reloads_total"]
        == before["dispatcher_registry_reloads_total"] + 1
    )
    assert after["dispatcher_registry_applied_sequence"] == await store.version() == 4
    assert all(after[name] >= before[name] for name in _COUNTERS), (before, after)
