"""The harness of one run: its servers, and the measurements taken against them.

``Bench`` starts the upstream, the upload sink and the servers under test (each pinned with
``taskset``), registers the benchmark's workers with the ``dispatcher`` CLI, checks every case
once, and measures: a wrk round with the CPU time of everything around it, a py-spy profile
under load, and the streaming memory figures. ``Options`` is what the command line decided.
"""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import configs, profile
from bench.procs import CLOCK_TICKS, Server, ServerFailed, Servers, core_times, free_port
from bench.report import Sample
from bench.streaming import StreamResult, measure_download, measure_upload
from bench.targets import TARGETS, Case
from bench.wrk import run_wrk

__all__ = ["MIB", "Bench", "Options", "PythonServer"]

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
_EXPECTED_BYTES = {"small": len(configs.SMALL_BODY), "large": configs.LARGE_SIZE}


@dataclass(frozen=True, slots=True)
class PythonServer:
    """The command line of one of the benchmark's Python servers."""

    argv: list[str]
    env: dict[str, str]
    ready_path: str
    discard_stdout: bool = False


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line decided (see ``bench.runner``)."""

    duration: int
    rounds: int
    warmup: int
    connections: int
    cases: tuple[Case, ...]
    stream_bytes: int
    server_cpu: int | None
    load_cpu: int | None
    log_level: str
    profile_seconds: int
    count_requests: int  # requests per case counted under callgrind (0: none)
    write: bool
    output: Path
    keep: bool
    command: str


class Bench:
    """The servers of one run and the measurements taken against them."""

    def __init__(self, options: Options, work: Path, servers: Servers) -> None:
        self.options = options
        self.work = work
        self.servers = servers
        self.running: dict[str, tuple[Server, int]] = {}
        self.www = work / "www"
        self.upstream_port = free_port()
        self.sink_port = free_port()
        self.redis_port = free_port()
        self.env = self._dispatcher_env()

    def _dispatcher_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DISPATCHER_")}
        env.update(
            PYTHONPATH=str(REPO),
            DISPATCHER_DATABASE_URL=f"sqlite+aiosqlite:///{self.work / 'registry.db'}",
            DISPATCHER_BASE_DOMAINS="localhost",
            DISPATCHER_MAX_BODY_BYTES=str(1 << 40),
            DISPATCHER_LOG_LEVEL=self.options.log_level,
            DISPATCHER_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",  # as in the Dockerfile: each log line is written at once
        )
        return env

    def _start(
        self,
        key: str,
        argv: list[str],
        *,
        cpu: int | None,
        ready_path: str = "/small",
        env: dict[str, str] | None = None,
        port: int,
        discard_stdout: bool = False,
    ) -> Server:
        server = self.servers.start(
            key, argv, cpu=cpu, env=env, cwd=self.work, discard_stdout=discard_stdout
        )
        server.wait_ready(port, ready_path)
        self.running[key] = (server, port)
        return server

    # -- setup ----------------------------------------------------------------------------

    def start_upstreams(self) -> None:
        """The upstream nginx and the upload sink (load core), and the registry."""
        configs.write_static_files(self.www, max(self.options.stream_bytes, 1))
        prefix = self.work / "nginx-upstream"
        prefix.mkdir()
        conf = configs.nginx_upstream(prefix, self.upstream_port, self.www)
        argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        self._start("upstream", argv, cpu=self.options.load_cpu, port=self.upstream_port)
        sink = [sys.executable, "-m", "bench.sink", "--port", str(self.sink_port)]
        self._start("sink", sink, cpu=self.options.load_cpu, port=self.sink_port, env=self.env)
        if any(case.target.server == "dispatcher-limited" for case in self.options.cases):
            self._start_redis()
        self._register()

    def _start_redis(self) -> None:
        """The rate limiter's Redis (load core), for ``dispatcher-limited``."""
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.work)]
        self.servers.start("redis", argv, cpu=self.options.load_cpu, cwd=self.work)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed("redis-server did not start")
            time.sleep(0.05)

    def _register(self) -> None:
        cli = [sys.executable, "-m", "dispatcher"]
        commands = [
            ["workers", "add", "bench", "--upstream", f"http://127.0.0.1:{self.upstream_port}"],
            ["workers", "add", "sink", "--upstream", f"http://127.0.0.1:{self.sink_port}"],
            # Limits no benchmark reaches: every request is checked, and admitted.
            [
                "workers",
                "add",
                "limited",
                "--upstream",
                f"http://127.0.0.1:{self.upstream_port}",
                "--rate-limit",
                "1000000",
                "--client-rate-limit",
                "1000000",
            ],
            ["domains", "add", "bench.example.org", "--worker", "bench", "--status", "active"],
        ]
        for command in commands:
            done = subprocess.run(
                [*cli, *command], env=self.env, cwd=self.work, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise ServerFailed(f"dispatcher {' '.join(command)} failed:\n{done.stderr}")

    def python_server(self, key: str, port: int) -> PythonServer:
        """How to start the Python server ``key`` (a dispatcher or a floor) on ``port``."""
        launcher = [sys.executable, "-m", "bench.serve"]
        if key.startswith("dispatcher"):
            env = self.env
            argv = [sys.executable, "-m", "dispatcher", "serve", "--no-migrate"]
            if key == "dispatcher-quiet":
                env = {**self.env, "DISPATCHER_LOG_LEVEL": "warning"}
            elif key == "dispatcher-limited":
                url = f"redis://127.0.0.1:{self.redis_port}/0"
                # A generous timeout: under callgrind (50x slower) 50 ms would fail open and
                # measure the outage path instead of the limiter.
                env = {**self.env, "DISPATCHER_RATE_LIMIT_URL": url}
                env["DISPATCHER_RATE_LIMIT_TIMEOUT"] = "5"
            elif key == "dispatcher-aiohttp":
                argv = [*launcher, "dispatcher", "--transport", "aiohttp"]
            # stdout is the access log: one JSON line per request, thrown away.
            return PythonServer([*argv, "--port", str(port)], env, "/health", discard_stdout=True)
        if key in ("floor", "floor-h1"):
            return PythonServer([*launcher, key, "--port", str(port)], self.env, "/small")
        if key == "proxy-floor":
            argv = [*launcher, key, "--port", str(port), "--upstream-port", str(self.upstream_port)]
            return PythonServer(argv, self.env, "/small")
        raise ValueError(f"{key!r} is not one of the Python servers")

    def start_server(self, key: str) -> None:
        """Start the server process ``key`` (see ``bench.targets``) on the server core."""
        port = free_port()
        cpu = self.options.server_cpu
        if key.startswith(("dispatcher", "floor", "proxy-floor")):
            launch = self.python_server(key, port)
            self._start(
                key,
                launch.argv,
                cpu=cpu,
                port=port,
                env=launch.env,
                ready_path=launch.ready_path,
                discard_stdout=launch.discard_stdout,
            )
        elif key == "nginx":
            prefix = self.work / "nginx-proxy"
            prefix.mkdir()
            conf = configs.nginx_proxy(prefix, port, self.upstream_port)
            argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
            self._start(key, argv, cpu=cpu, port=port)
        elif key in ("caddy", "caddy-quiet"):
            home = self.work / key
            home.mkdir()
            logged = key == "caddy"
            caddyfile = configs.caddyfile(home, port, self.upstream_port, access_log=logged)
            env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
            env["XDG_CONFIG_HOME"] = str(home / "config")
            argv = ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
            # As the dispatcher's: the access log goes to stdout, which is thrown away.
            self._start(key, argv, cpu=cpu, port=port, env=env, discard_stdout=logged)
        else:
            raise ValueError(f"unknown server {key!r}")

    def check(self, case: Case) -> None:
        """One request: the case must answer 200 with the right number of bytes."""
        _, port = self.running[case.target.server]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            host = case.target.host
            conn.request("GET", case.path, headers={"Host": host} if host else {})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200 or len(body) != _EXPECTED_BYTES[case.size]:
            raise ServerFailed(
                f"{case.name}: expected 200 with {_EXPECTED_BYTES[case.size]} bytes, got "
                f"{response.status} with {len(body)} bytes: {body[:200]!r}"
            )

    # -- measuring ------------------------------------------------------------------------

    def round(self, case: Case, seconds: int) -> Sample:
        """One wrk run against ``case``, with the CPU time of everything around it."""
        server, port = self.running[case.target.server]
        upstream, _ = self.running["upstream"]
        server_cpu, load_cpu = self.options.server_cpu, self.options.load_cpu
        cores = [server_cpu, load_cpu] if server_cpu is not None and load_cpu is not None else []
        cpu_before, upstream_before = server.cpu_seconds(), upstream.cpu_seconds()
        wrk_before = _children_cpu()
        cores_before = [core_times(core) for core in cores]
        started = time.perf_counter()
        result = run_wrk(
            case.url(port),
            duration=seconds,
            connections=self.options.connections,
            host=case.target.host,
            cpu=self.options.load_cpu,
        )
        wall = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu_before
        # What else ran on each core: its busy time minus our own processes' CPU time there.
        ours = (cpu, upstream.cpu_seconds() - upstream_before + _children_cpu() - wrk_before)
        noise = [0.0, 0.0]
        for index, (core, before) in enumerate(zip(cores, cores_before, strict=True)):
            busy = (core_times(core).busy - before.busy) / CLOCK_TICKS
            noise[index] = max(0.0, busy - ours[index]) / wall
        server.check_alive()
        return Sample(
            rate=result.rate,
            p50=result.p50,
            p99=result.p99,
            cpu_us=cpu / max(result.requests, 1) * 1e6,
            util=cpu / wall,
            noise_server=noise[0],
            noise_load=noise[1],
            errors=result.errors,
            read_errors=result.read_errors,
        )

    def record_profile(self) -> profile.Profile | None:
        """py-spy on the dispatcher while wrk loads its subdomain route with 100 B bodies."""
        options = self.options
        py_spy = profile.find_py_spy()
        if py_spy is None:
            print("bench: py-spy not installed (pip install py-spy); no profile", flush=True)
            return None
        if "dispatcher" not in self.running:
            return None
        server, _ = self.running["dispatcher"]
        case = Case(TARGETS["dispatcher"], "small")
        load = threading.Thread(target=self.round, args=(case, options.profile_seconds + 2))
        load.start()
        try:
            time.sleep(1)
            raw = profile.record(
                py_spy,
                server.pid,
                options.profile_seconds,
                self.work,
                options.load_cpu,
            )
        finally:
            load.join()
        return profile.summarise(raw)

    def streams(self) -> list[StreamResult]:
        """RSS of a fresh dispatcher while a large body streams through it, each way."""
        size = self.options.stream_bytes
        # Read the sparse file once so the download measures the proxy, not the page cache
        # being filled with 512 MiB of zero pages.
        buffer = bytearray(MIB)
        with (self.www / "huge").open("rb", buffering=0) as huge:
            while huge.readinto(buffer):
                pass
        self.start_server("dispatcher-stream")
        server, port = self.running["dispatcher-stream"]
        return [
            measure_upload(server, port, "sink.localhost", size),
            measure_download(server, port, "bench.localhost", size),
        ]


def _children_cpu() -> float:
    """CPU seconds of the reaped child processes (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
