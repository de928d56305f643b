"""Which domains the admin API and the CLI accept, and how listings show them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dispatcher.app import create_app
from dispatcher.settings import Settings
from tests.servers import serve_gateway
from workers_registry.migrate import upgrade_sync

TOKEN = "admission-token"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    database = tmp_path_factory.mktemp("admission") / "registry.db"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        admin_token=TOKEN,
        base_domains=("example.com", "apps.example.net"),
        control_hosts=("ops.example.org",),
        log_level="warning",
    )
    upgrade_sync(settings.database_url)
    with serve_gateway(create_app(settings)) as server:
        headers = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
            for name in ("shop", "blog"):
                body = {"name": name, "upstreams": ["http://127.0.0.1:1"]}
                assert client.post("/admin/workers", json=body).status_code == 201
            yield client


def domains(api: httpx.Client) -> dict[str, dict[str, Any]]:
    listed = api.get("/admin/domains").json()["domains"]
    return {entry["domain"]: entry for entry in listed}


@pytest.mark.parametrize(
    ("domain", "status", "message"),
    [
        pytest.param("203.0.113.7", None, "IP address", id="ipv4-literal"),
        pytest.param("[2001:db8::1]", None, "IP address", id="ipv6-literal"),
        pytest.param("*.customer.org", None, "wildcard", id="wildcard"),
        pytest.param("example.com", "active", "base domain", id="base-domain"),
        pytest.param("ops.example.org", "active", "control host", id="control-host"),
        pytest.param("localhost", "active", "fully qualified", id="localhost"),
        pytest.param("a" * 64 + ".org", None, "not a valid domain", id="label-over-63"),
        pytest.param(("a" * 60 + ".") * 5 + "org", None, "not a valid domain", id="over-253"),
        pytest.param(
            ("a" * 60 + ".") * 3 + "a" * 50 + ".org",
            None,
            "verification record",
            id="txt-name-over-253",
        ),
        pytest.param("_acme.customer.org", None, "not a host name", id="service-label"),
        pytest.param("customer.123", None, "not a host name", id="numeric-tld"),
        pytest.param("xn--zz.customer.org", None, "internationalised", id="bad-a-label"),
        pytest.param("new.example.com", None, "under the base domain", id="under-base-default"),
        pytest.param("new.example.com", "pending", "under the base domain", id="under-base"),
        pytest.param("x.y.apps.example.net", "verified", "under the base", id="deep-under-base"),
    ],
)
def test_a_domain_that_cannot_be_onboarded_is_refused_and_nothing_is_written(
    api: httpx.Client, domain: str, status: str | None, message: str
) -> None:
    body = {"domain": domain, "worker": "shop", **({"status": status} if status else {})}
    answer = api.post("/admin/domains", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    assert [detail["field"] for detail in error["details"]] == ["domain"]
    assert message in error["details"][0]["message"]
    assert all(not entry.startswith(domain.strip("[]*.")) for entry in domains(api))


def test_a_name_under_a_base_domain_is_accepted_when_vouched_and_marked_as_shadowing(
    api: httpx.Client,
) -> None:
    body = {"domain": "blog.example.com", "worker": "shop", "status": "active"}
    answer = api.post("/admin/domains", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["shadows_worker"] == "blog"
    assert domains(api)["blog.example.com"]["shadows_worker"] == "blog"
    unrelated = {"domain": "nobody.example.com", "worker": "shop", "status": "active"}
    assert api.post("/admin/domains", json=unrelated).json()["shadows_worker"] is None


def test_a_domain_another_worker_holds_is_a_conflict(api: httpx.Client) -> None:
    assert api.post("/admin/domains", json={"domain": "held.org", "worker": "shop"}).is_success
    again = api.post("/admin/domains", json={"domain": "HELD.org.", "worker": "blog"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    assert domains(api)["held.org"]["worker"] == "shop"


def test_an_idn_domain_is_stored_in_its_ascii_form(api: httpx.Client) -> None:
    answer = api.post("/admin/domains", json={"domain": "Bücher.Example.ORG", "worker": "shop"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["domain"] == "xn--bcher-kva.example.org"
    assert body["verification"]["txt_name"] == "_dispatcher-challenge.xn--bcher-kva.example.org"
    assert api.get("/admin/domains/bücher.example.org").json()["domain"] == body["domain"]


def test_each_domain_gets_its_own_random_token(api: httpx.Client) -> None:
    tokens = {
        api.post("/admin/domains", json={"domain": f"t{i}.org", "worker": "shop"}).json()[
            "verification"
        ]["txt_value"]
        for i in range(5)
    }
    assert len(tokens) == 5
