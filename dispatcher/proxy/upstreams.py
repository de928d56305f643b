"""Upstream selection: which of a worker's upstream URLs gets the next request.

URLs are parsed once into ``Target`` objects (origin, base path, the ``Host`` to send) and
cached; workers with several upstreams are served round-robin.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from dispatcher.proxy.transport import Origin
from workers_registry.models import Worker

__all__ = ["Target", "UpstreamSelector", "parse_target"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream base URL, pre-parsed for the hot path."""

    url: str
    origin: Origin
    base_path: bytes  # without a trailing slash; empty for the root
    authority: bytes  # the upstream Host header: host, plus the port when not the default


def parse_target(url: str) -> Target:
    """Parse a (validated) upstream base URL."""
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return Target(
        url=url,
        origin=Origin(scheme, host, port),
        base_path=parts.path.rstrip("/").encode("ascii"),
        authority=authority.encode("ascii"),
    )


class UpstreamSelector:
    """Round-robin over each worker's upstreams, with parsed targets cached by URL."""

    def __init__(self) -> None:
        self._targets: dict[str, Target] = {}
        self._next: dict[str, int] = {}

    def pick(self, worker: Worker) -> Target:
        urls = worker.upstreams
        if len(urls) == 1:
            url = urls[0]
        else:
            turn = self._next.get(worker.name, 0)
            self._next[worker.name] = turn + 1
            url = urls[turn % len(urls)]
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) > 100_000:  # workers come and go; keep the cache bounded
                self._targets.clear()
            target = self._targets[url] = parse_target(url)
        return target
