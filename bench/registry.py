"""``python -m bench.registry`` (``make bench-registry``): the registry at platform scale.

Builds a registry of ``--workers`` workers and ``--domains`` active custom domains in a
throwaway Postgres cluster (COPY, triggers off for the build), starts TWO ``dispatcher serve``
processes on it, and runs a closed-loop client (wrk, one per process) over ``--hot`` hosts
(half custom domains, half subdomains) against an upstream that answers at once
(``bench.sink``). After a warm-up that fills the caches, phases of ``--duration`` seconds
alternate, ``--rounds`` times: quiet, churn, quiet, churn, ..., quiet.

- quiet: no registry changes;
- churn: ``--rate`` changes per second made with plain SQL, one transaction each, mixed:
  a new custom domain, a hot domain's status flipped between ``active`` and ``verified``
  (both route, so no answer changes), a hot worker's upstream moved to another base path
  on the same upstream, and the deletion of a domain inserted earlier.

Each churn phase is compared with the mean of the quiet phases on either side of it, so the
machine's drift cancels, and a ratio is the median over the rounds (each round's is shown).

Reported: each process's startup time (spawn to serving) and RSS; per process and phase,
requests/s and p99 (wrk); the change-to-visible latency of every change in each process
(commit to the first ``/metrics`` scrape, every 20 ms, whose
``dispatcher_registry_applied_sequence`` has reached the change; so +-20 ms); the longest
event-loop stall (``loop_lag_probe`` histogram: the upper bound of the highest bucket that
grew in the phase); and the database queries the dispatchers made, counted by
``pg_stat_statements`` (reads of workers, custom_domains and the change log), against the
number of keys changed. Targets are ratios of one run (``TARGETS``); the exit status is 1 if
one is missed. Results go to stdout as Markdown and to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.procs import Server, Servers, free_port
from bench.wrk import WrkResult, parse_wrk
from tests.postgres import PostgresServer, find_postgres_bindir

__all__ = ["TARGETS", "main"]

#: (name, what is compared, the bound): checked on the run's own figures.
TARGETS = {
    "dispatcher CPU per request under churn vs quiet": "<= 1.05",
    "req/s under churn vs quiet": ">= 0.95",
    "p99 under churn vs quiet": "<= 1.5",
    "longest event-loop stall under churn": "<= 50 ms",
    "change visible in every process, p99": "<= 1000 ms",
    "key lookups caused by churn per changed key and process": "<= 1.0",
}

# The churn's own read (not counted as a dispatcher's), and the triggers' statements (those run at
# commit are counted by pg_stat_statements as top-level ones).
_CHURN_SEQ = "SELECT version AS churn_seq FROM registry_version"
_NOT_DISPATCHER = (
    "churn_seq",
    "pg_notify",
    "json_build_object",
    "SELECT version FROM registry_version",
)
_LAG_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf")
_BASE = "example.com"

# The reads a dispatcher makes of the registry, by kind (pg_stat_statements query texts).
_READS = {
    "FROM custom_domains": "key lookups",
    "FROM workers": "key lookups",
    "FROM registry_changes": "change-log reads",
    "FROM registry_version": "version polls",
}


@dataclass(slots=True)
class Phase:
    name: str
    rate: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    per_process: list[dict[str, float]] = field(default_factory=list)
    cpu_us_per_request: float = 0.0
    stall_ms: float = 0.0
    stalls_over_50ms: int = 0
    queries: dict[str, int] = field(default_factory=dict)
    query_texts: dict[str, int] = field(default_factory=dict)
    changes: int = 0
    keys: int = 0
    visible_ms: list[dict[str, float]] = field(default_factory=list)


# -- building the registry ---------------------------------------------------------------------


async def _build(dsn: str, workers: int, domains: int, upstream: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        # Build without triggers (no change log for rows that exist before any dispatcher
        # starts) and without the foreign-key checks of each row.
        await connection.execute("SET session_replication_role = replica")
        now = datetime.now(UTC)
        await connection.copy_records_to_table(
            "workers",
            columns=["name", "upstreams", "tags", "created_at", "updated_at"],
            records=(
                (f"w{i}", json.dumps([f"{upstream}/w{i}"]), "{}", now, now) for i in range(workers)
            ),
        )
        await connection.copy_records_to_table(
            "custom_domains",
            columns=["domain", "worker", "status", "created_at", "updated_at"],
            records=(
                (f"d{i}.example.org", f"w{i % workers}", "active", now, now) for i in range(domains)
            ),
        )
        await connection.execute("RESET session_replication_role")
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


# -- the churn -----------------------------------------------------------------------------


class Churn:
    """Makes ``rate`` changes per second with plain SQL; remembers each change's commit."""

    def __init__(self, dsn: str, rate: float, hot_domains: list[str], hot_workers: list[str]):
        self._dsn = dsn
        self._rate = rate
        self._hot_domains = hot_domains
        self._hot_workers = hot_workers
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: (sequence reached, commit time, key changed), over every phase the churn ran in.
        self.commits: list[tuple[int, float, str]] = []
        self.kinds: dict[str, int] = {}
        self._inserted: list[str] = []
        self._serial = 0

    def start(self) -> None:
        """Start changing the registry (again: a churn runs in several phases)."""
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    async def _run(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        rng = random.Random(12)
        try:
            started = time.monotonic()
            count = 0
            while not self._stop.is_set():
                due = started + count / self._rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                kind, statement, key = self._next(rng)
                async with connection.transaction():
                    await connection.execute(statement)
                    seq = await connection.fetchval(_CHURN_SEQ)
                self.commits.append((int(seq), time.monotonic(), key))
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
                count += 1
        finally:
            await connection.close()

    def _next(self, rng: random.Random) -> tuple[str, str, str]:
        self._serial += 1
        choice = self._serial % 4
        if choice == 0:
            domain = f"new{self._serial}.example.org"
            self._inserted.append(domain)
            worker = rng.choice(self._hot_workers)
            return (
                "domain insert",
                f"INSERT INTO custom_domains (domain, worker, status)"
                f" VALUES ('{domain}', '{worker}', 'active')",
                domain,
            )
        if choice == 1:
            domain = rng.choice(self._hot_domains)
            status = rng.choice(("active", "verified"))
            return (
                "status flip",
                f"UPDATE custom_domains SET status = '{status}' WHERE domain = '{domain}'",
                domain,
            )
        if choice == 2:  # the same upstream, another base path
            worker = rng.choice(self._hot_workers)
            return (
                "worker upstream edit",
                "UPDATE workers SET upstreams = jsonb_build_array(regexp_replace("
                f"upstreams->>0, '/w[0-9]+(/v[0-9]+)?$', '/{worker}/v{self._serial}'))"
                f" WHERE name = '{worker}'",
                worker,
            )
        domain = self._inserted.pop(0) if self._inserted else f"absent{self._serial}.example.org"
        return ("deletion", f"DELETE FROM custom_domains WHERE domain = '{domain}'", domain)


# -- watching the processes ----------------------------------------------------------------


class Scraper:
    """Scrapes one process's ``/metrics`` every ``interval`` s: the applied sequence over time."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        self._port = port
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.applied: list[tuple[float, int]] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=5)
        while not self._stop.is_set():
            try:
                text = _get(connection, "/metrics")
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=5)
                continue
            seq = _sample(text, "dispatcher_registry_applied_sequence")
            if seq is not None:
                self.applied.append((time.monotonic(), int(seq)))
            self._stop.wait(self._interval)
        connection.close()

    def visible_after(self, seq: int, committed: float) -> float | None:
        for seen, applied in self.applied:
            if seen >= committed and applied >= seq:
                return seen - committed
        return None


def _get(connection: http.client.HTTPConnection, path: str) -> str:
    connection.request("GET", path, headers={"Host": "localhost"})
    response = connection.getresponse()
    return response.read().decode()


def _sample(text: str, name: str, labels: str = "") -> float | None:
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


def _lag_buckets(port: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        text = _get(connection, "/metrics")
    finally:
        connection.close()
    return [
        _sample(text, "dispatcher_event_loop_lag_seconds_bucket", f'le="{bound}"') or 0.0
        for bound in _LAG_BUCKETS
    ]


def _longest_stall_ms(before: list[float], after: list[float]) -> float:
    """The upper bound of the highest lag bucket that grew (``inf`` past the last bound)."""
    grown = [b - a for a, b in zip(before, after, strict=True)]
    per_bucket = [grown[0]] + [grown[i] - grown[i - 1] for i in range(1, len(grown))]
    highest = max((i for i, count in enumerate(per_bucket) if count > 0), default=0)
    return float(_LAG_BUCKETS[highest]) * 1000 if highest < len(_LAG_BUCKETS) - 1 else 1e9


async def _statements(dsn: str, reset: bool) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT query, calls FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        if reset:
            await connection.execute("SELECT pg_stat_statements_reset()")
    finally:
        await connection.close()
    found: dict[str, int] = {}
    for row in rows:
        query = " ".join(row["query"].split())
        kind = next((kind for table, kind in _READS.items() if table in query), None)
        ours = not any(marker in query for marker in _NOT_DISPATCHER)
        if query.upper().startswith("SELECT") and kind is not None and ours:
            key = f"{kind}: {query[:100]}"
            found[key] = found.get(key, 0) + int(row["calls"])
    return found


# -- load ----------------------------------------------------------------------------------


def _wrk_script(directory: Path, hosts: list[str]) -> Path:
    script = directory / "hosts.lua"
    names = ", ".join(f'"{host}"' for host in hosts)
    script.write_text(
        f"local hosts = {{{names}}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #hosts + 1\n"
        '  return wrk.format("GET", "/", {["Host"] = hosts[i]})\n'
        "end\n"
    )
    return script


def _wrk(port: int, script: Path, duration: float, connections: int) -> Callable[[], WrkResult]:
    import subprocess

    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
        "-s", str(script), f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result() -> WrkResult:
        output, _ = process.communicate(timeout=duration + 60)
        return parse_wrk(output)

    return result


def _warm_up(ports: list[int], script: Path, args: argparse.Namespace, hosts: int) -> int:
    """Run the load until every hot host is in every process's cache (a subdomain host as a
    negative custom-domain entry); how many rounds that took."""
    sizes: list[int] = []
    for rounds in range(1, 11):
        for result in [_wrk(port, script, args.warmup, args.connections) for port in ports]:
            result()
        sizes = []
        for port in ports:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                health = json.loads(_get(connection, "/health/detailed"))
            finally:
                connection.close()
            sizes.append(health["checks"]["domain_cache"]["size"])
        if min(sizes) >= hosts:
            return rounds
    raise SystemExit(f"the caches did not fill: {sizes} of {hosts} hosts")


def _phase(
    name: str,
    ports: list[int],
    script: Path,
    args: argparse.Namespace,
    dsn: str,
    churn: Churn | None,
    dispatchers: list[Server],
) -> Phase:
    phase = Phase(name)
    asyncio.run(_statements(dsn, reset=True))
    cpu_before = sum(server.cpu_seconds() for server in dispatchers)
    before = [_lag_buckets(port) for port in ports]
    scrapers = [Scraper(port) for port in ports]
    for scraper in scrapers:
        scraper.start()
    runs = [_wrk(port, script, args.duration, args.connections) for port in ports]
    begin = len(churn.commits) if churn is not None else 0
    if churn is not None:
        churn.start()
    results = [run() for run in runs]
    if churn is not None:
        churn.stop()
    time.sleep(1.5)  # the last changes become visible (measured, not assumed: see below)
    for scraper in scrapers:
        scraper.stop()
    after = [_lag_buckets(port) for port in ports]
    texts = asyncio.run(_statements(dsn, reset=False))
    phase.query_texts = texts
    for query, calls in texts.items():
        kind = query.split(":", 1)[0]
        phase.queries[kind] = phase.queries.get(kind, 0) + calls
    # The dispatchers' CPU per request (over the phase, the scrapes and churn included): the
    # figure the other processes on a shared machine move least.
    cpu = sum(server.cpu_seconds() for server in dispatchers) - cpu_before
    phase.cpu_us_per_request = cpu / max(1, sum(result.requests for result in results)) * 1e6
    phase.rate = sum(result.rate for result in results)
    phase.p99_ms = max(result.p99 for result in results) * 1000
    phase.errors = sum(result.errors + result.read_errors for result in results)
    phase.per_process = [
        {"req_s": result.rate, "p50_ms": result.p50 * 1000, "p99_ms": result.p99 * 1000}
        for result in results
    ]
    phase.stall_ms = max(_longest_stall_ms(b, a) for b, a in zip(before, after, strict=True))
    over = _LAG_BUCKETS.index("0.05")
    phase.stalls_over_50ms = int(
        sum((a[-1] - a[over]) - (b[-1] - b[over]) for b, a in zip(before, after, strict=True))
    )
    if churn is not None:
        commits = churn.commits[begin:]
        phase.changes = len(commits)
        phase.keys = len({key for _, _, key in commits})
        for scraper in scrapers:
            latencies = [scraper.visible_after(seq, committed) for seq, committed, _ in commits]
            seen = sorted(latency for latency in latencies if latency is not None)
            phase.visible_ms.append(
                {
                    "p50": statistics.median(seen) * 1000 if seen else float("inf"),
                    "p99": seen[min(len(seen) - 1, int(len(seen) * 0.99))] * 1000
                    if seen
                    else float("inf"),
                    "max": seen[-1] * 1000 if seen else float("inf"),
                    "never": float(len(latencies) - len(seen)),
                }
            )
    return phase


# -- the run -------------------------------------------------------------------------------


def _start_dispatcher(
    servers: Servers, name: str, url: str, port: int, env: dict[str, str]
) -> tuple[Server, float, float]:
    started = time.monotonic()
    server = servers.start(
        name,
        [sys.executable, "-m", "dispatcher", "serve", "--no-migrate", "--port", str(port)],
        cpu=None,
        env={**env, "DISPATCHER_DATABASE_URL": url},
        discard_stdout=True,
    )
    server.wait_ready(port, "/health", timeout=120)
    return server, time.monotonic() - started, server.rss_kib() / 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    bindir = find_postgres_bindir()
    if bindir is None or shutil.which("wrk") is None:
        raise SystemExit("needs Postgres (initdb, pg_ctl) and wrk")
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    postgres = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="bench-registry-pg-")))
    postgres.init()
    with (postgres.datadir / "postgresql.conf").open("a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\nshared_buffers = 256MB\n")
    postgres.start()
    results: dict[str, Any] = {"args": vars(args)}
    try:
        name = postgres.create_database()
        url, dsn = postgres.url(name), postgres.dsn(name)
        sink_port = free_port()
        with Servers(workdir) as servers:
            servers.start(
                "sink", [sys.executable, "-m", "bench.sink", "--port", str(sink_port)], cpu=None
            )
            from workers_registry.migrate import upgrade

            asyncio.run(upgrade(url))
            building = time.monotonic()
            asyncio.run(_build(dsn, args.workers, args.domains, f"http://127.0.0.1:{sink_port}"))
            results["build_seconds"] = round(time.monotonic() - building, 1)
            env = {
                **os.environ,
                "DISPATCHER_BASE_DOMAINS": _BASE,
                "DISPATCHER_LOG_LEVEL": "warning",
                "DISPATCHER_LOOP_LAG_PROBE": "true",
                # Longer than the run: a hot host leaves the cache only because it changed
                # (subdomain hosts are negative custom-domain entries).
                "DISPATCHER_DOMAIN_CACHE_TTL": "3600",
                "DISPATCHER_DOMAIN_NEGATIVE_TTL": "3600",
            }
            ports = [free_port(), free_port()]
            starts = [
                _start_dispatcher(servers, f"dispatcher-{i}", url, port, env)
                for i, port in enumerate(ports)
            ]
            results["startup"] = [
                {"seconds": round(seconds, 2), "rss_mib": round(rss, 1)}
                for _, seconds, rss in starts
            ]
            rng = random.Random(7)
            picked = rng.sample(range(args.domains), args.hot // 2)
            hot_domains = [f"d{i}.example.org" for i in picked]
            picked = rng.sample(range(args.workers), args.hot - args.hot // 2)
            hot_workers = [f"w{i}" for i in picked]
            hosts = hot_domains + [f"{worker}.{_BASE}" for worker in hot_workers]
            rng.shuffle(hosts)
            script = _wrk_script(workdir, hosts)
            results["warmup_rounds"] = _warm_up(ports, script, args, len(hosts))
            dispatchers = [server for server, _, _ in starts]
            churn = Churn(dsn, args.rate, hot_domains, hot_workers)
            phases = [_phase("quiet 1", ports, script, args, dsn, None, dispatchers)]
            for round_ in range(1, args.rounds + 1):
                phases.append(
                    _phase(f"churn {round_}", ports, script, args, dsn, churn, dispatchers)
                )
                phases.append(
                    _phase(f"quiet {round_ + 1}", ports, script, args, dsn, None, dispatchers)
                )
            results["churn_kinds"] = churn.kinds
            results["rss_after_mib"] = [
                round(server.rss_kib() / 1024, 1) for server, _, _ in starts
            ]
            results["phases"] = [asdict(phase) for phase in phases]
    finally:
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(postgres.basedir, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - began)
    results["targets"] = _judge(results)
    return results


def _rounds(results: dict[str, Any]) -> list[dict[str, float]]:
    """Each churn phase against the mean of the quiet phases on either side of it."""
    phases = results["phases"]
    processes = len(results["startup"])
    seconds = float(results["args"]["duration"])
    rounds = []
    for i in range(1, len(phases) - 1, 2):
        before, busy, after = phases[i - 1], phases[i], phases[i + 1]
        quiet = {
            key: statistics.mean((before[key], after[key]))
            for key in ("rate", "p99_ms", "cpu_us_per_request")
        }
        lookups = [phase["queries"].get("key lookups", 0) for phase in (before, busy, after)]
        caused = lookups[1] - statistics.mean((lookups[0], lookups[2]))
        # The dispatchers' CPU per second beyond the quiet phases', per change and process.
        extra = (
            busy["cpu_us_per_request"] * busy["rate"] - quiet["cpu_us_per_request"] * quiet["rate"]
        )
        changes_per_second = max(1.0, busy["changes"] / seconds)
        rounds.append(
            {
                "rate": busy["rate"] / quiet["rate"],
                "p99": busy["p99_ms"] / quiet["p99_ms"],
                "cpu": busy["cpu_us_per_request"] / quiet["cpu_us_per_request"],
                "lookups": caused / max(1, busy["keys"] * processes),
                "cpu_us_per_change": extra / changes_per_second / processes,
            }
        )
    return rounds


def _judge(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rounds = _rounds(results)
    busy = [phase for phase in results["phases"] if phase["name"].startswith("churn")]

    def median(key: str) -> float:
        return statistics.median(round_[key] for round_ in rounds)

    rate, p99, cpu, lookups = median("rate"), median("p99"), median("cpu"), median("lookups")
    stall = max(phase["stall_ms"] for phase in busy)
    visible = max(process["p99"] for phase in busy for process in phase["visible_ms"])
    figures = {
        "dispatcher CPU per request under churn vs quiet": (cpu, cpu <= 1.05),
        "req/s under churn vs quiet": (rate, rate >= 0.95),
        "p99 under churn vs quiet": (p99, p99 <= 1.5),
        "longest event-loop stall under churn": (stall, stall <= 50),
        "change visible in every process, p99": (visible, visible <= 1000),
        "key lookups caused by churn per changed key and process": (lookups, lookups <= 1.0),
    }
    return {
        name: {"value": round(value, 3), "target": TARGETS[name], "met": met}
        for name, (value, met) in figures.items()
    }


def _visible(phase: dict[str, Any]) -> str:
    cells = []
    for process in phase["visible_ms"]:
        cell = f"{process['p50']:.0f}/{process['p99']:.0f}/{process['max']:.0f}"
        if process["never"]:
            cell += f" ({process['never']:.0f} never)"
        cells.append(cell)
    return "; ".join(cells) or "-"


def _markdown(results: dict[str, Any]) -> str:
    arguments = results["args"]
    lines = [
        f"Registry: {arguments['workers']:,} workers, {arguments['domains']:,} custom domains"
        f" (built in {results['build_seconds']} s); 2 dispatcher processes;"
        f" {arguments['hot']:,} hot hosts; {arguments['duration']:g} s per phase;"
        f" {arguments['rate']:g} changes/s under churn ({results['churn_kinds']});"
        f" warm-up rounds until every hot host was cached: {results['warmup_rounds']}."
        f" Run took {results['seconds']} s.",
        "",
        "| process | startup s | RSS at start MiB | RSS at end MiB |",
        "|---|---|---|---|",
    ]
    for i, start in enumerate(results["startup"]):
        lines.append(
            f"| {i} | {start['seconds']} | {start['rss_mib']} | {results['rss_after_mib'][i]} |"
        )
    lines += [
        "",
        "| phase | req/s (both) | p99 ms (worst) | CPU us/req | errors | longest stall ms"
        " | stalls > 50 ms | dispatcher reads | changes | keys"
        " | visible p50/p99/max ms, per process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in results["phases"]:
        reads = ", ".join(f"{kind}: {calls}" for kind, calls in sorted(phase["queries"].items()))
        lines.append(
            f"| {phase['name']} | {phase['rate']:,.0f} | {phase['p99_ms']:.1f}"
            f" | {phase['cpu_us_per_request']:.0f} | {phase['errors']}"
            f" | {phase['stall_ms']:.0f} | {phase['stalls_over_50ms']}"
            f" | {reads or '-'}"
            f" | {phase['changes']} | {phase['keys']} | {_visible(phase)} |"
        )
    lines += [
        "",
        "| churn round vs the quiet phases around it | req/s | p99 | CPU/request"
        " | key lookups per changed key and process | dispatcher CPU us per change and process |",
        "|---|---|---|---|---|---|",
    ]
    for i, round_ in enumerate(_rounds(results), 1):
        lines.append(
            f"| {i} | {round_['rate']:.3f} | {round_['p99']:.3f} | {round_['cpu']:.3f}"
            f" | {round_['lookups']:.2f} | {round_['cpu_us_per_change']:,.0f} |"
        )
    lines += ["", "| target (median of the rounds) | value | bound | met |", "|---|---|---|---|"]
    for name, target in results["targets"].items():
        met = "yes" if target["met"] else "NO"
        lines.append(f"| {name} | {target['value']} | {target['target']} | {met} |")
    reads: dict[str, int] = {}
    for phase in results["phases"]:
        if phase["name"].startswith("churn"):
            for query, calls in phase["query_texts"].items():
                reads[query] = reads.get(query, 0) + calls
    lines += ["", "Dispatcher reads in the churn phases, by query:", ""]
    for query, calls in sorted(reads.items(), key=lambda item: -item[1]):
        lines.append(f"- {calls} x `{query}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.registry", description=__doc__)
    parser.add_argument("--workers", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=1_000_000)
    parser.add_argument("--hot", type=int, default=2_500)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="churn phases (each between quiet ones)"
    )
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--connections", type=int, default=16, help="per process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args)
    print(_markdown(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(target["met"] for target in results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
