"""The CLI's side of onboarding: what ``domains add`` tells the operator, ``show``, ``verify``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatcher.cli import main
from tests.dnsserver import DnsServer


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    monkeypatch.setenv("DISPATCHER_BASE_DOMAINS", "example.com")
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("cli_env")
def test_domains_add_tells_the_customer_the_records_to_create(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")[0] == 0
    code, out, _ = run(capsys, "domains", "add", "shop.customer.org", "--worker", "shop")
    assert code == 0
    shown = json.loads(run(capsys, "domains", "show", "shop.customer.org", "--json")[1])
    token = shown["verification"]["txt_value"]
    assert "(pending)" in out
    assert f'_dispatcher-challenge.shop.customer.org  TXT    "{token}"' in out
    assert "shop.customer.org  CNAME  shop.example.com" in out
    assert shown["verification"]["cname_target"] == "shop.example.com"


@pytest.mark.usefixtures("cli_env")
def test_domains_add_refuses_a_name_under_a_base_domain_unless_vouched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")
    run(capsys, "workers", "add", "blog", "--upstream", "http://127.0.0.1:1")
    code, _, err = run(capsys, "domains", "add", "blog.example.com", "--worker", "shop")
    assert code == 1 and "domain: " in err and "under the base domain" in err
    assert json.loads(run(capsys, "domains", "list", "--json")[1]) == []
    vouched = ("domains", "add", "blog.example.com", "--worker", "shop", "--status", "active")
    assert run(capsys, *vouched)[0] == 0
    code, out, _ = run(capsys, "domains", "list")
    assert "shadows worker blog's subdomain" in out


@pytest.mark.usefixtures("cli_env")
def test_domains_verify_checks_now_and_prints_the_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")
    run(capsys, "domains", "add", "shop.customer.org", "--worker", "shop")
    code, out, _ = run(capsys, "domains", "verify", "shop.customer.org", "--json")
    assert code == 0
    body = json.loads(out)
    # The tests' resolver is a closed loopback port: the check got no answer.
    assert body["check"]["result"] in ("servfail", "timeout")
    assert body["status"] == "pending"
    code, _, err = run(capsys, "domains", "verify", "nothere.customer.org")
    assert code == 1 and "not registered" in err


@pytest.mark.usefixtures("cli_env")
def test_domains_verify_json_is_the_whole_stdout_when_the_status_changes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")
    run(capsys, "domains", "add", "shop.customer.org", "--worker", "shop")
    shown = json.loads(run(capsys, "domains", "show", "shop.customer.org", "--json")[1])
    with DnsServer() as dns:
        monkeypatch.setenv("DISPATCHER_DNS_RESOLVERS", dns.address)
        dns.set(
            {
                "_dispatcher-challenge.shop.customer.org": {
                    "TXT": [shown["verification"]["txt_value"]]
                },
                "shop.customer.org": {"CNAME": "shop.example.com"},
            }
        )
        code, out, err = run(capsys, "domains", "verify", "shop.customer.org", "--json")
    assert code == 0
    body = json.loads(out)  # nothing but the answer on stdout
    assert (body["check"]["result"], body["status"]) == ("active", "active")
    assert "domain_status_changed" in err  # the log line, on stderr
    code, out, err = run(capsys, "domains", "set-status", "shop.customer.org", "pending")
    assert out == "domain shop.customer.org is now pending\n"
    assert "set by the operator (CLI)" in err
