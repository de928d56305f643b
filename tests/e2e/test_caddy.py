"""End to end through real Caddy running the production ``Caddyfile``.

Caddy (Debian's package) sits in front of a real dispatcher on loopback ports, with its
internal CA standing in for ACME so on-demand TLS works offline. Requests use curl's
``--resolve`` so no DNS is involved. Under ``CI=true`` a missing ``caddy`` fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from dispatcher.app import create_app
from dispatcher.settings import Settings
from tests.dnsserver import DnsServer
from tests.servers import ThreadedServer, free_port, serve_gateway, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, DomainStatus, WorkerCreate
from workers_registry.store import RegistryStore

ROOT = Path(__file__).resolve().parents[2]


def _caddy() -> str:
    path = shutil.which("caddy")
    if path is None:
        message = "caddy is not installed (apt-get install -y caddy)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Edge:
    http_port: int
    https_port: int
    root_ca: Path
    tenant: TenantApp
    database: str
    dns: DnsServer

    def curl(self, url: str, host: str, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--resolve", f"{host}:{port}:127.0.0.1",
             "--noproxy", "*", *extra, url],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    caddy = _caddy()
    home = tmp_path_factory.mktemp("caddy")
    database = f"sqlite+aiosqlite:///{home / 'registry.db'}"
    tenant = TenantApp("edge")
    with ThreadedServer(tenant) as tenant_server, DnsServer() as dns:

        async def seed() -> None:
            await upgrade(database)
            async with RegistryStore.from_url(database) as store:
                await store.add_worker(WorkerCreate(name="shop", upstreams=[tenant_server.url]))
                await store.add_domain(
                    CustomDomainCreate(
                        domain="shop.example.org", worker="shop", status=DomainStatus.ACTIVE
                    )
                )

        asyncio.run(seed())
        settings = Settings(
            database_url=database,
            base_domains=("example.com",),
            # The verifier asks the test's DNS server, on a schedule of fractions of a second.
            dns_resolvers=(dns.address,),
            dns_timeout=0.5,
            registry_poll_interval=0.2,
            domain_verify_min_interval=0.2,
            domain_verify_max_interval=0.4,
        )
        gateway = create_app(settings)
        with serve_gateway(gateway) as dispatcher:
            http_port, https_port, admin_port = free_port(), free_port(), free_port()
            env = {
                **os.environ,
                "HOME": str(home),
                "XDG_DATA_HOME": str(home / "data"),
                "XDG_CONFIG_HOME": str(home / "config"),
                "BASE_DOMAIN": "example.com",
                "DISPATCHER_UPSTREAMS": f"127.0.0.1:{dispatcher.port}",
                "DISPATCHER_ASK_URL": f"http://127.0.0.1:{dispatcher.port}/tls/ask",
                "CADDY_ISSUER": "internal",
                "CADDY_WILDCARD_TLS": "wildcard_on_demand",
                "CADDY_BIND": "127.0.0.1",
                "CADDY_HTTP_PORT": str(http_port),
                "CADDY_HTTPS_PORT": str(https_port),
                "CADDY_ADMIN": f"127.0.0.1:{admin_port}",
            }
            log = (home / "caddy.log").open("w")
            process = subprocess.Popen(
                [caddy, "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            edge = Edge(
                http_port,
                https_port,
                home / "data/caddy/pki/authorities/local/root.crt",
                tenant,
                database,
                dns,
            )
            try:

                def ready() -> bool:
                    assert process.poll() is None, (home / "caddy.log").read_text()
                    answer = edge.curl(
                        f"http://shop.example.com:{http_port}/", "shop.example.com", http_port
                    )
                    return answer.returncode == 0 and answer.stdout == "hello from edge\n"

                wait_until(ready, timeout=30, what="Caddy in front of the dispatcher")
                yield edge
            finally:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                if process.poll() is None:
                    process.kill()
                log.close()


def test_wildcard_subdomain_routes_over_http(edge: Edge) -> None:
    answer = edge.curl(
        f"http://shop.example.com:{edge.http_port}/echo/x?y=1",
        "shop.example.com", edge.http_port, "-H", "X-Forwarded-For: 203.0.113.9",
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    headers = dict(data["headers"])
    assert headers["x-dispatch-route"] == "subdomain"
    assert headers["x-forwarded-host"] == f"shop.example.com:{edge.http_port}"
    # Caddy is the edge: the client's own X-Forwarded-For is not believed by Caddy, and the
    # dispatcher trusts Caddy (127.0.0.1), so the chain is Caddy's view plus Caddy itself.
    assert headers["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"


def test_registered_custom_domain_gets_a_certificate_and_reaches_its_tenant(edge: Edge) -> None:
    url = f"https://shop.example.org:{edge.https_port}/"
    wait_until(edge.root_ca.exists, timeout=30, what="Caddy's internal CA")
    answer = edge.curl(url, "shop.example.org", edge.https_port, "--cacert", str(edge.root_ca))
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "hello from edge\n"


def test_unknown_domain_gets_no_certificate(edge: Edge) -> None:
    answer = edge.curl(
        f"https://unknown.example.net:{edge.https_port}/", "unknown.example.net", edge.https_port,
        "--insecure",
    )  # fmt: skip
    assert answer.returncode == 35, (answer.returncode, answer.stderr)  # TLS handshake failed


def test_unknown_worker_subdomain_gets_no_certificate(edge: Edge) -> None:
    answer = edge.curl(
        f"https://nobody.example.com:{edge.https_port}/", "nobody.example.com", edge.https_port,
        "--insecure",
    )  # fmt: skip
    assert answer.returncode == 35, (answer.returncode, answer.stderr)


def test_existing_worker_subdomain_gets_a_certificate(edge: Edge) -> None:
    wait_until(edge.root_ca.exists, timeout=30, what="Caddy's internal CA")
    answer = edge.curl(
        f"https://shop.example.com:{edge.https_port}/", "shop.example.com", edge.https_port,
        "--cacert", str(edge.root_ca),
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "hello from edge\n"


def test_websocket_passes_through_caddy_and_the_dispatcher(edge: Edge) -> None:
    async def talk(uri: str, port: int, **options: Any) -> str:
        async with connect(uri, host="127.0.0.1", port=port, open_timeout=20, **options) as ws:
            await ws.send("ping")
            return str(await ws.recv())

    plain = asyncio.run(talk(f"ws://shop.example.com:{edge.http_port}/ws", edge.http_port))
    assert plain == "edge:ping"
    wait_until(edge.root_ca.exists, timeout=30, what="Caddy's internal CA")
    context = ssl.create_default_context(cafile=str(edge.root_ca))
    secure = asyncio.run(
        talk(f"wss://shop.example.org:{edge.https_port}/ws", edge.https_port, ssl=context)
    )
    assert secure == "edge:ping"


def test_a_pending_domain_gets_a_certificate_only_once_the_verifier_made_it_active(
    edge: Edge,
) -> None:
    domain = "onboard.example.org"

    async def add() -> str:
        async with RegistryStore.from_url(edge.database) as store:
            added = await store.add_domain(CustomDomainCreate(domain=domain, worker="shop"))
            return str(added.verification_token)

    async def status() -> str:
        async with RegistryStore.from_url(edge.database) as store:
            found = await store.get_domain(domain)
            assert found is not None
            return found.status.value

    token = asyncio.run(add())
    wait_until(edge.root_ca.exists, timeout=30, what="Caddy's internal CA")
    url = f"https://{domain}:{edge.https_port}/"
    refused = edge.curl(url, domain, edge.https_port, "--cacert", str(edge.root_ca))
    assert refused.returncode == 35, (refused.returncode, refused.stderr)  # no certificate

    edge.dns.set(
        {
            f"_dispatcher-challenge.{domain}": {"TXT": [token]},
            domain: {"CNAME": "shop.example.com"},
            "shop.example.com": {"A": ["127.0.0.1"]},
        }
    )
    wait_until(lambda: asyncio.run(status()) == "active", timeout=20, what="active")

    def served() -> bool:
        answer = edge.curl(url, domain, edge.https_port, "--cacert", str(edge.root_ca))
        return answer.returncode == 0 and answer.stdout == "hello from edge\n"

    wait_until(served, timeout=30, what="a certificate and the tenant's answer")
