"""Instructions per request, counted by callgrind: the figure this machine's noise cannot move.

Each Python server of the benchmark runs once more under ``valgrind --tool=callgrind`` with
counting off. Every case is warmed up, then counting is switched on (``callgrind_control -i
on``) and each case gets ``requests`` requests over keep-alive connections, followed by a dump
(``callgrind_control -d``: the instructions since the previous dump). One dispatcher process
answers the subdomain, path and custom-domain cases in turn, as in the timed rounds.

What is counted: the server's own user-space instructions (Python, uvloop, httptools, libc).
What is not: the kernel (system calls, loopback networking), the same for every proxy, and
time (callgrind runs the server about 50 times slower, so work done per second rather than
per request, such as writing the batched access log, is spread over fewer requests and
counted a little high). Repeat runs agree within about 0.5%, whatever else the machine does,
where CPU time per request moves by 20%: this is the figure for telling whether a change to
the dispatcher made it cheaper. Go and nginx are not counted (their work is not comparable
instruction for instruction); the timed rounds compare with them.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.harness import Bench
from bench.procs import free_port
from bench.report import InstructionCount
from bench.targets import TARGETS, Case

__all__ = ["GROUPS", "count_instructions", "get", "read_dump"]

#: Server key -> the targets counted in that process, in order (see ``bench.targets``).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dispatcher", ("dispatcher", "dispatcher-path", "dispatcher-custom")),
    ("dispatcher-quiet", ("dispatcher-quiet",)),
    ("dispatcher-limited", ("dispatcher-limited",)),
    ("proxy-floor", ("proxy-floor",)),
    ("floor-h1", ("floor-h1",)),
)


def read_dump(path: Path) -> int:
    """The instruction total of one callgrind dump file."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"{path} has no summary line")


async def get(port: int, requests: int, connections: int, host: bytes, path: bytes) -> int:
    """``requests`` GETs over ``connections`` keep-alive connections; each must answer 200."""
    head = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n\r\n" % (path, host)
    each = max(requests // connections, 1)

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(each):
                writer.write(head)
                answer = await reader.readuntil(b"\r\n\r\n")
                if not answer.startswith(b"HTTP/1.1 200 "):
                    raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
                length = 0
                for line in answer.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(connections)))
    return each * connections


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def count_instructions(
    bench: Bench, requests: int, connections: int, targets: Sequence[str] | None = None
) -> list[InstructionCount]:
    """Count every group's targets (those in ``targets``, if given) under callgrind."""
    counts: list[InstructionCount] = []
    for server, keys in GROUPS:
        keys = tuple(key for key in keys if targets is None or key in targets)
        if keys:
            counts += _count_group(bench, server, keys, requests, connections)
    return counts


def _count_group(
    bench: Bench, server: str, keys: tuple[str, ...], requests: int, connections: int
) -> list[InstructionCount]:
    port = free_port()
    launch = bench.python_server(server, port)
    out = bench.work / f"callgrind-{server}.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    process = bench.servers.start(
        f"{server}-callgrind",
        [*valgrind, *launch.argv],
        cpu=bench.options.server_cpu,
        env=launch.env,
        cwd=bench.work,
        discard_stdout=launch.discard_stdout,
    )
    try:
        process.wait_ready(port, launch.ready_path, timeout=300)
        for key in keys:  # warm-up, not counted
            asyncio.run(get(port, requests // 4, connections, _host(key), _path(key)))
        _control("-i", "on", str(process.pid))
        sent = []
        for key in keys:
            sent.append(asyncio.run(get(port, requests, connections, _host(key), _path(key))))
            _control("-d", str(process.pid))
        _control("-i", "off", str(process.pid))
    finally:
        process.stop()
    return [
        InstructionCount(key, done, read_dump(Path(f"{out}.{number}")))
        for number, (key, done) in enumerate(zip(keys, sent, strict=True), start=1)
    ]


def _host(key: str) -> bytes:
    return (TARGETS[key].host or "127.0.0.1").encode("ascii")


def _path(key: str) -> bytes:
    return Case(TARGETS[key], "small").path.encode("ascii")
