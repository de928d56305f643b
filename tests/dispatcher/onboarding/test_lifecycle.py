"""The whole lifecycle in a running dispatcher: the verifier's schedule, driven by short
intervals from the settings, against a real DNS server whose records change meanwhile."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from dispatcher.app import create_app
from dispatcher.onboarding import DomainVerifier
from dispatcher.settings import Settings
from tests.dnsserver import DnsServer
from tests.servers import ThreadedServer, serve_gateway, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade_sync
from workers_registry.models import CustomDomainCreate, WorkerCreate
from workers_registry.store import RegistryStore

TOKEN = "onboarding-token"
DOMAIN = "shop.example.org"
PLATFORM = {"shop.example.com": {"A": ["127.0.0.10"]}}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def tenant() -> Iterator[str]:
    with ThreadedServer(TenantApp("shop-tenant")) as server:
        yield server.url


def fast_settings(tmp_path: Path, dns: DnsServer, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        "admin_token": TOKEN,
        "base_domains": ("example.com",),
        "dns_resolvers": (dns.address,),
        "dns_timeout": 0.5,
        "registry_poll_interval": 0.1,
        "domain_verify_min_interval": 0.1,
        "domain_verify_max_interval": 0.2,
        "domain_recheck_interval": 0.2,
        "log_level": "warning",
    }
    settings = Settings(**{**options, **overrides})
    upgrade_sync(settings.database_url)
    return settings


def admin(server: ThreadedServer) -> httpx.Client:
    headers = {"authorization": f"Bearer {TOKEN}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


def shown(api: httpx.Client, domain: str = DOMAIN) -> dict[str, Any]:
    response = api.get(f"/admin/domains/{domain}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def metric(text: str, name: str, label: str) -> float:
    match = re.search(rf'^{name}\{{[a-z]+="{label}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_pending_domain_becomes_active_when_its_records_appear_and_moved_when_they_go(
    tmp_path: Path, dns: DnsServer, tenant: str
) -> None:
    settings = fast_settings(tmp_path, dns)
    with serve_gateway(create_app(settings)) as server, admin(server) as api:
        assert api.post("/admin/workers", json={"name": "shop", "upstreams": [tenant]}).is_success
        created = api.post("/admin/domains", json={"domain": DOMAIN, "worker": "shop"})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["status"] == "pending"
        verification = body["verification"]
        assert verification["txt_name"] == f"_dispatcher-challenge.{DOMAIN}"
        assert re.fullmatch(r"[0-9a-f]{32}", verification["txt_value"])
        assert verification["cname_target"] == "shop.example.com"

        def routed() -> int:
            return httpx.get(server.url, headers={"host": DOMAIN}, timeout=5).status_code

        # The first check comes within seconds and says what is missing; nothing routes.
        wait_until(lambda: shown(api)["verification"]["checked_at"] is not None, timeout=10)
        assert "NXDOMAIN" in shown(api)["verification"]["failure_reason"]
        assert routed() == 404

        dns.set(
            {
                **PLATFORM,
                f"_dispatcher-challenge.{DOMAIN}": {"TXT": [verification["txt_value"]]},
                DOMAIN: {"CNAME": "shop.example.com"},
            }
        )
        wait_until(lambda: shown(api)["status"] == "active", timeout=10, what="active")
        assert shown(api)["verification"]["failure_reason"] is None
        wait_until(lambda: routed() == 200, timeout=10, what="the active domain to route")

        # The customer points the domain elsewhere: three re-checks later it is moved.
        dns.set({**PLATFORM, DOMAIN: {"CNAME": "elsewhere.example.net"}})
        wait_until(lambda: shown(api)["status"] == "moved", timeout=10, what="moved")
        assert "3 checks in a row" in shown(api)["verification"]["failure_reason"]
        wait_until(lambda: routed() == 404, timeout=10, what="the moved domain to stop routing")
        assert httpx.get(f"{server.url}/tls/ask", params={"domain": DOMAIN}).status_code == 404

        def counted() -> bool:
            text = httpx.get(f"{server.url}/metrics").text
            return (
                metric(text, "dispatcher_domain_checks_total", "active") >= 1
                and metric(text, "dispatcher_domain_checks_total", "not_pointed") >= 3
                and metric(text, "dispatcher_domains", "moved") == 1
            )

        wait_until(counted, timeout=10, what="the checks and statuses in /metrics")


def test_a_domain_never_verified_fails_after_the_timeout(tmp_path: Path, dns: DnsServer) -> None:
    settings = fast_settings(tmp_path, dns, domain_verify_timeout=1.0)
    with serve_gateway(create_app(settings)) as server, admin(server) as api:
        api.post("/admin/workers", json={"name": "shop", "upstreams": ["http://127.0.0.1:1"]})
        api.post("/admin/domains", json={"domain": DOMAIN, "worker": "shop"})
        dns.set({DOMAIN: {"CNAME": "shop.example.com"}})  # no TXT record
        wait_until(lambda: shown(api)["status"] == "failed", timeout=10, what="failed")
        reason = shown(api)["verification"]["failure_reason"]
        assert reason.startswith("Not verified within 1 seconds: No TXT record")
        assert shown(api)["verification"]["next_check_at"] is None


def test_a_vouched_domain_is_not_checked(tmp_path: Path, dns: DnsServer) -> None:
    settings = fast_settings(tmp_path, dns)
    with serve_gateway(create_app(settings)) as server, admin(server) as api:
        api.post("/admin/workers", json={"name": "shop", "upstreams": ["http://127.0.0.1:1"]})
        vouched = {"domain": DOMAIN, "worker": "shop", "status": "active"}
        assert api.post("/admin/domains", json=vouched).status_code == 201
        api.post("/admin/domains", json={"domain": "other.example.org", "worker": "shop"})
        # The pending one is checked (the verifier runs), the vouched one never is.
        wait_until(lambda: shown(api, "other.example.org")["verification"]["checked_at"])
        record = shown(api)
        assert record["status"] == "active"
        assert record["verification"]["checked_at"] is None
        assert record["verification"]["next_check_at"] is None


def test_an_on_demand_check_answers_with_the_result(tmp_path: Path, dns: DnsServer) -> None:
    # The schedule's next check is far away: only the on-demand one runs meanwhile.
    settings = fast_settings(
        tmp_path, dns, domain_verify_min_interval=300, domain_verify_max_interval=600
    )
    with serve_gateway(create_app(settings)) as server, admin(server) as api:
        api.post("/admin/workers", json={"name": "shop", "upstreams": ["http://127.0.0.1:1"]})
        token = api.post("/admin/domains", json={"domain": DOMAIN, "worker": "shop"}).json()[
            "verification"
        ]["txt_value"]
        dns.set({f"_dispatcher-challenge.{DOMAIN}": {"TXT": [token]}})
        answer = api.post(f"/admin/domains/{DOMAIN}/verify")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == body["check"]["status"] == "verified"
        assert body["check"]["result"] == "verified"
        assert "NXDOMAIN" in body["check"]["reason"]
        missing = api.post("/admin/domains/nothere.example.org/verify")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "domain_not_found")


async def _verify_with_logs(settings: Settings) -> list[dict[str, Any]]:
    async with RegistryStore.from_url(settings.database_url) as store:
        await store.add_worker(WorkerCreate(name="shop", upstreams=["http://127.0.0.1:1"]))
        await store.add_domain(CustomDomainCreate(domain=DOMAIN, worker="shop"))
        with capture_logs() as logs:
            await DomainVerifier(store, settings).check(DOMAIN)
        return logs


def test_one_log_line_per_status_change_with_the_reason(tmp_path: Path, dns: DnsServer) -> None:
    settings = fast_settings(tmp_path, dns, domain_verify_timeout=0.001)
    dns.set({})
    logs = asyncio.run(_verify_with_logs(settings))
    changes = [line for line in logs if line["event"] == "domain_status_changed"]
    assert len(changes) == 1
    (change,) = changes
    assert (change["previous_status"], change["status"]) == ("pending", "failed")
    assert "NXDOMAIN" in change["reason"]
