"""Prometheus metrics (``GET /metrics``).

Label values are bounded: route kind and status class, never the worker, unless the operator
sets ``metrics_per_worker`` (then a ``worker`` label appears on the request counter: one series
per tenant, so only for fleets of modest size). Each ``Metrics`` owns its own registry, so
several dispatchers in one process (tests) do not collide. Counters owned by other components
(cache hits, registry reloads) are read when scraped, not updated on the hot path twice.

Metrics are per process: with ``serve --workers N`` a scrape sees the process that answered it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "StateReading"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True, slots=True)
class StateReading:
    """Figures other components keep, read at scrape time."""

    cache_hits: int
    cache_misses: int
    cache_size: int
    registry_reloads: int
    registry_version: int
    workers: int


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], StateReading]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
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
            "Worker snapshot reloads",
            value=state.registry_reloads,
        )
        yield GaugeMetricFamily(
            "dispatcher_registry_version",
            "Registry version of the snapshot",
            value=state.registry_version,
        )
        yield GaugeMetricFamily(
            "dispatcher_workers", "Workers in the snapshot", value=state.workers
        )


class Metrics:
    """The dispatcher's metrics; ``observe`` is called once per request."""

    def __init__(self, read_state: Callable[[], StateReading], *, per_worker: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._per_worker = per_worker
        labels = ["route", "status_class", *(["worker"] if per_worker else [])]
        self._requests = Counter(
            "dispatcher_requests",
            "Requests answered, by route kind and status class",
            labels,
            registry=self.registry,
        )
        self._duration = Histogram(
            "dispatcher_request_duration_seconds",
            "Time from request start to the end of the response, by route kind",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._upstream_errors = Counter(
            "dispatcher_upstream_errors",
            "Upstream failures by kind (connect, timeout, body)",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dispatcher_requests_in_flight", "Requests being handled", registry=self.registry
        )
        self.registry.register(_StateCollector(read_state))
        # Children resolved once: ``labels()`` on every request would cost a dict build.
        self._request_children: dict[tuple[str, ...], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float, worker: str = "") -> None:
        status_class = _STATUS_CLASSES[status // 100 - 1] if 100 <= status < 600 else "5xx"
        key = (route, status_class, worker) if self._per_worker else (route, status_class)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(*key)
        counter.inc()
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self._duration.labels(route)
        histogram.observe(seconds)

    def upstream_error(self, kind: str) -> None:
        self._upstream_errors.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
