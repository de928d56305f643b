"""``python -m bench``: start everything, run interleaved wrk rounds, report.

The run, in order:

1. make sure nginx, Caddy and wrk are installed (``apt-get install`` when run as root; a
   temporary ``policy-rc.d`` keeps Debian from starting the packaged nginx service);
2. in a temporary directory: the upstream nginx and the upload sink on the load core; a SQLite
   registry with worker ``bench`` (-> the upstream), worker ``sink`` (-> the sink) and the
   custom domain ``bench.example.org`` (active), written with the ``dispatcher`` CLI;
3. the servers under test, each pinned to the server core with ``taskset``: the dispatcher
   (``dispatcher serve``, one process), the dispatcher with aiohttp's client and with its
   access log off (``bench.serve``), nginx, Caddy with and without its access log, and uvicorn
   with a hello world (the floor);
4. one checked request per case, a warm-up round per case, then ``--rounds`` rounds of
   ``wrk -t1 -c32 -d<duration>s --latency`` over all cases, shuffled, wrk on the load core;
   server CPU from /proc before and after each round;
5. optionally a py-spy profile of the dispatcher under load (subdomain route, 100 B);
6. a fresh dispatcher streams a 512 MiB upload and download while its RSS is watched;
7. the Python servers run once more under callgrind, which counts their instructions per
   request (``bench.instructions``: the figure the machine's noise does not move);
8. the report is printed, and written to ``bench/RESULTS.md`` on a full run (or ``--write``).

Every process started is stopped on the way out, whatever happens (``bench.procs.Servers``),
and the temporary directory is removed (``--keep`` keeps it, with the servers' logs).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.harness import MIB, Bench, Options
from bench.instructions import count_instructions
from bench.procs import ServerFailed, Servers
from bench.report import CaseStats, RunInfo, machine_facts, render
from bench.streaming import StreamError
from bench.targets import DEFAULT_TARGETS, SIZES, TARGETS, Case
from bench.wrk import WrkError

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_PACKAGES = {
    "nginx": "nginx",
    "caddy": "caddy",
    "wrk": "wrk",
    "taskset": "util-linux",
    "valgrind": "valgrind",
    "redis-server": "redis-server",
}


# -- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the dispatcher against nginx, Caddy and the uvicorn floor.",
    )
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk round (2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case (5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per case (1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from: {', '.join(TARGETS)}",
    )
    parser.add_argument("--sizes", default="small,large", help="small (100 B), large (1 MiB)")
    parser.add_argument("--stream-mib", type=int, default=512, help="streaming size (512; 0: skip)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core of the servers (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="core of wrk and upstream (1)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the dispatcher's log level (info: the shipped default, one access line each)",
    )
    parser.add_argument(
        "--profile-seconds", type=int, default=8, help="py-spy profile length (8; 0: skip)"
    )
    parser.add_argument(
        "--count-requests",
        type=int,
        default=1000,
        help="requests per case counted under callgrind (1000; 0: skip)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 1 s, no warm-up, 64 MiB streams, no profile, no RESULTS.md",
    )
    parser.add_argument("--write", action="store_true", help="write RESULTS.md even if partial")
    parser.add_argument("--no-write", action="store_true", help="never write RESULTS.md")
    parser.add_argument("--output", type=Path, default=RESULTS, help="report file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def _options(argv: Sequence[str]) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.targets.split(",") if key.strip()]
    sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    for key in keys:
        if key not in TARGETS:
            parser.error(f"unknown target {key!r}; choose from {', '.join(TARGETS)}")
    for size in sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    cases = tuple(
        Case(TARGETS[key], size) for size in sizes for key in keys if size in TARGETS[key].sizes
    )
    if args.duration < 1 or args.rounds < 1 or not cases:
        parser.error("--duration and --rounds must be at least 1, and some case must remain")
    if args.quick:
        args.duration, args.rounds, args.warmup = 1, 1, 0
        args.stream_mib = min(args.stream_mib, 64)
        args.profile_seconds = 0
        args.count_requests = 0
    full = not args.quick and keys == list(DEFAULT_TARGETS) and set(sizes) == set(SIZES)
    server_cpu, load_cpu = args.server_cpu, args.load_cpu
    available = os.sched_getaffinity(0)
    if {server_cpu, load_cpu} - available or server_cpu == load_cpu:
        print(f"bench: cores {server_cpu} and {load_cpu} are not both available; not pinning")
        server_cpu = load_cpu = None
    executable = os.path.relpath(sys.executable)
    if executable.startswith(".."):
        executable = sys.executable
    return Options(
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        connections=args.connections,
        cases=cases,
        stream_bytes=args.stream_mib * MIB,
        server_cpu=server_cpu,
        load_cpu=load_cpu,
        log_level=args.log_level,
        profile_seconds=args.profile_seconds,
        count_requests=args.count_requests,
        write=not args.no_write and (args.write or full),
        output=args.output,
        keep=args.keep,
        command=shlex.join([executable, "-m", "bench", *argv]),
    )


# -- tools ------------------------------------------------------------------------------------


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def ensure_tools() -> None:
    """Install nginx, Caddy and wrk from Debian if missing (as root, with apt-get)."""
    missing = sorted({package for tool, package in _PACKAGES.items() if not _have(tool)})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"bench: please install {' '.join(missing)} (apt-get install -y ...)")
    print(f"bench: installing {' '.join(missing)} with apt-get", flush=True)
    # Debian's nginx package starts a system nginx on port 80 after installing it; a
    # policy-rc.d that says "no" (exit 101) keeps every service down, as in a container.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
    finally:
        if created:
            policy.unlink()
    os.environ["PATH"] += os.pathsep + "/usr/sbin"


# -- the run ----------------------------------------------------------------------------------


def _method(options: Options) -> str:
    cores = (
        f"servers under test pinned to core {options.server_cpu} with `taskset`, wrk, the "
        f"upstream nginx and the upload sink on core {options.load_cpu}"
        if options.server_cpu is not None
        else "no CPU pinning (fewer than 2 cores available)"
    )
    return (
        f"Method: `wrk -t1 -c{options.connections} -d{options.duration}s --latency`, "
        f"{options.rounds} rounds per case, each round over all cases in a shuffled order "
        "(seeded; so no case always follows the same one), after a "
        f"{options.warmup} s warm-up round each; {cores}; everything on 127.0.0.1. "
        "Upstream: nginx, 1 worker, `/small` = 100 bytes (`return 200`), `/large` = 1 MiB "
        "static file, keep-alive. The dispatcher: `dispatcher serve --no-migrate` (1 process, "
        "uvicorn with uvloop and the dispatcher's own HTTP/1.1 protocol), SQLite registry, log "
        "level "
        f"`{options.log_level}` (one JSON access line per request on stdout, sent to /dev/null; "
        "`PYTHONUNBUFFERED=1` as in the Dockerfile). "
        "nginx: 1 worker, `proxy_pass` with `keepalive 64`, default proxy buffers kept in "
        "memory (`proxy_max_temp_file_size 0`), no access log. Caddy: "
        "`reverse_proxy` with its defaults, and a JSON access line per request on stdout "
        "(`log { output stdout; format json }`, sent to /dev/null), as the dispatcher; "
        "`caddy-quiet` without it, to compare with `dispatcher-quiet` (log level `warning`). "
        "Go sizes GOMAXPROCS from the affinity mask: 1. Floor: uvicorn (its own httptools "
        "protocol), same options, answering itself; `floor-h1`: the same on the dispatcher's "
        "protocol; `proxy-floor`: a bare ASGI proxy on the dispatcher's protocol and pool "
        "(`bench/floor.py`). req/s is the median of the rounds (min-max beside it); p50/p99 "
        "and CPU per request are medians of the per-round figures; CPU per request = (utime "
        "+ stime of the server's processes over the round, from /proc) / requests."
    )


def _run(options: Options) -> int:
    ensure_tools()
    if options.load_cpu is not None:
        os.sched_setaffinity(0, {options.load_cpu})
    cases = options.cases
    per_round = options.duration + 0.4
    estimate = len(cases) * (options.rounds * per_round + options.warmup + 0.5) + 20
    estimate += options.profile_seconds + 3 if options.profile_seconds else 0
    estimate += 120 if options.count_requests else 0
    print(f"bench: {len(cases)} cases x {options.rounds} rounds, about {estimate / 60:.1f} min")
    load_before = _loadavg()
    started = time.monotonic()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    (work / "logs").mkdir()
    try:
        with Servers(work / "logs") as servers:
            bench = Bench(options, work, servers)
            stats = _rounds(bench, options)
            found = bench.record_profile() if options.profile_seconds else None
            streams = bench.streams() if options.stream_bytes else []
            counts = (
                count_instructions(
                    bench,
                    options.count_requests,
                    options.connections,
                    [case.target.key for case in options.cases],
                )
                if options.count_requests
                else []
            )
    finally:
        if options.keep:
            print(f"bench: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    info = RunInfo(
        command=options.command,
        date=date,
        duration_s=time.monotonic() - started,
        method=_method(options),
        machine=machine_facts(),
        load_before=load_before,
        load_after=_loadavg(),
    )
    what = (
        f"py-spy {options.profile_seconds} s at 250 Hz on the dispatcher process while wrk "
        f"loads the subdomain route (100 B, {options.connections} connections)"
    )
    text = render(info, stats, streams, found, what, counts)
    print("\n" + text)
    if options.write:
        options.output.write_text(text)
        print(f"bench: wrote {options.output}")
    return 0


def _rounds(bench: Bench, options: Options) -> list[CaseStats]:
    """Start the servers, check and warm up every case, then run the interleaved rounds."""
    cases = options.cases
    bench.start_upstreams()
    for key in dict.fromkeys(case.target.server for case in cases):
        bench.start_server(key)
    for case in cases:
        bench.check(case)
        if options.warmup:
            bench.round(case, options.warmup)
    stats = {case: CaseStats(case) for case in cases}
    for number in range(options.rounds):
        # A different order each round (seeded: the same on every run). Rotating one order kept
        # each case behind the same predecessor; a case that always ran right after a 1 MiB
        # one in another process measured ~10% slower than its twin in the same process.
        for case in random.Random(number).sample(cases, len(cases)):
            sample = bench.round(case, options.duration)
            stats[case].samples.append(sample)
            print(
                f"[{number + 1}/{options.rounds}] {case.name:<26} "
                f"{sample.rate:>9,.0f} req/s  p99 {sample.p99 * 1000:6.2f} ms  "
                f"{sample.cpu_us:6.1f} us/req  errors {sample.errors}",
                flush=True,
            )
    for item in stats.values():
        item.peak_rss_kib = bench.running[item.case.target.server][0].peak_rss_kib()
    return list(stats.values())


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = _options(list(sys.argv[1:] if argv is None else argv))
    # Ctrl-C even when started in the background by a script (which ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        return _run(options)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every server was stopped", file=sys.stderr)
        return 130
    except (ServerFailed, WrkError, StreamError, subprocess.CalledProcessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
