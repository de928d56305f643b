"""Processes of the benchmark: start them pinned, wait until they answer, read /proc, stop them.

Every server runs in its own session (``start_new_session``) so a Ctrl-C in the terminal
reaches only the benchmark, which then stops each server itself, by its process group id:
SIGTERM first, SIGKILL if it is still there after a grace period. ``Servers`` is the context
manager that guarantees this on every exit path (normal end, error, Ctrl-C, SIGTERM).

CPU time and memory come from ``/proc/<pid>/stat`` (utime + stime, clock ticks) and
``/proc/<pid>/status`` (VmRSS, VmHWM), summed over the server process and its descendants
(nginx has a master and a worker).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "CoreTimes",
    "Server",
    "ServerFailed",
    "Servers",
    "core_times",
    "free_port",
    "pinned",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerFailed(RuntimeError):
    """A server did not start or answer; the message ends with the tail of its log."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the kernel picks it; the socket is closed at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """``argv`` run under ``taskset -c cpu`` (unchanged when ``cpu`` is None)."""
    return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *argv]


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Cumulative clock ticks of one CPU core (``/proc/stat``).

    ``busy`` is time in processes (user, nice, system) and stolen by the hypervisor;
    ``interrupts`` (irq, softirq) is kept apart: on loopback it is mostly the network stack
    working for the benchmark's own processes, not another process competing for the core.
    """

    busy: int
    interrupts: int
    idle: int


def core_times(cpu: int) -> CoreTimes:
    """Tick counters of core ``cpu``."""
    prefix = f"cpu{cpu} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return CoreTimes(user + nice + system + steal, irq + softirq, idle + iowait)
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: split after the last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass(slots=True)
class Server:
    """One started server process (and whatever it forks)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    cpu: int | None
    _tree: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """The server and its descendants (looked up once, after it is ready)."""
        if not self._tree:
            tree, todo = [self.pid], [self.pid]
            while todo:
                kids = _children(todo.pop())
                tree += kids
                todo += kids
            self._tree = tree
        return self._tree

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, summed over the process tree."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = _stat_fields(pid)
                ticks += int(fields[11]) + int(fields[12])
        return ticks / CLOCK_TICKS

    def rss_kib(self) -> int:
        return sum(self._each("VmRSS"))

    def peak_rss_kib(self) -> int:
        """Peak resident set (VmHWM), summed over the process tree."""
        return sum(self._each("VmHWM"))

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0); False if refused."""
        try:
            for pid in self.pids():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def _each(self, key: str) -> Iterator[int]:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                yield _status_kib(pid, key)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ServerFailed(f"{self.name} exited with status {code}:\n{self.log_tail()}")

    def wait_ready(
        self, port: int, path: str, host: str | None = None, timeout: float = 30.0
    ) -> None:
        """Poll ``GET path`` on ``127.0.0.1:port`` until it answers 200."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", path, headers={"Host": host} if host else {})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return
                last = f"status {response.status}"
            except OSError as exc:
                last = str(exc)
            finally:
                conn.close()
            time.sleep(0.1)
        raise ServerFailed(
            f"{self.name} not ready after {timeout:.0f}s ({last}):\n{self.log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


class Servers:
    """Starts servers and stops every one of them when the ``with`` block ends, however."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._started: list[Server] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        discard_stdout: bool = False,
    ) -> Server:
        """Start ``argv`` pinned to ``cpu``; stderr (and stdout unless discarded) to a log."""
        log_path = self._log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                pinned(argv, cpu),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if discard_stdout else log,
                stderr=log,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        server = Server(name, process, log_path, cpu)
        self._started.append(server)
        return server

    def stop_all(self) -> None:
        """Stop every server, newest first; a second Ctrl-C waits until they are all down."""
        stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            while self._started:
                server = self._started.pop()
                with contextlib.suppress(Exception):
                    server.stop()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
