"""The load generator: one ``wrk --latency`` run, and its output parsed.

``wrk -t1 -c<N> -d<S>s --latency [-H 'Host: ...'] URL``, pinned to the load core. wrk's own
``Host`` is replaced when one is given (its Lua layer only adds ``Host`` when the user did not).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass

from bench.procs import pinned

__all__ = ["WrkError", "WrkResult", "parse_wrk", "run_wrk"]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(RuntimeError):
    """wrk failed or printed something we cannot read."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    rate: float  # requests/s as wrk reports it
    p50: float  # seconds
    p99: float
    errors: int  # non-2xx/3xx answers plus connect, write and timeout socket errors
    read_errors: int  # connections closed by the server mid-exchange (should be 0)


def parse_wrk(output: str) -> WrkResult:
    """Read requests, rate, p50/p99 and errors from ``wrk --latency`` output."""
    total, rate = _TOTAL.search(output), _RATE.search(output)
    percentiles = {m[1]: float(m[2]) * _UNITS[m[3]] for m in _PERCENTILE.finditer(output)}
    if total is None or rate is None or "50" not in percentiles or "99" not in percentiles:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    errors = 0
    read_errors = 0
    if non_2xx := _NON_2XX.search(output):
        errors += int(non_2xx[1])
    if sockets := _SOCKET.search(output):
        connect, read, write, timeout = (int(value) for value in sockets.groups())
        errors += connect + write + timeout
        read_errors = read
    return WrkResult(
        requests=int(total[1]),
        seconds=float(total[2]) * _UNITS[total[3]],
        rate=float(rate[1]),
        p50=percentiles["50"],
        p99=percentiles["99"],
        errors=errors,
        read_errors=read_errors,
    )


def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    host: str | None = None,
    cpu: int | None = None,
) -> WrkResult:
    """Run wrk against ``url`` for ``duration`` seconds; stop it if we are interrupted."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    if host is not None:
        argv += ["-H", f"Host: {host}"]
    argv.append(url)
    process = subprocess.Popen(
        pinned(argv, cpu),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=duration + 30)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise WrkError(f"wrk exited with status {process.returncode}:\n{output}")
    return parse_wrk(output)
