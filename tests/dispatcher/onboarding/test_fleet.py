"""One verifier per fleet: two ``dispatcher serve`` processes on one Postgres, a DNS server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.dnsserver import DnsServer
from tests.servers import DispatcherProcess, wait_until

pytestmark = pytest.mark.postgres

TOKEN = "fleet-token"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def checks(process: DispatcherProcess) -> float:
    text = httpx.get(f"{process.url}/metrics", timeout=5).text
    return sum(
        float(value)
        for value in re.findall(r"^dispatcher_domain_checks_total\{.*\} (\S+)$", text, re.M)
    )


def test_two_processes_on_one_postgres_run_one_verifier_and_the_other_takes_over(
    postgres_url: str, dns: DnsServer
) -> None:
    env = {
        "DISPATCHER_DATABASE_URL": postgres_url,
        "DISPATCHER_ADMIN_TOKEN": TOKEN,
        "DISPATCHER_BASE_DOMAINS": "example.com",
        "DISPATCHER_DNS_RESOLVERS": dns.address,
        "DISPATCHER_DNS_TIMEOUT": "0.5",
        "DISPATCHER_REGISTRY_POLL_INTERVAL": "0.2",
        "DISPATCHER_DOMAIN_VERIFY_MIN_INTERVAL": "0.1",
        "DISPATCHER_DOMAIN_VERIFY_MAX_INTERVAL": "0.2",
        "DISPATCHER_LOG_LEVEL": "warning",
    }
    with DispatcherProcess(env) as first, DispatcherProcess(env) as second:
        headers = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=first.url, headers=headers, timeout=10) as api:
            body = {"name": "shop", "upstreams": ["http://127.0.0.1:1"]}
            assert api.post("/admin/workers", json=body).status_code == 201
            for i in range(5):  # no records: checked again and again
                body = {"domain": f"d{i}.example.org", "worker": "shop"}
                assert api.post("/admin/domains", json=body).status_code == 201

        wait_until(lambda: checks(first) + checks(second) >= 25, timeout=20, what="checks")
        counts = (checks(first), checks(second))
        assert sorted(count > 0 for count in counts) == [False, True], counts
        leader, follower = (first, second) if counts[0] else (second, first)
        # Every process answers on-demand checks, leader or not.
        with httpx.Client(base_url=follower.url, headers=headers, timeout=10) as api:
            answer = api.post("/admin/domains/d0.example.org/verify")
            assert answer.status_code == 200, answer.text
            assert answer.json()["check"]["result"] == "nxdomain"
        followed = checks(follower)
        assert followed == 1

        assert leader.proc is not None
        leader.proc.terminate()  # its lock goes with its database connection
        leader.proc.wait(timeout=15)
        wait_until(lambda: checks(follower) >= followed + 5, timeout=20, what="the takeover")
