"""`dispatcher serve` as a real process: migrations first, bodies streamed with flat memory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher.cli import main
from tests.servers import DispatcherProcess, ThreadedServer
from tests.tenant import PATTERN, TenantApp, pattern_bytes

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tenant() -> Iterator[ThreadedServer]:
    with ThreadedServer(TenantApp("big")) as server:
        yield server


@pytest.fixture(scope="module")
def served(
    tenant: ThreadedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DispatcherProcess]:
    directory = tmp_path_factory.mktemp("serve")
    env = {
        "DISPATCHER_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'serve.db'}",
        "DISPATCHER_LOG_LEVEL": "warning",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        for key, value in env.items():
            patch.setenv(key, value)
        assert main(["workers", "add", "big", "--upstream", tenant.url]) == 0
    with DispatcherProcess(env, cwd=str(directory)) as process:
        yield process


def test_serve_applies_migrations_and_routes(tmp_path: Path, tenant: ThreadedServer) -> None:
    env = {"DISPATCHER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"}
    with DispatcherProcess(env, cwd=str(tmp_path)) as process:
        response = httpx.get(f"{process.url}/dispatch", timeout=10)
        assert response.json()["workers"] == 0  # the schema exists: migrations ran first
        missing = httpx.get(process.url, headers={"host": "big.localhost"}, timeout=10)
        assert missing.status_code == 404
    lines = [json.loads(line) for line in process.output.splitlines() if line.startswith(b"{")]
    access = [line for line in lines if line.get("event") == "request"]
    assert {line["status"] for line in access} >= {200, 404}
    for line in access:
        assert set(line) >= {
            "request_id", "method", "host", "path", "status", "duration_ms", "route",
            "worker", "upstream", "bytes_in", "bytes_out", "client_ip",
        }  # fmt: skip


def test_100_mib_download_streams_with_flat_memory(served: DispatcherProcess) -> None:
    size = 100 * MIB
    with httpx.Client(base_url=served.url, timeout=60) as client:
        client.get("/bytes?n=1000000", headers={"host": "big.localhost"})  # warm up
        baseline = served.rss_kib()
        digest = hashlib.sha256()
        received = 0
        samples: list[int] = []
        with client.stream(
            "GET", f"/bytes?n={size}", headers={"host": "big.localhost"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(size)
            for chunk in response.iter_raw():
                if received // (8 * MIB) != (received + len(chunk)) // (8 * MIB):
                    samples.append(served.rss_kib())
                digest.update(chunk)
                received += len(chunk)
    assert received == size
    assert len(samples) >= 10
    growth = max(samples) - baseline
    assert growth < 32 * 1024, f"RSS grew by {growth} KiB while downloading"
    expected = hashlib.sha256()
    for _ in range(size // len(PATTERN)):
        expected.update(PATTERN)
    assert digest.hexdigest() == expected.hexdigest()


def test_100_mib_upload_streams_with_flat_memory(served: DispatcherProcess) -> None:
    chunk = b"u" * MIB
    samples: list[int] = []

    def body() -> Iterator[bytes]:
        for index in range(100):
            if index % 10 == 0:
                samples.append(served.rss_kib())
            yield chunk

    with httpx.Client(base_url=served.url, timeout=60) as client:
        client.post("/echo", headers={"host": "big.localhost"}, content=b"x" * MIB)  # warm up
        baseline = served.rss_kib()
        response = client.post("/echo", headers={"host": "big.localhost"}, content=body())
    data = response.json()
    assert data["body_bytes"] == 100 * MIB
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(chunk)
    assert data["body_sha256"] == expected.hexdigest()
    growth = max(samples) - baseline
    assert growth < 32 * 1024, f"RSS grew by {growth} KiB while uploading"


@pytest.mark.parametrize("http_server", ["dispatcher", "uvicorn"])
def test_either_http_server_protocol_serves_the_dispatcher(
    tmp_path: Path, tenant: ThreadedServer, http_server: str
) -> None:
    """``http_server`` picks the server protocol; the dispatcher behaves the same on both."""
    env = {
        "DISPATCHER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'protocol.db'}",
        "DISPATCHER_HTTP_SERVER": http_server,
        "DISPATCHER_LOG_LEVEL": "warning",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        for key, value in env.items():
            patch.setenv(key, value)
        assert main(["workers", "add", "big", "--upstream", tenant.url]) == 0
    with (
        DispatcherProcess(env, cwd=str(tmp_path)) as process,
        httpx.Client(base_url=process.url, headers={"host": "big.localhost"}) as client,
    ):
        for _ in range(3):  # one keep-alive connection
            response = client.get("/bytes", params={"n": 100_000}, timeout=10)
            assert response.status_code == 200
            assert response.content == pattern_bytes(100_000)
        too_big = client.get("/", headers={"x-big": "a" * 40_000}, timeout=10)
        assert too_big.status_code == 431  # the dispatcher's own max_header_bytes
        assert too_big.json()["error"]["code"] == "headers_too_large"
        # Which protocol ran shows at the server's own head limit: ours refuses a 2 MiB head
        # and closes; uvicorn's has none, so the dispatcher answers it (keeping the connection).
        huge = client.get("/", headers={"x-huge": "a" * (2 << 20)}, timeout=10)
        assert huge.status_code == 431
        assert (huge.headers.get("connection") == "close") == (http_server == "dispatcher")
