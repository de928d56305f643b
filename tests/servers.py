"""Real servers on loopback for the tests.

- ``ThreadedServer``: an ASGI app under a real uvicorn in a background thread (its own event
  loop), on an unused 127.0.0.1 port; like httpx's test server.
- ``serve_gateway``: the dispatcher's gateway in a ``ThreadedServer`` with the HTTP options of
  ``dispatcher serve`` (its own server protocol unless the settings say otherwise).
- ``DispatcherProcess``: ``python -m dispatcher serve`` as a child process, for what needs a
  process of its own (the CLI path, memory measurements).

Start-up waits poll a condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn

from dispatcher.app import Gateway
from dispatcher.cli import server_options

__all__ = ["DispatcherProcess", "ThreadedServer", "free_port", "serve_gateway", "wait_until"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


class ThreadedServer:
    """Serve ``app`` with uvicorn in a thread; use as a context manager."""

    def __init__(self, app: Any, *, port: int = 0, **config: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options: dict[str, Any] = {
            "log_config": None,
            "access_log": False,
            "lifespan": "on",
            "http": "httptools",
            "ws": "websockets-sansio",
            "loop": "asyncio",
            "proxy_headers": False,
            "server_header": False,
            "date_header": False,
            "timeout_graceful_shutdown": 2,
        }
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))
        finally:
            self.loop.close()

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's event loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        wait_until(lambda: self.server.started or not self._thread.is_alive(), what="server start")
        if not self.server.started:
            raise RuntimeError("server failed to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


def serve_gateway(gateway: Gateway, *, port: int = 0) -> ThreadedServer:
    """A ``ThreadedServer`` for the dispatcher, speaking HTTP exactly as ``serve`` does."""
    return ThreadedServer(gateway, port=port, **server_options(gateway.settings))


class DispatcherProcess:
    """``python -m dispatcher serve`` in a child process with the given environment."""

    def __init__(self, env: dict[str, str], *args: str, cwd: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **env, "DISPATCHER_PORT": str(self.port)}
        self._args = args
        self._cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = b""
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full pipe would
        # block the dispatcher's event loop on its next log line.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> DispatcherProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "serve", *self._args],
            env=self._env,
            cwd=self._cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._healthy, timeout=30, what="dispatcher /health")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            self._log.seek(0)
            out = self._log.read()
            raise RuntimeError(f"dispatcher exited: {out.decode(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        return False

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory (or ``VmHWM``, the peak) of the process, from /proc."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"{field} not found")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.seek(0)
        self.output = self._log.read()
        self._log.close()


@contextlib.contextmanager
def serving(app: Any, **config: Any) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, **config) as server:
        yield server
