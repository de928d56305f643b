"""The load benchmark: the dispatcher side by side with nginx, Caddy and the Python floor.

``python -m bench`` (``make bench``) starts every server on loopback, pinned to one core,
drives them with ``wrk`` in short interleaved rounds, measures requests/s, latency, server CPU
per request and peak RSS, streams 512 MiB each way through the dispatcher to watch its memory,
and prints the table (written to ``bench/RESULTS.md`` on a full run). See ``bench/runner.py``.
"""

from __future__ import annotations

__all__: list[str] = []
