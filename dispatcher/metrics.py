"""Prometheus metrics (``GET /metrics``).

Label values are bounded: route kind and status class, never the worker, unless the operator
sets ``metrics_per_worker`` (then a ``worker`` label appears on the request counter: one series
per tenant, so only for fleets of modest size). Each ``Metrics`` owns its own registry, so
several dispatchers in one process (tests) do not collide. Counters owned by other components
(cache hits, registry reloads) are read when scraped, not updated on the hot path twice.

Metrics are per process: with ``serve --workers N`` a scrape sees the process that answered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LoopLagProbe", "Metrics", "StateReading"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class _RouteFigures:
    """What one route kind's requests added up to: by duration bucket, and by status class
    (unless the request counter is kept per worker)."""

    __slots__ = ("buckets", "by_class", "seconds")

    def __init__(self, bounds: int) -> None:
        self.by_class = [0] * len(_STATUS_CLASSES)
        self.buckets = [0] * (bounds + 1)  # one count per bucket (not cumulative), then +Inf
        self.seconds = 0.0


@dataclass(frozen=True, slots=True)
class StateReading:
    """Figures other components keep, read at scrape time."""

    cache_hits: int
    cache_misses: int
    cache_size: int
    registry_reloads: int
    registry_version: int
    workers: int
    registry_changes_applied: int = 0
    registry_resyncs: int = 0
    registry_lag: int = 0
    registry_lag_seconds: float = 0.0


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], StateReading]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        yield CounterMetricFamily(
            "dispatcher_domain_cache_hits", "Custom-domain cache hits", value=state.cache_hits
        )
        yield CounterMetricFamily(
            "dispatcher_domain_cache_misses",
            "Custom-domain cache misses",
            value=state.cache_misses,
        )
        yield GaugeMetricFamily(
            "dispatcher_domain_cache_entries", "Hosts in the cache", value=state.cache_size
        )
        yield CounterMetricFamily(
            "dispatcher_registry_reloads",
            "Full loads of every worker (start and resyncs)",
            value=state.registry_reloads,
        )
        yield CounterMetricFamily(
            "dispatcher_registry_changes_applied",
            "Change-log entries applied one key at a time",
            value=state.registry_changes_applied,
        )
        yield CounterMetricFamily(
            "dispatcher_registry_resyncs",
            "Full loads because the change log could not bridge the gap",
            value=state.registry_resyncs,
        )
        yield GaugeMetricFamily(
            "dispatcher_registry_version",
            "Sequence number of the last registry change applied",
            value=state.registry_version,
        )
        yield GaugeMetricFamily(
            "dispatcher_registry_applied_sequence",
            "Sequence number of the last registry change applied",
            value=state.registry_version,
        )
        yield GaugeMetricFamily(
            "dispatcher_registry_apply_lag",
            "Registry changes known to exist and not applied yet",
            value=state.registry_lag,
        )
        yield GaugeMetricFamily(
            "dispatcher_registry_apply_lag_seconds",
            "How long the oldest known unapplied registry change has waited",
            value=state.registry_lag_seconds,
        )
        yield GaugeMetricFamily(
            "dispatcher_workers", "Workers in the snapshot", value=state.workers
        )


class LoopLagProbe(Collector):
    """How long something held the event loop: how late a timer ran because of this process.

    A task asks to wake every ``interval`` seconds and records how late it woke, as the
    histogram ``dispatcher_event_loop_lag_seconds`` (a stall shows up in the bucket of its
    length). Lateness counts only as far as the loop's thread was running meanwhile (its CPU
    time over the wait): time the machine gave the CPU to other processes is not a stall of
    ours, and on a busy host it would drown the stalls that are. Off by default
    (setting ``loop_lag_probe``): it wakes the process 200 times a second. The registry
    benchmark turns it on.
    """

    BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self, interval: float = 0.005) -> None:
        self._interval = interval
        self._buckets = [0] * (len(self.BUCKETS) + 1)
        self._total = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        clock, cpu = time.perf_counter, time.thread_time
        while True:
            started, ran = clock(), cpu()
            await asyncio.sleep(self._interval)
            late = clock() - started - self._interval
            busy = cpu() - ran  # how much of the wait the loop's thread was running
            lag = max(0.0, min(late, busy))
            self._buckets[bisect_left(self.BUCKETS, lag)] += 1
            self._total += lag

    def collect(self) -> Iterator[Metric]:
        bounds = [*(str(bound) for bound in self.BUCKETS), "+Inf"]
        family = HistogramMetricFamily(
            "dispatcher_event_loop_lag_seconds",
            "How late the event loop ran a timer asked for every 5 ms",
        )
        family.add_metric(
            [], list(zip(bounds, accumulate(self._buckets), strict=True)), self._total
        )
        yield family


class Metrics(Collector):
    """The dispatcher's metrics; ``observe`` is called once per request.

    The hot path only adds to plain integers (no lock, no metric object per request: the
    process is single-threaded); they are turned into Prometheus families when scraped.
    """

    BUCKETS: tuple[float, ...] = (
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    )  # fmt: skip

    def __init__(self, read_state: Callable[[], StateReading], *, per_worker: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._per_worker = per_worker
        self.in_flight = 0  # requests being handled; the gateway counts them
        self._routes: dict[str, _RouteFigures] = {}
        self._by_worker: dict[tuple[str, str, str], int] = {}  # with metrics_per_worker
        self._upstream_errors: dict[str, int] = {}
        self.registry.register(_StateCollector(read_state))
        self.registry.register(self)

    def observe(self, route: str, status: int, seconds: float, worker: str = "") -> None:
        figures = self._routes.get(route)
        if figures is None:
            figures = self._routes[route] = _RouteFigures(len(self.BUCKETS))
        figures.buckets[bisect_left(self.BUCKETS, seconds)] += 1
        figures.seconds += seconds
        index = status // 100 - 1 if 100 <= status < 600 else 4
        if self._per_worker:  # the request counter has a worker label: counted per worker
            key = (route, _STATUS_CLASSES[index], worker)
            self._by_worker[key] = self._by_worker.get(key, 0) + 1
        else:
            figures.by_class[index] += 1

    def upstream_error(self, kind: str) -> None:
        self._upstream_errors[kind] = self._upstream_errors.get(kind, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """The request figures as Prometheus families (called by the registry when scraped)."""
        labels = ["route", "status_class", *(["worker"] if self._per_worker else [])]
        requests = CounterMetricFamily(
            "dispatcher_requests",
            "Requests answered, by route kind and status class",
            labels=labels,
        )
        if self._per_worker:
            for key, value in sorted(self._by_worker.items()):
                requests.add_metric(list(key), value)
        else:
            for route, figures in sorted(self._routes.items()):
                for status_class, value in zip(_STATUS_CLASSES, figures.by_class, strict=True):
                    if value:
                        requests.add_metric([route, status_class], value)
        yield requests
        durations = HistogramMetricFamily(
            "dispatcher_request_duration_seconds",
            "Time from request start to the end of the response, by route kind",
            labels=["route"],
        )
        bounds = [*(str(float(bound)) for bound in self.BUCKETS), "+Inf"]
        for route, figures in sorted(self._routes.items()):
            cumulative = list(accumulate(figures.buckets))
            durations.add_metric(
                [route], list(zip(bounds, cumulative, strict=True)), figures.seconds
            )
        yield durations
        errors = CounterMetricFamily(
            "dispatcher_upstream_errors",
            "Upstream failures by kind (connect, timeout, body)",
            labels=["kind"],
        )
        for kind, value in sorted(self._upstream_errors.items()):
            errors.add_metric([kind], value)
        yield errors
        yield GaugeMetricFamily(
            "dispatcher_requests_in_flight", "Requests being handled", value=self.in_flight
        )
