"""The metrics exposition: counters and the duration histogram as Prometheus reads them."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.metrics import LoopLagProbe, Metrics, StateReading


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _metrics(*, per_worker: bool = False) -> Metrics:
    return Metrics(lambda: StateReading(7, 3, 2, 1, 9, 4), per_worker=per_worker)


def test_requests_are_counted_by_route_and_status_class() -> None:
    metrics = _metrics()
    for status in (200, 204, 404, 502, 999):
        metrics.observe("subdomain", status, 0.01)
    metrics.observe("path", 200, 0.01)
    samples = _samples(metrics)
    total = "dispatcher_requests_total"
    assert samples[(total, (("route", "subdomain"), ("status_class", "2xx")))] == 2
    assert samples[(total, (("route", "subdomain"), ("status_class", "4xx")))] == 1
    # An impossible status counts as a server error rather than vanishing.
    assert samples[(total, (("route", "subdomain"), ("status_class", "5xx")))] == 2
    assert samples[(total, (("route", "path"), ("status_class", "2xx")))] == 1


def test_worker_label_only_when_asked_for() -> None:
    plain, labelled = _metrics(), _metrics(per_worker=True)
    for metrics in (plain, labelled):
        metrics.observe("subdomain", 200, 0.01, "alpha")
    assert all("worker" not in dict(labels) for _, labels in _samples(plain))
    key = (
        "dispatcher_requests_total",
        (("route", "subdomain"), ("status_class", "2xx"), ("worker", "alpha")),
    )
    assert _samples(labelled)[key] == 1


def test_duration_histogram_buckets_are_cumulative_and_inclusive() -> None:
    metrics = _metrics()
    for seconds in (0.0005, 0.001, 0.003, 0.2, 31.0):
        metrics.observe("query", 200, seconds)
    samples = _samples(metrics)

    def bucket(le: str) -> float:
        return samples[
            ("dispatcher_request_duration_seconds_bucket", (("le", le), ("route", "query")))
        ]

    assert bucket("0.001") == 2  # 0.001 itself falls in le="0.001"
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 3
    assert bucket("0.25") == 4
    assert bucket("30.0") == 4
    assert bucket("+Inf") == 5
    count = samples[("dispatcher_request_duration_seconds_count", (("route", "query"),))]
    total = samples[("dispatcher_request_duration_seconds_sum", (("route", "query"),))]
    assert count == 5
    assert abs(total - 31.2045) < 1e-9


def test_in_flight_upstream_errors_and_state_are_exposed() -> None:
    metrics = _metrics()
    metrics.in_flight += 3
    metrics.in_flight -= 1
    metrics.upstream_error("timeout")
    metrics.upstream_error("timeout")
    metrics.upstream_error("connect")
    samples = _samples(metrics)
    assert samples[("dispatcher_requests_in_flight", ())] == 2
    assert samples[("dispatcher_upstream_errors_total", (("kind", "timeout"),))] == 2
    assert samples[("dispatcher_upstream_errors_total", (("kind", "connect"),))] == 1
    assert samples[("dispatcher_domain_cache_hits_total", ())] == 7
    assert samples[("dispatcher_workers", ())] == 4


@pytest.mark.anyio
async def test_the_loop_lag_probe_sees_a_stall_in_its_bucket() -> None:
    probe = LoopLagProbe()
    registry = CollectorRegistry()
    registry.register(probe)
    probe.start()
    try:
        await asyncio.sleep(0.02)  # the probe has asked for its first wake-ups
        # The stall being measured: code holds the loop for 120 ms of its own CPU time (a
        # sleeping thread, or one the machine preempts, is time given away, not a stall).
        held_until = time.thread_time() + 0.12
        while time.thread_time() < held_until:
            pass
        deadline = time.monotonic() + 5
        while registry.get_sample_value(
            "dispatcher_event_loop_lag_seconds_bucket", {"le": "0.05"}
        ) == registry.get_sample_value("dispatcher_event_loop_lag_seconds_count"):
            assert time.monotonic() < deadline, "the stall was never recorded"
            await asyncio.sleep(0.01)
    finally:
        await probe.aclose()

    over = registry.get_sample_value("dispatcher_event_loop_lag_seconds_bucket", {"le": "+Inf"})
    under = registry.get_sample_value("dispatcher_event_loop_lag_seconds_bucket", {"le": "0.05"})
    assert over is not None and under is not None and over - under >= 1
