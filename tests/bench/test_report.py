"""The benchmark's arithmetic: reading wrk, the ratios and the verdicts on the issue's targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import configs
from bench.report import CaseStats, Sample, paired_ratio, ratio
from bench.report import _targets_table as targets_table
from bench.targets import TARGETS, Case
from bench.wrk import WrkError, parse_wrk

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8080/small
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.50ms    1.10ms  20.00ms   90.00%
  Latency Distribution
     50%    2.23ms
     75%    2.80ms
     90%    3.50ms
     99%    6.34ms
  25116 requests in 2.00s, 5.20MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:  12558.00
Transfer/sec:      2.60MB
"""


def test_wrk_output_is_read_with_units_and_errors() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert (result.requests, result.seconds, result.rate) == (25116, 2.0, 12558.0)
    assert result.p50 == pytest.approx(0.00223)
    assert result.p99 == pytest.approx(0.00634)
    assert result.errors == 5 + 1 + 2  # non-2xx, write and timeout errors
    assert result.read_errors == 3


def test_unreadable_wrk_output_is_an_error() -> None:
    with pytest.raises(WrkError):
        parse_wrk("unable to connect to 127.0.0.1:8080 Connection refused")


def _stats(key: str, size: str, rates: list[float], cpu_us: list[float]) -> CaseStats:
    stats = CaseStats(Case(TARGETS[key], size))
    for rate, cpu in zip(rates, cpu_us, strict=True):
        stats.samples.append(Sample(rate, 0.002, 0.006, cpu, 0.98, 0.0, 0.0, 0, 0))
    return stats


def test_paired_ratio_follows_the_rounds_not_the_medians() -> None:
    # The machine slowed down in round 2 for both: the within-round ratio stays 1.0.
    ours = _stats("dispatcher", "small", [100, 50, 100], [10, 20, 10])
    theirs = _stats("caddy", "small", [100, 50, 100], [10, 20, 10])
    assert paired_ratio(ours, theirs) == 1.0
    shifted = _stats("caddy", "small", [50, 100, 100], [20, 10, 10])
    assert paired_ratio(ours, shifted) == 1.0  # per round 2.0, 0.5 and 1.0: the median
    assert ratio([ours, theirs], "dispatcher", "caddy", "small") == (1.0, 1.0)


def test_targets_are_judged_on_both_figures() -> None:
    rows = targets_table(
        [
            _stats("dispatcher", "small", [90, 95, 100], [70, 75, 80]),  # 95 req/s, 75 us
            _stats("caddy", "small", [100, 100, 100], [80, 80, 80]),
            _stats("dispatcher", "large", [10, 10, 10], [700, 700, 700]),
            _stats("caddy", "large", [10, 10, 10], [1000, 1000, 1000]),
        ],
        [],
    )
    lines = {line.split(" | ")[0].lstrip("| "): line for line in rows.splitlines()}
    # 0.95 by req/s but 80/75 = 1.07 by CPU: the two figures disagree.
    assert lines["100 B: dispatcher req/s / Caddy req/s"].endswith(
        "unclear (noise: the two figures disagree) |"
    )
    assert lines["100 B: server CPU per proxied request"].endswith("| met |")
    assert lines["1 MiB: dispatcher req/s / Caddy req/s"].endswith("| met |")


def test_access_logs_off_are_compared_with_each_other() -> None:
    rows = targets_table(
        [
            _stats("dispatcher", "small", [100, 100, 100], [80, 80, 80]),
            _stats("caddy", "small", [90, 90, 90], [90, 90, 90]),
            _stats("dispatcher-quiet", "small", [110, 110, 110], [70, 70, 70]),
            _stats("caddy-quiet", "small", [120, 120, 120], [65, 65, 65]),
        ],
        [],
    )
    lines = {line.split(" | ")[0].lstrip("| "): line for line in rows.splitlines()}
    assert lines["100 B: dispatcher req/s / Caddy req/s"].endswith("| met |")
    quiet = lines["100 B, access logs off: dispatcher req/s / Caddy req/s"]
    assert "| 0.92 | 0.93 |" in quiet  # 110/120 by req/s, 65/70 by CPU
    assert quiet.endswith("| **missed** |")


@pytest.mark.parametrize("access_log", [True, False])
def test_caddy_logs_each_request_only_when_asked(tmp_path: Path, access_log: bool) -> None:
    caddyfile = configs.caddyfile(tmp_path, 8080, 9090, access_log=access_log)
    text = caddyfile.read_text()
    assert "reverse_proxy 127.0.0.1:9090" in text
    assert "bind 127.0.0.1" in text
    assert ("output stdout" in text and "format json" in text) is access_log
