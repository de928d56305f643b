"""What the benchmark measures: the targets (a server plus the way a request reaches it).

Every target is reached on 127.0.0.1 at its server's port; dispatcher targets differ only in
how the request is routed to the same worker ``bench`` (upstream: the nginx upstream):

- ``dispatcher``: subdomain route, ``Host: bench.localhost`` (the default base domain);
- ``dispatcher-path``: path route, ``/dispatch/bench/<size>`` on a control host (the IP);
- ``dispatcher-custom``: custom-domain route, ``Host: bench.example.org`` registered ``active``
  (cached after the first request, so this measures the cache hit);
- ``dispatcher-aiohttp``: the subdomain route through a dispatcher using aiohttp's client;
- ``dispatcher-limited``: the subdomain route to worker ``limited`` (same upstream) with a
  worker-wide and a per-client rate limit counted in a local ``redis-server``, set so high
  that every request is admitted: what checking the limits costs a request;
- ``dispatcher-quiet``: the subdomain route with ``log_level=warning`` (no access line),
  to show what the one-line-per-request access log costs;
- ``caddy``: Caddy ``reverse_proxy`` writing one JSON access line per request (to stdout, thrown
  away), as the dispatcher does at its default log level: the like-for-like comparison;
- ``caddy-quiet``: Caddy without an access log (its default), to compare with
  ``dispatcher-quiet``;
- ``nginx``: the reference the others are measured against (no access log);
- ``floor``: uvicorn answering itself;
- ``floor-h1``: the same hello world on the dispatcher's own server protocol;
- ``proxy-floor``: a bare ASGI proxy on the dispatcher's server protocol and upstream pool, no
  routing, header policy, metrics or log (see ``bench.floor``): the architecture's floor.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TARGETS", "SIZES", "TARGETS", "Case", "Target"]

#: Body sizes, by the path the upstream (and the floor) serves them at.
SIZES = {"small": "100 B", "large": "1 MiB"}


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    label: str
    server: str  # key of the server process that answers it
    prefix: str = ""  # path before /small or /large
    host: str | None = None  # Host header (None: wrk's own, 127.0.0.1:<port>)
    sizes: tuple[str, ...] = ("small", "large")


@dataclass(frozen=True, slots=True)
class Case:
    """One target with one body size: what a wrk round runs against."""

    target: Target
    size: str

    @property
    def name(self) -> str:
        return f"{self.target.key}/{self.size}"

    @property
    def path(self) -> str:
        return f"{self.target.prefix}/{self.size}"

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}{self.path}"


TARGETS = {
    target.key: target
    for target in (
        Target("dispatcher", "dispatcher, subdomain", "dispatcher", host="bench.localhost"),
        Target("dispatcher-path", "dispatcher, path route", "dispatcher", prefix="/dispatch/bench"),
        Target(
            "dispatcher-custom", "dispatcher, custom domain", "dispatcher", host="bench.example.org"
        ),
        Target(
            "dispatcher-limited",
            "dispatcher, rate-limited (Redis)",
            "dispatcher-limited",
            host="limited.localhost",
            sizes=("small",),
        ),
        Target(
            "dispatcher-aiohttp",
            "dispatcher, aiohttp client",
            "dispatcher-aiohttp",
            host="bench.localhost",
        ),
        Target(
            "dispatcher-quiet",
            "dispatcher, access log off",
            "dispatcher-quiet",
            host="bench.localhost",
            sizes=("small",),
        ),
        Target("nginx", "nginx proxy_pass", "nginx"),
        Target("caddy", "Caddy reverse_proxy, access log", "caddy"),
        Target(
            "caddy-quiet", "Caddy reverse_proxy, access log off", "caddy-quiet", sizes=("small",)
        ),
        Target("floor", "uvicorn hello world (floor)", "floor"),
        Target("floor-h1", "hello world, dispatcher's server protocol", "floor-h1"),
        Target("proxy-floor", "bare proxy on the dispatcher's parts", "proxy-floor"),
    )
}

DEFAULT_TARGETS = tuple(TARGETS)
