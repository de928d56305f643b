"""On-demand checks against a real DNS server process: every kind of answer a resolver gives.

Each test registers a domain, sets the server's records, runs ``DomainVerifier.check`` (the
code behind ``POST /admin/domains/<domain>/verify`` and ``dispatcher domains verify``) and
reads the outcome back from the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dispatcher.onboarding import DomainVerifier
from dispatcher.settings import Settings
from tests.dnsserver import DnsServer
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomain, CustomDomainCreate, DomainStatus, WorkerCreate
from workers_registry.store import RegistryStore

pytestmark = pytest.mark.anyio

DOMAIN = "shop.example.org"
CHALLENGE = f"_dispatcher-challenge.{DOMAIN}"
TARGET = "shop.example.com"
PLATFORM = {TARGET: {"A": ["127.0.0.10"], "AAAA": ["::10"]}}


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RegistryStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    await upgrade(url)
    async with RegistryStore.from_url(url) as opened:
        await opened.add_worker(WorkerCreate(name="shop", upstreams=["http://127.0.0.1:1"]))
        yield opened


def settings_for(dns: DnsServer, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "base_domains": ("example.com",),
        "dns_resolvers": (dns.address,),
        "dns_timeout": 0.5,
    }
    return Settings(**{**options, **overrides})


async def pending(store: RegistryStore) -> CustomDomain:
    return await store.add_domain(CustomDomainCreate(domain=DOMAIN, worker="shop"))


def records(token: str | None, **domain_records: Any) -> dict[str, dict[str, Any]]:
    zone: dict[str, dict[str, Any]] = dict(PLATFORM)
    if token is not None:
        zone[CHALLENGE] = {"TXT": [token]}
    if domain_records:
        zone[DOMAIN] = domain_records
    return zone


async def check(store: RegistryStore, settings: Settings) -> tuple[str, CustomDomain]:
    report = await DomainVerifier(store, settings).check(DOMAIN)
    stored = await store.get_domain(DOMAIN)
    assert stored is not None
    assert stored == report.domain
    return report.result, stored


@pytest.mark.parametrize(
    ("zone", "result", "status", "reason"),
    [
        pytest.param(
            lambda token: records(token, CNAME=TARGET),
            "active", DomainStatus.ACTIVE, None, id="txt-and-cname-to-target",
        ),
        pytest.param(
            lambda token: records(token, CNAME="edge.example.com"),
            "active", DomainStatus.ACTIVE, None, id="cname-to-another-name-of-a-base-domain",
        ),
        pytest.param(
            lambda token: records(token, A=["127.0.0.10"], AAAA=["::10"]),
            "active", DomainStatus.ACTIVE, None, id="apex-with-the-targets-addresses",
        ),
        pytest.param(
            lambda token: records(token, CNAME="elsewhere.example.net"),
            "verified", DomainStatus.VERIFIED, "CNAME to elsewhere.example.net",
            id="txt-but-cname-elsewhere",
        ),
        pytest.param(
            lambda token: records(token, A=["127.0.0.10", "127.0.0.99"]),
            "verified", DomainStatus.VERIFIED, "127.0.0.99",
            id="txt-but-one-address-elsewhere",
        ),
        pytest.param(
            lambda token: records(None, CNAME=TARGET),
            "txt_missing", DomainStatus.PENDING, f"No TXT record at {CHALLENGE}",
            id="no-txt",
        ),
        pytest.param(
            lambda token: {**records(None, CNAME=TARGET), CHALLENGE: {"TXT": ["x" + token]}},
            "txt_mismatch", DomainStatus.PENDING, "does not hold this domain's token",
            id="wrong-txt",
        ),
        pytest.param(
            lambda token: records(None),
            "nxdomain", DomainStatus.PENDING, f"{DOMAIN} does not exist in DNS (NXDOMAIN)",
            id="nxdomain",
        ),
        pytest.param(
            lambda token: {
                **records(token, CNAME="a.example.net"),
                "a.example.net": {"CNAME": "b.example.net"},
                "b.example.net": {"CNAME": "a.example.net"},
            },
            "verified", DomainStatus.VERIFIED, "loops", id="txt-and-a-cname-loop",
        ),
        pytest.param(
            lambda token: {
                **records(None, CNAME="a.example.net"),
                "a.example.net": {"CNAME": "a.example.net"},
            },
            "txt_missing", DomainStatus.PENDING, "No TXT record", id="cname-to-itself",
        ),
        pytest.param(
            lambda token: {
                **records(token, CNAME="c0.example.net"),
                **{f"c{i}.example.net": {"CNAME": f"c{i + 1}.example.net"} for i in range(30)},
            },
            "verified", DomainStatus.VERIFIED, "loops or is too long", id="over-long-chain",
        ),
        pytest.param(
            lambda token: {
                **records(None, CNAME=TARGET),
                CHALLENGE: {"TXT": [f"noise-{i:04d}-{'x' * 24}" for i in range(1000)] + [token]},
            },
            "active", DomainStatus.ACTIVE, None, id="token-in-a-huge-txt-set-over-tcp",
        ),
    ],
)  # fmt: skip
async def test_a_check_maps_the_answer_to_a_status_and_a_reason(
    dns: DnsServer,
    store: RegistryStore,
    zone: Any,
    result: str,
    status: DomainStatus,
    reason: str | None,
) -> None:
    added = await pending(store)
    dns.set(zone(added.verification_token))
    got, stored = await check(store, settings_for(dns))
    assert (got, stored.status) == (result, status)
    if reason is None:
        assert stored.failure_reason is None
    else:
        assert stored.failure_reason is not None and reason in stored.failure_reason
    assert stored.checked_at is not None
    assert stored.next_check_at is not None and stored.next_check_at > added.created_at


@pytest.mark.parametrize(
    ("behaviour", "result"),
    [
        pytest.param("servfail", "servfail", id="servfail"),
        pytest.param("refused", "servfail", id="refused"),
        pytest.param("timeout", "timeout", id="no-answer"),
        pytest.param("truncate_always", "servfail", id="truncated-and-tcp-closed"),
    ],
)
async def test_an_unanswered_check_changes_only_the_next_check_time(
    dns: DnsServer, store: RegistryStore, behaviour: str, result: str
) -> None:
    added = await pending(store)
    dns.set(
        records(added.verification_token, CNAME=TARGET),
        {CHALLENGE: behaviour, DOMAIN: behaviour},
    )
    got, stored = await check(store, settings_for(dns))
    assert got == result
    assert stored.status is DomainStatus.PENDING
    assert (stored.checked_at, stored.failure_reason) == (None, None)
    assert stored.next_check_at is not None and stored.next_check_at > added.next_check_at  # type: ignore[operator]


async def test_a_resolver_that_is_down_changes_only_the_next_check_time(
    dns: DnsServer, store: RegistryStore
) -> None:
    added = await pending(store)
    with DnsServer() as gone:
        address = gone.address
    got, stored = await check(store, Settings(dns_resolvers=(address,), dns_timeout=0.5))
    assert got in ("servfail", "timeout")
    assert (stored.status, stored.checked_at, stored.failure_reason) == (
        DomainStatus.PENDING, None, None,
    )  # fmt: skip
    assert stored.next_check_at is not None and stored.next_check_at > added.next_check_at  # type: ignore[operator]


async def test_a_truncated_udp_answer_is_asked_again_over_tcp(
    dns: DnsServer, store: RegistryStore
) -> None:
    added = await pending(store)
    dns.set(records(added.verification_token, CNAME=TARGET), {CHALLENGE: "truncate"})
    assert (await check(store, settings_for(dns)))[0] == "active"


async def test_an_answer_too_large_even_for_tcp_is_not_judged(
    dns: DnsServer, store: RegistryStore
) -> None:
    added = await pending(store)
    huge = [f"noise-{i:05d}-{'x' * 60}" for i in range(2000)] + [str(added.verification_token)]
    dns.set({**records(None, CNAME=TARGET), CHALLENGE: {"TXT": huge}})
    got, stored = await check(store, settings_for(dns))
    assert (got, stored.status, stored.failure_reason) == ("truncated", "pending", None)


async def test_checks_of_many_hostile_answers_at_once_all_finish(
    dns: DnsServer, store: RegistryStore
) -> None:
    names = [f"d{i}.example.org" for i in range(20)]
    zone: dict[str, dict[str, Any]] = {}
    behaviour: dict[str, str] = {}
    for i, name in enumerate(names):
        await store.add_domain(CustomDomainCreate(domain=name, worker="shop"))
        kind = i % 4
        if kind == 0:
            zone[name] = {"CNAME": name}
        elif kind == 1:
            behaviour[name] = "timeout"
        elif kind == 2:
            zone[f"_dispatcher-challenge.{name}"] = {"TXT": ["y" * 255] * 400}
        else:
            behaviour[f"_dispatcher-challenge.{name}"] = "truncate_always"
    dns.set(zone, behaviour)
    verifier = DomainVerifier(store, settings_for(dns))
    reports = await asyncio.wait_for(
        asyncio.gather(*(verifier.check(name) for name in names)), timeout=20
    )
    assert {report.domain.status for report in reports} == {DomainStatus.PENDING}


async def test_a_verified_domain_becomes_active_once_it_points_at_the_platform(
    dns: DnsServer, store: RegistryStore
) -> None:
    added = await pending(store)
    settings = settings_for(dns)
    dns.set(records(added.verification_token))
    assert (await check(store, settings))[1].status is DomainStatus.VERIFIED
    dns.set(records(None, CNAME=TARGET))  # the TXT record may go once ownership is proven
    got, stored = await check(store, settings)
    assert (got, stored.status, stored.failure_reason) == ("active", "active", None)


async def test_an_idn_domain_is_checked_under_its_ascii_form(
    dns: DnsServer, store: RegistryStore
) -> None:
    added = await store.add_domain(CustomDomainCreate(domain="Bücher.example.org", worker="shop"))
    assert added.domain == "xn--bcher-kva.example.org"
    dns.set(
        {
            **PLATFORM,
            "_dispatcher-challenge.xn--bcher-kva.example.org": {"TXT": [added.verification_token]},
            "xn--bcher-kva.example.org": {"CNAME": TARGET},
        }
    )
    report = await DomainVerifier(store, settings_for(dns)).check("bücher.example.org")
    assert (report.result, report.domain.status) == ("active", "active")


async def test_an_edit_made_during_a_check_wins(dns: DnsServer, store: RegistryStore) -> None:
    added = await pending(store)
    dns.set(records(added.verification_token, CNAME=TARGET))
    await store.set_domain_status(DOMAIN, DomainStatus.FAILED)  # after the verifier read it
    verifier = DomainVerifier(store, settings_for(dns))
    report = await verifier._check(added, on_demand=True)
    assert report.domain.status is DomainStatus.FAILED
    stored = await store.get_domain(DOMAIN)
    assert stored is not None and stored.status is DomainStatus.FAILED
    assert stored.checked_at is None


async def test_a_failed_domain_checked_on_demand_comes_back(
    dns: DnsServer, store: RegistryStore
) -> None:
    added = await pending(store)
    await store.set_domain_status(DOMAIN, DomainStatus.FAILED)
    dns.set(records(added.verification_token, CNAME=TARGET))
    got, stored = await check(store, settings_for(dns))
    assert (got, stored.status) == ("active", DomainStatus.ACTIVE)
    assert stored.next_check_at is not None and stored.next_check_at > datetime.now(UTC)
