"""Soak: minutes of mixed traffic, then file descriptors and memory are back to baseline.

Marked ``slow``: excluded from ``make test``, run by ``make soak``. ``SOAK_SECONDS`` sets the
duration (default 300); the load is also bounded by a request count and stops by itself.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from dispatcher.cli import main
from tests.misbehaving import MisbehavingServer
from tests.servers import DispatcherProcess, ThreadedServer, wait_until
from tests.tenant import TenantApp

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
MAX_REQUESTS = 2_000_000


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DispatcherProcess]:
    home = tmp_path_factory.mktemp("soak")
    env = {
        "DISPATCHER_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'soak.db'}",
        "DISPATCHER_LOG_LEVEL": "warning",
        "DISPATCHER_STREAM_IDLE_TIMEOUT": "2",
    }
    tenant = TenantApp("soak")
    with ThreadedServer(tenant) as upstream, MisbehavingServer() as bad:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(home)
            for key, value in env.items():
                patch.setenv(key, value)
            assert main(["workers", "add", "soak", "--upstream", upstream.url]) == 0
            assert main(["workers", "add", "flaky", "--upstream", bad.url,
                         "--upstream-timeout", "0.5"]) == 0  # fmt: skip
            assert main(["workers", "add", "gone", "--upstream", "http://127.0.0.1:9"]) == 0
        with DispatcherProcess(env, cwd=str(home)) as process:
            yield process


@pytest.mark.timeout(SECONDS + 240)
def test_mixed_traffic_leaves_no_leaks(rig: DispatcherProcess) -> None:
    process = rig
    assert process.proc is not None
    pid = process.proc.pid
    url = process.url

    def plain(client: httpx.Client) -> str:
        return str(client.get("/echo", headers={"host": "soak.localhost"}).status_code)

    def upload(client: httpx.Client) -> str:
        body = iter([b"u" * 65536] * 16)
        response = client.post("/echo", headers={"host": "soak.localhost"}, content=body)
        return str(response.status_code)

    def download_and_leave(client: httpx.Client) -> str:
        with client.stream("GET", "/bytes?n=50000000", headers={"host": "soak.localhost"}) as r:
            next(r.iter_raw())  # read a little, then drop the connection
        return "left"

    def sse_and_leave(client: httpx.Client) -> str:
        key = uuid.uuid4().hex
        with client.stream("GET", f"/sse?key={key}", headers={"host": "soak.localhost"}) as r:
            next(r.iter_lines())
        return "sse"

    def failures(client: httpx.Client) -> str:
        codes = [
            client.get("/", headers={"host": "gone.localhost"}).status_code,
            client.get("/hang", headers={"host": "flaky.localhost"}).status_code,
        ]
        try:
            client.get("/reset", headers={"host": "flaky.localhost"})
        except httpx.HTTPError:
            codes.append(0)
        return ",".join(map(str, codes))

    def disconnect_early(client: httpx.Client) -> str:
        with socket.create_connection(("127.0.0.1", process.port), timeout=5) as sock:
            sock.sendall(b"GET /hang HTTP/1.1\r\nHost: flaky.localhost\r\n\r\n")
        return "gone"

    mix: list[Callable[[httpx.Client], str]] = [
        plain, plain, plain, plain, upload, download_and_leave, sse_and_leave, failures,
        disconnect_early,
    ]  # fmt: skip

    def exercise(seconds: float) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def worker(offset: int) -> None:
            count = 0
            with httpx.Client(base_url=url, timeout=10) as client:
                while time.monotonic() < deadline and count < MAX_REQUESTS // 8:
                    outcome = mix[(offset + count) % len(mix)](client)
                    count += 1
                    with lock:
                        outcomes[outcome] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    exercise(min(10.0, SECONDS / 10))  # warm up: pools, caches, allocator arenas
    wait_until(lambda: open_fds(pid) < 200, timeout=30, what="quiet after warm-up")
    baseline_fds = open_fds(pid)
    baseline_rss = process.rss_kib()

    outcomes = exercise(SECONDS)
    assert outcomes["200"] > 100, outcomes

    # Everything the soak opened is closed again once the idle timeouts have passed.
    wait_until(lambda: open_fds(pid) <= baseline_fds + 4, timeout=60, what="fds back")
    growth = process.rss_kib() - baseline_rss
    assert growth < 20 * 1024, f"RSS grew by {growth} KiB over the soak"
