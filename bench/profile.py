"""A sampling profile of a server under load (py-spy), summarised function by function.

``py-spy record --format raw --nolineno`` writes one collapsed stack per line with its sample
count (``frame;frame;...;leaf N``). From it: each function's *self* share (it was the leaf:
the CPU was in its own code) and *inclusive* share (it was anywhere on the stack), and the self
share per component (our modules, uvicorn, uvloop, asyncio, structlog, ...), which answers
"where does the time go". Idle samples (the event loop waiting in epoll) are excluded by
py-spy, so shares are of busy time. py-spy is optional: ``pip install py-spy``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.procs import pinned

__all__ = ["Profile", "find_py_spy", "record", "summarise"]

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*)\)$")

# Component of a leaf frame, by the first matching fragment of its file name.
_COMPONENTS = (
    # uvloop's C event loop (epoll, socket reads and writes, callbacks) runs under this frame.
    ("Runner.run (asyncio/runners.py)", "event loop: uvloop C code and syscalls"),
    ("dispatcher/h1server", "dispatcher: HTTP server protocol"),
    ("dispatcher/proxy/_h1", "dispatcher: H1Pool (upstream client)"),
    ("dispatcher/proxy/headers", "dispatcher: header policy"),
    ("dispatcher/proxy/http", "dispatcher: forwarder"),
    ("dispatcher/proxy/upstreams", "dispatcher: upstream selection"),
    ("dispatcher/app", "dispatcher: gateway"),
    ("dispatcher/routing", "dispatcher: routing"),
    ("dispatcher/hosts", "dispatcher: hosts"),
    ("dispatcher/domains", "dispatcher: domain cache"),
    ("dispatcher/", "dispatcher: other"),
    ("workers_registry/", "registry"),
    ("structlog", "structlog (access log)"),
    ("uvicorn/protocols/http", "uvicorn: HTTP protocol"),
    ("uvicorn/", "uvicorn: other"),
    ("uvloop", "uvloop"),
    ("httptools", "httptools"),
    ("asyncio", "asyncio"),
    ("json", "json"),
    ("logging", "logging"),
)


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    background: int  # samples of other threads, left out (see ``summarise``)
    self_top: list[tuple[str, float]]  # (function, share of samples)
    inclusive_top: list[tuple[str, float]]
    components: list[tuple[str, float]]


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(py_spy: str, pid: int, seconds: int, out_dir: Path, cpu: int | None) -> Path:
    """Sample ``pid`` for ``seconds`` (py-spy pinned to ``cpu``); return the raw stacks file."""
    raw = out_dir / "profile.txt"
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds)]
    argv += ["--rate", "250", "--format", "raw", "--nolineno", "--output", str(raw)]
    subprocess.run(
        pinned(argv, cpu),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=seconds + 60,
    )
    return raw


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    name, file = match["name"], match["file"]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} ({file})"


def _component(frame: str) -> str:
    for fragment, label in _COMPONENTS:
        if fragment in frame:
            return label
    return "other (interpreter, C)"


def summarise(raw: Path, top: int = 15) -> Profile:
    """Self and inclusive shares per function, and self share per component.

    Stacks of threads other than the event loop's (they start in ``Thread._bootstrap``) are
    left out and only counted: the registry's aiosqlite worker thread blocks on its queue,
    which py-spy cannot tell from running, and would otherwise show as half the profile.
    """
    background = 0
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if "(" in frame]
        if not frames:
            continue
        if frames[0].startswith("Thread._bootstrap "):
            background += count
            continue
        total += count
        own[frames[-1]] += count
        components[_component(frames[-1])] += count
        for frame in set(frames):
            anywhere[frame] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(limit)] if total else []

    # Frames on (nearly) every stack are the scaffolding (runpy, uvicorn.run, the loop).
    for frame, count in list(anywhere.items()):
        if count >= 0.99 * total:
            del anywhere[frame]
    return Profile(
        samples=total,
        background=background,
        self_top=shares(own, top),
        inclusive_top=shares(anywhere, top + 5),
        components=shares(components, len(components)),
    )
