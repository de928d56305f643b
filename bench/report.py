"""The benchmark's report: per-case statistics, ratios, the issue's targets, Markdown out.

One Markdown document is both printed and (on a full run) written to ``bench/RESULTS.md``:
the command, date and machine, the table (median req/s and its spread over the rounds,
median p50/p99, server CPU per request, how busy the server core was, peak RSS), the ratios
between targets, the targets of the performance issue with met/missed, the streaming
memory figures and, when recorded, the profile.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench.profile import Profile
from bench.streaming import StreamResult
from bench.targets import SIZES, TARGETS, Case

__all__ = ["CaseStats", "InstructionCount", "RunInfo", "Sample", "machine_facts", "render"]

_MIB = 1024.0
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk round against one case."""

    rate: float  # requests/s
    p50: float  # seconds
    p99: float
    cpu_us: float  # server CPU microseconds per request
    util: float  # server CPU time / wall time (1.0 = one core saturated)
    noise_server: float  # CPU time of other processes on the server core / wall time
    noise_load: float  # same on the load core (besides wrk and the upstream)
    errors: int
    read_errors: int


@dataclass(frozen=True, slots=True)
class InstructionCount:
    """What callgrind counted for one target (``bench.instructions``)."""

    target: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


@dataclass(slots=True)
class CaseStats:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    peak_rss_kib: int = 0

    def _median(self, value: Callable[[Sample], float]) -> float:
        return statistics.median(value(s) for s in self.samples)

    @property
    def rate(self) -> float:
        return self._median(lambda s: s.rate)

    @property
    def rate_spread(self) -> tuple[float, float]:
        rates = [s.rate for s in self.samples]
        return min(rates), max(rates)

    @property
    def best_rate(self) -> float:
        return max(s.rate for s in self.samples)

    @property
    def best_cpu_us(self) -> float:
        """The cheapest round: other processes only ever add to CPU per request."""
        return min(s.cpu_us for s in self.samples)

    @property
    def p50(self) -> float:
        return self._median(lambda s: s.p50)

    @property
    def p99(self) -> float:
        return self._median(lambda s: s.p99)

    @property
    def cpu_us(self) -> float:
        return self._median(lambda s: s.cpu_us)

    @property
    def util(self) -> float:
        return self._median(lambda s: s.util)

    @property
    def noise(self) -> tuple[float, float]:
        """Median foreign CPU share during the rounds, on the server core and the load core."""
        return self._median(lambda s: s.noise_server), self._median(lambda s: s.noise_load)

    @property
    def errors(self) -> int:
        return sum(s.errors + s.read_errors for s in self.samples)


@dataclass(slots=True)
class RunInfo:
    command: str
    date: str
    duration_s: float
    method: str  # one paragraph: how the numbers were taken
    machine: dict[str, str]
    load_before: str
    load_after: str


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_facts() -> dict[str, str]:
    """nproc, CPU model, kernel, Python and the versions of the servers and libraries."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import version

    libraries = ", ".join(
        f"{name} {version(name)}" for name in ("uvicorn", "uvloop", "httptools", "aiohttp")
    )
    return {
        "nproc": str(os.cpu_count()),
        "CPU": model,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]).removeprefix("nginx version: "),
        "Caddy": _version(["caddy", "version"]),
        "wrk": _version(["wrk", "--version"]).split(" Copyright")[0],
        "libraries": libraries,
        "tree": _tree(),
    }


def _tree() -> str:
    """The git commit measured (the dispatcher's code changes often)."""
    head = _version(["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"])
    try:
        status = subprocess.run(
            [
                "git",
                "-C",
                str(_REPO),
                "status",
                "--porcelain",
                "--",
                "dispatcher",
                "workers_registry",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return head
    return f"commit {head}" + (
        " with uncommitted changes in the packages" if status.strip() else ""
    )


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _results_table(stats: list[CaseStats]) -> str:
    rows = []
    for item in stats:
        low, high = item.rate_spread
        rows.append(
            [
                TARGETS[item.case.target.key].label,
                SIZES[item.case.size],
                f"{item.rate:,.0f}",
                f"{low:,.0f}-{high:,.0f}",
                _ms(item.p50),
                _ms(item.p99),
                f"{item.cpu_us:.1f} ({item.best_cpu_us:.1f})",
                f"{item.util * 100:.0f}%",
                f"{item.peak_rss_kib / _MIB:.1f}",
                f"{item.noise[0] * 100:.0f}% / {item.noise[1] * 100:.0f}%",
                str(item.errors),
            ]
        )
    header = ["target", "body", "req/s (median)", "req/s min-max", "p50 ms", "p99 ms"]
    header += ["CPU us/req median (best)", "server core busy", "peak RSS MiB", "noise", "errors"]
    return _table(header, rows)


_RATIOS = (
    ("dispatcher / Caddy (both log each request)", "dispatcher", "caddy"),
    ("dispatcher / Caddy (access logs off)", "dispatcher-quiet", "caddy-quiet"),
    ("dispatcher / nginx", "dispatcher", "nginx"),
    ("dispatcher / floor", "dispatcher", "floor"),
    ("aiohttp client / H1Pool", "dispatcher-aiohttp", "dispatcher"),
    ("custom domain / subdomain", "dispatcher-custom", "dispatcher"),
    ("path route / subdomain", "dispatcher-path", "dispatcher"),
    ("access log off / on", "dispatcher-quiet", "dispatcher"),
)


def _find(stats: list[CaseStats], key: str, size: str) -> CaseStats | None:
    for item in stats:
        if item.case.target.key == key and item.case.size == size:
            return item
    return None


def ratio(stats: list[CaseStats], top: str, bottom: str, size: str) -> tuple[float, float] | None:
    """(req/s ratio, CPU-per-request ratio) of two targets at one size, if both ran."""
    a, b = _find(stats, top, size), _find(stats, bottom, size)
    if a is None or b is None or not b.rate or not b.cpu_us:
        return None
    return a.rate / b.rate, a.cpu_us / b.cpu_us


def paired_ratio(top: CaseStats, bottom: CaseStats) -> float:
    """Median over rounds of the req/s ratio within each round.

    The two cases of a round ran a few seconds apart, so a machine that is slower for a while
    (other tenants) slows both: the ratio within a round drifts less than the ratio of medians.
    """
    return statistics.median(
        a.rate / b.rate for a, b in zip(top.samples, bottom.samples, strict=False) if b.rate
    )


def _ratios_table(stats: list[CaseStats]) -> str:
    rows = []
    for label, top, bottom in _RATIOS:
        row = [label]
        for size in SIZES:
            a, b = _find(stats, top, size), _find(stats, bottom, size)
            if a is None or b is None:
                row += ["-", "-", "-", "-"]
                continue
            row.append(f"{a.rate / b.rate:.2f}")
            row.append(f"{paired_ratio(a, b):.2f}")
            row.append(f"{a.best_rate / b.best_rate:.2f}")
            row.append(f"{a.cpu_us / b.cpu_us:.2f}")
        if row[1:] != ["-"] * 8:
            rows.append(row)
    header = ["ratio"]
    for label in SIZES.values():
        header += [
            f"{label} req/s",
            f"{label} req/s paired by round",
            f"{label} best req/s",
            f"{label} CPU/req",
        ]
    return _table(header, rows)


def _verdict(*checks: bool) -> str:
    if all(checks):
        return "met"
    if not any(checks):
        return "**missed**"
    return "unclear (noise: the two figures disagree)"


def _targets_table(
    stats: list[CaseStats],
    streams: list[StreamResult],
    counts: list[InstructionCount] | None = None,
) -> str:
    """The issue's targets. Ratios of req/s are shown beside the same ratio computed from CPU
    per request (what one core can serve), which other processes' noise barely moves."""
    rows: list[list[str]] = []

    def add_ratio(figure: str, goal: str, top: str, bottom: str, size: str) -> None:
        found = ratio(stats, top, bottom, size)
        if found is None:
            return
        by_rate, by_cpu = found[0], 1 / found[1]
        if goal.startswith(">="):
            floor = float(goal.split()[-1])
            verdict = _verdict(by_rate >= floor, by_cpu >= floor)
        else:  # within 5%
            verdict = _verdict(abs(by_rate - 1) <= 0.05, abs(by_cpu - 1) <= 0.05)
        rows.append([figure, goal, f"{by_rate:.2f}", f"{by_cpu:.2f}", verdict])

    def add(figure: str, goal: str, measured: str, met: bool) -> None:
        rows.append([figure, goal, measured, "", "met" if met else "**missed**"])

    add_ratio("100 B: dispatcher req/s / Caddy req/s", ">= 1.0", "dispatcher", "caddy", "small")
    add_ratio(
        "100 B, access logs off: dispatcher req/s / Caddy req/s",
        ">= 1.0",
        "dispatcher-quiet",
        "caddy-quiet",
        "small",
    )
    if sub := _find(stats, "dispatcher", "small"):
        cpu = sub.cpu_us
        add("100 B: server CPU per proxied request", "<= 80 us", f"{cpu:.1f} us", cpu <= 80)
    add_ratio("1 MiB: dispatcher req/s / Caddy req/s", ">= 0.8", "dispatcher", "caddy", "large")
    add_ratio(
        "100 B: custom-domain req/s / subdomain req/s",
        "within 5%",
        "dispatcher-custom",
        "dispatcher",
        "small",
    )
    per_request = {item.target: item.per_request for item in counts or ()}
    if "dispatcher-custom" in per_request and "dispatcher" in per_request:
        value = per_request["dispatcher-custom"] / per_request["dispatcher"]
        add(
            "100 B: custom-domain / subdomain, instructions per request (callgrind)",
            "within 5%",
            f"{value:.3f}",
            abs(value - 1) <= 0.05,
        )
    for size, label in SIZES.items():
        ours, caddy = _find(stats, "dispatcher", size), _find(stats, "caddy", size)
        if ours is not None and caddy is not None:
            measured = f"{_ms(ours.p99)} ms vs {_ms(caddy.p99)} ms"
            add(f"{label}: p99 at 32 connections", "below Caddy's", measured, ours.p99 < caddy.p99)
    for stream in streams:
        growth = stream.growth_kib / _MIB
        figure = f"RSS growth, {stream.size >> 20} MiB {stream.direction}"
        add(figure, "< 16 MiB", f"{growth:.1f} MiB", growth < 16)
    header = ["figure", "target", "measured", "same ratio from CPU/request", "verdict"]
    return _table(header, rows)


def _streams_table(streams: list[StreamResult]) -> str:
    rows = [
        [
            stream.direction,
            f"{stream.size >> 20} MiB",
            f"{stream.seconds:.2f}",
            f"{stream.mib_per_second:,.0f}",
            f"{stream.rss_before_kib / _MIB:.1f}",
            f"{stream.rss_peak_kib / _MIB:.1f}",
            f"{stream.growth_kib / _MIB:.1f}",
        ]
        for stream in streams
    ]
    header = ["direction", "size", "seconds", "MiB/s", "RSS before MiB", "peak MiB", "growth MiB"]
    return _table(header, rows)


def _profile_section(profile: Profile, what: str) -> str:
    def shares(items: list[tuple[str, float]]) -> list[list[str]]:
        return [[f"`{name}`", f"{share * 100:.1f}%"] for name, share in items]

    return "\n\n".join(
        [
            f"{what}; {profile.samples:,} samples of the event-loop thread while busy (idle "
            f"waits excluded; {profile.background:,} samples of idle background threads left "
            "out). Time in uvloop's C code (epoll, socket I/O, callbacks) shows as self time "
            "of `Runner.run`; the cyclic garbage collector's time shows under whatever "
            "Python function allocated when it ran.",
            "Self time by component (where the CPU actually was):",
            _table(["component", "self"], shares(profile.components)),
            "Top functions by self time:",
            _table(["function", "self"], shares(profile.self_top)),
            "Top functions by inclusive time (anywhere on the stack):",
            _table(["function", "inclusive"], shares(profile.inclusive_top)),
        ]
    )


def _instructions_section(counts: list[InstructionCount]) -> str:
    rows = [
        [TARGETS[item.target].label, f"{item.per_request:,.0f}", f"{item.requests:,}"]
        for item in counts
    ]
    by_key = {item.target: item.per_request for item in counts}
    lines = [_table(["target (100 B)", "instructions per request", "requests counted"], rows)]
    pairs = (
        ("custom domain / subdomain", "dispatcher-custom", "dispatcher"),
        ("path route / subdomain", "dispatcher-path", "dispatcher"),
        ("access log on / off", "dispatcher", "dispatcher-quiet"),
        ("dispatcher / bare proxy on its parts", "dispatcher", "proxy-floor"),
    )
    ratios = [
        [label, f"{by_key[top] / by_key[bottom]:.3f}"]
        for label, top, bottom in pairs
        if top in by_key and bottom in by_key
    ]
    if ratios:
        lines.append(_table(["instructions ratio", "value"], ratios))
    lines.append(
        "User-space instructions of the server process per request, counted by callgrind "
        "(`bench/instructions.py`): system calls and the kernel are not counted, and the "
        "figure does not move with the machine's load (repeat runs agree within about 0.5%)."
    )
    return "\n\n".join(lines)


def render(
    info: RunInfo,
    stats: list[CaseStats],
    streams: list[StreamResult],
    profile: Profile | None,
    profile_what: str = "",
    counts: list[InstructionCount] | None = None,
) -> str:
    """The whole report as Markdown."""
    machine = "\n".join(f"- {key}: {value}" for key, value in info.machine.items())
    parts = [
        "# Benchmark results",
        f"Command: `{info.command}` (what `make bench` runs)  \n"
        f"Date: {info.date}, took {info.duration_s:.0f} s  \n"
        f"Load average before / after: {info.load_before} / {info.load_after}",
        f"Machine:\n\n{machine}",
        info.method,
        "## Requests/s, latency, CPU and memory",
        _results_table(stats),
        "`server core busy`: server CPU time (utime + stime) / wall time; 100% = its core "
        "saturated. `noise`: median share of the round that other processes took on the "
        "server core / on the load core (besides wrk and the upstream): other sessions' tests "
        "share this machine, and noisy rounds are slower. Noise moves req/s more than CPU "
        "per request (10^6 / CPU us per request is what one core can serve), and only ever "
        "adds: the best round (most req/s, least CPU) is the closest to a quiet machine. "
        "`peak RSS`: VmHWM of the server process(es) after all rounds (one dispatcher process "
        "serves the subdomain, path and custom-domain targets). CPU per request leaves out the "
        "kernel's softirq time for loopback networking (for every server alike).",
        "## Ratios (median req/s, median of the per-round ratios, best round's req/s, median "
        "server CPU per request)",
        _ratios_table(stats),
        "## Targets of the performance issue",
        _targets_table(stats, streams, counts),
    ]
    if streams:
        parts += [
            "## Streaming through the dispatcher",
            _streams_table(streams),
            "RSS of a fresh dispatcher process (H1Pool) while one request streams the body: "
            "upload to a sink that discards it, download of a sparse file from the upstream "
            "nginx. Growth = peak (VmHWM reset before the transfer, plus 20 ms sampling) - RSS "
            "before.",
        ]
    if counts:
        parts += ["## Instructions per request", _instructions_section(counts)]
    if profile is not None:
        parts += [
            "## Profile of the dispatcher under load",
            _profile_section(profile, profile_what),
        ]
    return "\n\n".join(parts) + "\n"
