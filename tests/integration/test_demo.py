"""``make run``'s demo: the dispatcher with the demo tenant answers on hello.localhost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_demo_tenant_answers_through_the_dispatcher(tmp_path: Path) -> None:
    port, tenant_port = free_port(), free_port()
    env = {
        **os.environ,
        "DISPATCHER_PORT": str(port),
        "DISPATCHER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
        "DEMO_TENANT_PORT": str(tenant_port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def answer() -> httpx.Response | None:
        assert proc.poll() is None, "demo exited"
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(
                f"http://127.0.0.1:{port}/", headers={"host": "hello.localhost"}, timeout=2
            )
            if response.status_code == 200:
                return response
        return None

    try:
        wait_until(lambda: answer() is not None, timeout=30, what="the demo tenant")
        response = answer()
        assert response is not None
        assert response.text == "Hello from worker hello! (routed by subdomain)\n"
        assert response.headers["x-request-id"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
