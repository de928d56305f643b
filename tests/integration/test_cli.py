"""The ``dispatcher`` CLI against a real registry (SQLite file and throwaway Postgres)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.cli import main


@pytest.fixture(params=["sqlite", "postgres"])
def registry(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.chdir(tmp_path)  # no config/dispatcher.toml here: defaults + env only
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
    return url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_workers_add_list_show_remove(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "workers", "add", "Shop",
        "--upstream", "http://127.0.0.1:9001/",
        "--upstream", "https://10.0.0.5",
        "--preserve-host", "--disabled", "--max-body-bytes", "1000",
        "--upstream-timeout", "2.5", "--max-concurrency", "7",
        "--rate-limit", "50", "--rate-burst", "80", "--client-rate-limit", "0.5",
        "--tag", "team=web", "--tag", "tier=gold",
    )  # fmt: skip
    assert code == 0, out
    assert "shop" in out

    code, out, _ = run(capsys, "workers", "list", "--json")
    (worker,) = json.loads(out)
    assert worker["name"] == "shop"
    assert worker["upstreams"] == ["http://127.0.0.1:9001", "https://10.0.0.5"]
    assert worker["enabled"] is False
    assert worker["preserve_host"] is True
    assert worker["max_body_bytes"] == 1000
    assert worker["upstream_timeout"] == 2.5
    assert worker["max_concurrency"] == 7
    assert (worker["rate_limit"], worker["rate_burst"], worker["client_rate_limit"]) == (
        50,
        80,
        0.5,
    )
    assert worker["tags"] == {"team": "web", "tier": "gold"}

    code, out, _ = run(capsys, "workers", "list")
    assert code == 0 and "shop" in out and "NAME" in out

    code, out, _ = run(capsys, "workers", "show", "shop", "--json")
    assert code == 0 and json.loads(out)["name"] == "shop"
    code, out, _ = run(capsys, "workers", "show", "shop")
    assert code == 0
    assert {"rate_limit: 50.0", "rate_burst: 80", "client_rate_limit: 0.5"} <= set(out.splitlines())

    assert run(capsys, "workers", "remove", "shop")[0] == 0
    code, _, err = run(capsys, "workers", "show", "shop")
    assert code == 1
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("admin",), "reserved", id="reserved"),
        pytest.param(("bad-",), "Invalid worker name", id="invalid"),
        pytest.param(("ok", "--upstream-url", "x"), None, id="unknown-flag"),
    ],
)
def test_workers_add_rejects_bad_input_and_writes_nothing(
    registry: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str | None
) -> None:
    full = ["workers", "add", *args]
    if "--upstream-url" not in args:
        full += ["--upstream", "http://127.0.0.1:9001"]
    if message is None:
        with pytest.raises(SystemExit) as exited:
            main(full)
        assert exited.value.code == 2
    else:
        code, _, err = run(capsys, *full)
        assert code == 1
        assert message in err
    assert run(capsys, "workers", "list", "--json")[1].strip() == "[]"


def test_workers_add_rejects_a_bad_upstream(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "workers", "add", "shop", "--upstream", "ftp://x")
    assert code == 1 and "http or https" in err
    code, _, err = run(capsys, "workers", "add", "shop", "--upstream", "http://x", "--tag", "x")
    assert code == 1 and "KEY=VALUE" in err
    assert run(capsys, "workers", "list", "--json")[1].strip() == "[]"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254",
        "http://[::ffff:169.254.169.254]",
        "http://2130706433",
        "http://127.1",
    ],
)
def test_workers_add_refuses_denied_networks_and_odd_ipv4_spellings(
    registry: str, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, _, err = run(capsys, "workers", "add", "probe", "--upstream", url)
    assert code == 1 and "upstreams" in err
    assert run(capsys, "workers", "list", "--json")[1].strip() == "[]"


def test_workers_add_follows_the_operators_deny_list(
    registry: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHER_UPSTREAM_DENIED_NETWORKS", "127.0.0.0/8")
    code, _, err = run(capsys, "workers", "add", "probe", "--upstream", "http://127.0.0.1:1")
    assert code == 1 and "upstreams" in err
    monkeypatch.setenv("DISPATCHER_UPSTREAM_DENIED_NETWORKS", "")
    assert run(capsys, "workers", "add", "probe", "--upstream", "http://169.254.169.254")[0] == 0


def test_duplicate_worker_is_refused(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")[0] == 0
    code, _, err = run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:2")
    assert code == 1 and "already exists" in err
    (worker,) = json.loads(run(capsys, "workers", "list", "--json")[1])
    assert worker["upstreams"] == ["http://127.0.0.1:1"]


def test_domains_add_list_set_status_remove(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")[0] == 0
    code, out, _ = run(capsys, "domains", "add", "Shop.Example.ORG.", "--worker", "shop")
    assert code == 0, out
    (domain,) = json.loads(run(capsys, "domains", "list", "--json")[1])
    assert domain["domain"] == "shop.example.org"
    assert domain["worker"] == "shop"
    assert domain["status"] == "pending"  # the default: checked by DNS before it routes

    assert run(capsys, "domains", "set-status", "shop.example.org", "failed")[0] == 0
    (domain,) = json.loads(run(capsys, "domains", "list", "--json")[1])
    assert domain["status"] == "failed"

    code, out, _ = run(capsys, "domains", "list")
    assert "shop.example.org" in out and "failed" in out

    assert run(capsys, "domains", "remove", "shop.example.org")[0] == 0
    assert json.loads(run(capsys, "domains", "list", "--json")[1]) == []
    code, _, err = run(capsys, "domains", "remove", "shop.example.org")
    assert code == 1 and "not registered" in err


@pytest.mark.parametrize("name", ["shop.example.org:443", "[::1]"], ids=["port", "ipv6"])
def test_a_domain_argument_is_a_bare_domain(
    registry: str, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # Read as the admin API reads one: a Host header's port or an IP literal is no domain.
    code, _, err = run(capsys, "domains", "show", name)
    assert code == 1 and "invalid domain" in err


def test_domain_for_an_unknown_worker_is_refused(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "domains", "add", "x.example.org", "--worker", "ghost")
    assert code == 1 and "ghost" in err
    assert json.loads(run(capsys, "domains", "list", "--json")[1]) == []
    with pytest.raises(SystemExit) as exited:
        main(["domains", "add", "x.example.org", "--worker", "shop", "--status", "live"])
    assert exited.value.code == 2


def test_removing_a_worker_removes_its_domains(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")
    run(capsys, "domains", "add", "shop.example.org", "--worker", "shop")
    assert run(capsys, "workers", "remove", "shop")[0] == 0
    assert json.loads(run(capsys, "domains", "list", "--json")[1]) == []


def test_resolve_prints_the_route(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "workers", "add", "shop", "--upstream", "http://127.0.0.1:1")
    run(capsys, "domains", "add", "shop.example.org", "--worker", "shop", "--status", "active")

    code, out, _ = run(capsys, "resolve", "http://shop.localhost:8080/a/b?x=1", "--json")
    assert code == 0
    assert json.loads(out) == {
        "kind": "subdomain",
        "worker": "shop",
        "upstream_path": "/a/b",
        "query": "x=1",
    }
    code, out, _ = run(capsys, "resolve", "https://shop.example.org/", "--json")
    assert json.loads(out)["kind"] == "custom_domain"
    code, out, _ = run(capsys, "resolve", "http://localhost/dispatch/shop/p%2Fq?z", "--json")
    assert json.loads(out) == {
        "kind": "path",
        "worker": "shop",
        "upstream_path": "/p%2Fq",
        "query": "z",
    }
    code, out, _ = run(capsys, "resolve", "http://localhost/dispatch?worker=shop&k=v", "--json")
    assert json.loads(out) == {
        "kind": "query",
        "worker": "shop",
        "upstream_path": "/",
        "query": "k=v",
    }
    code, out, _ = run(capsys, "resolve", "http://localhost/dispatch?worker=shop")
    assert code == 0 and "kind: query" in out and "upstreams: http://127.0.0.1:1" in out

    code, out, _ = run(capsys, "resolve", "http://nobody.localhost/", "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "worker_not_found"
    code, _, err = run(capsys, "resolve", "http://admin.localhost/")
    assert code == 1 and "reserved_worker_name" in err


def test_bad_setting_names_key_and_value(
    registry: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHER_MAX_HOPS", "many")
    code, _, err = run(capsys, "workers", "list")
    assert code == 1
    assert "max_hops" in err and "many" in err
    assert err.count("\n") == 1


def test_missing_config_file_is_an_error(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--config", "nope.toml", "workers", "list")
    assert code == 1 and "nope.toml" in err


def test_db_upgrade_and_module_entry_point(registry: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
