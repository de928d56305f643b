"""Settings (``dispatcher.settings``): README, "Configuration".

Precedence: command-line override > ``DISPATCHER_<NAME>`` env var > TOML file > default. Every
test runs in an empty working directory with no ``DISPATCHER_*`` variable set.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dispatcher.errors import InvalidWorkerName, ReservedWorkerName
from dispatcher.settings import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]

DESIGN_RESERVED = ("dispatcher", "api", "health", "admin", "system", "www", "mail", "ftp", "cdn")
DESIGN_RESERVED += ("assets", "static")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for name in list(os.environ):
        if name.upper().startswith("DISPATCHER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_default_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "dispatcher.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


# --- defaults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("database_url", "sqlite+aiosqlite:///./dispatcher.db", id="database_url"),
        pytest.param("base_domains", ("localhost",), id="base_domains"),
        pytest.param("control_hosts", (), id="control_hosts"),
        pytest.param("reserved_names", DESIGN_RESERVED, id="reserved_names"),
        pytest.param("admin_token", None, id="admin_token"),
        pytest.param("trusted_proxies", ("127.0.0.1", "::1"), id="trusted_proxies"),
        pytest.param("domain_cache_ttl", 60, id="domain_cache_ttl"),
        pytest.param("domain_negative_ttl", 10, id="domain_negative_ttl"),
        pytest.param("domain_cache_size", 100_000, id="domain_cache_size"),
        pytest.param("max_body_bytes", 104_857_600, id="max_body_bytes"),
        pytest.param("upstream_timeout", 60, id="upstream_timeout"),
        pytest.param("connect_timeout", 5, id="connect_timeout"),
        pytest.param("max_concurrency", 256, id="max_concurrency"),
        pytest.param("stream_idle_timeout", 300, id="stream_idle_timeout"),
        pytest.param("max_header_bytes", 32_768, id="max_header_bytes"),
        pytest.param("via_name", "dispatcher", id="via_name"),
        pytest.param("max_hops", 3, id="max_hops"),
        pytest.param("registry_poll_interval", 2, id="registry_poll_interval"),
        pytest.param("rate_limit_url", None, id="rate_limit_url"),
        pytest.param("rate_limit_timeout", 0.05, id="rate_limit_timeout"),
        pytest.param("rate_limit_fail_open", True, id="rate_limit_fail_open"),
        pytest.param("log_level", "info", id="log_level"),
        pytest.param("log_format", "json", id="log_format"),
        pytest.param("host", "127.0.0.1", id="host"),
        pytest.param("port", 8080, id="port"),
    ],
)
def test_defaults_are_the_design_table(name: str, expected: Any) -> None:
    assert getattr(load_settings(), name) == expected


def test_every_setting_has_a_default() -> None:
    settings = load_settings()
    assert set(Settings.model_fields) == set(settings.model_dump())


def test_shipped_config_file_names_every_setting_with_its_default() -> None:
    shipped = REPO / "config" / "dispatcher.toml"
    keys = set(tomllib.loads(shipped.read_text()))
    # Unset by default: commented out.
    assert keys == set(Settings.model_fields) - {"admin_token", "rate_limit_url"}
    assert load_settings(shipped) == load_settings()


def test_defaults_derive_the_runtime_views() -> None:
    settings = load_settings()
    assert settings.reserved == frozenset(DESIGN_RESERVED)
    assert settings.trusted_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.async_database_url == "sqlite+aiosqlite:///./dispatcher.db"


# --- env vars -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "value", "name", "expected"),
    [
        pytest.param("DISPATCHER_PORT", "9000", "port", 9000, id="int"),
        pytest.param("DISPATCHER_HOST", "0.0.0.0", "host", "0.0.0.0", id="str"),
        pytest.param("DISPATCHER_DOMAIN_CACHE_TTL", "1.5", "domain_cache_ttl", 1.5, id="float"),
        pytest.param("DISPATCHER_LOG_FORMAT", "console", "log_format", "console", id="choice"),
        pytest.param("DISPATCHER_MAX_HOPS", "5", "max_hops", 5, id="max-hops"),
        pytest.param("DISPATCHER_VIA_NAME", "edge-1", "via_name", "edge-1", id="via-name"),
        pytest.param(
            "DISPATCHER_DATABASE_URL",
            "postgresql://dispatcher@127.0.0.1/dispatcher",
            "database_url",
            "postgresql://dispatcher@127.0.0.1/dispatcher",
            id="postgres-url",
        ),
        pytest.param(
            "DISPATCHER_BASE_DOMAINS",
            "example.com,example.net",
            "base_domains",
            ("example.com", "example.net"),
            id="comma-list",
        ),
        pytest.param(
            "DISPATCHER_BASE_DOMAINS",
            " example.com , example.net ,",
            "base_domains",
            ("example.com", "example.net"),
            id="comma-list-with-spaces",
        ),
        pytest.param(
            "DISPATCHER_BASE_DOMAINS",
            '["example.com", "example.net"]',
            "base_domains",
            ("example.com", "example.net"),
            id="json-array",
        ),
        pytest.param(
            "DISPATCHER_BASE_DOMAINS",
            "Example.COM.,bücher.example",
            "base_domains",
            ("example.com", "xn--bcher-kva.example"),
            id="domains-normalised",
        ),
        pytest.param(
            "DISPATCHER_CONTROL_HOSTS",
            "ops.example.org",
            "control_hosts",
            ("ops.example.org",),
            id="one-item-list",
        ),
        pytest.param("DISPATCHER_CONTROL_HOSTS", "", "control_hosts", (), id="empty-list"),
        pytest.param("DISPATCHER_CONTROL_HOSTS", "[]", "control_hosts", (), id="empty-json-array"),
        pytest.param(
            "DISPATCHER_RESERVED_NAMES",
            "Internal,OPS",
            "reserved_names",
            ("internal", "ops"),
            id="reserved-lowercased",
        ),
        pytest.param(
            "DISPATCHER_TRUSTED_PROXIES",
            "10.0.0.0/8, 192.168.1.1,fd00::/8",
            "trusted_proxies",
            ("10.0.0.0/8", "192.168.1.1", "fd00::/8"),
            id="cidrs",
        ),
        pytest.param(
            "DISPATCHER_TRUSTED_PROXIES",
            '["10.0.0.0/8"]',
            "trusted_proxies",
            ("10.0.0.0/8",),
            id="cidrs-json",
        ),
    ],
)
def test_env_var_overrides_the_default(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, name: str, expected: Any
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(load_settings(), name) == expected


def test_admin_token_from_env_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", "s3cret-token")
    settings = load_settings()
    assert isinstance(settings.admin_token, SecretStr)
    assert settings.admin_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(settings)


def test_trusted_networks_parse_cidrs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_TRUSTED_PROXIES", "10.0.0.0/8,192.168.1.1")
    networks = load_settings().trusted_networks
    assert ipaddress.ip_address("10.20.30.40") in networks[0]
    assert networks[1] == ipaddress.ip_network("192.168.1.1/32")


# --- the TOML file --------------------------------------------------------------------------


def test_config_file_in_working_directory_overrides_the_default(tmp_path: Path) -> None:
    write_default_file(
        tmp_path,
        'port = 9001\nbase_domains = ["a.example", "B.example."]\nlog_level = "debug"\n',
    )
    settings = load_settings()
    assert settings.port == 9001
    assert settings.base_domains == ("a.example", "b.example")
    assert settings.log_level == "debug"
    assert settings.max_hops == 3  # not in the file: default


def test_config_file_accepts_comma_separated_list_strings(tmp_path: Path) -> None:
    write_default_file(tmp_path, 'control_hosts = "ops.example.org, admin.example.org"\n')
    assert load_settings().control_hosts == ("ops.example.org", "admin.example.org")


def test_env_var_overrides_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_default_file(tmp_path, 'port = 9001\nhost = "0.0.0.0"\nbase_domains = ["a.example"]\n')
    monkeypatch.setenv("DISPATCHER_PORT", "9002")
    monkeypatch.setenv("DISPATCHER_BASE_DOMAINS", "b.example")
    settings = load_settings()
    assert settings.port == 9002
    assert settings.base_domains == ("b.example",)
    assert settings.host == "0.0.0.0"  # not in env: from the file


def test_command_line_override_beats_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_default_file(tmp_path, "port = 9001\n")
    monkeypatch.setenv("DISPATCHER_PORT", "9002")
    assert load_settings(port=9003).port == 9003
    assert load_settings(port=None).port == 9002  # an unset flag is no override


def test_dispatcher_config_names_the_file_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_default_file(tmp_path, "port = 9001\n")
    other = tmp_path / "elsewhere.toml"
    other.write_text("port = 9005\nmax_hops = 7\n")
    monkeypatch.setenv("DISPATCHER_CONFIG", str(other))
    settings = load_settings()
    assert settings.port == 9005
    assert settings.max_hops == 7


def test_config_argument_names_the_file_to_read(tmp_path: Path) -> None:
    other = tmp_path / "cli.toml"
    other.write_text("port = 9006\n")
    assert load_settings(other).port == 9006
    assert load_settings(str(other)).port == 9006


@pytest.mark.parametrize("how", ["env", "argument"])
def test_named_config_file_that_does_not_exist_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    missing = tmp_path / "missing.toml"
    if how == "env":
        monkeypatch.setenv("DISPATCHER_CONFIG", str(missing))
        with pytest.raises(ConfigError, match=r"missing\.toml"):
            load_settings()
    else:
        with pytest.raises(ConfigError, match=r"missing\.toml"):
            load_settings(missing)


def test_named_config_file_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path)


def test_unknown_key_in_the_config_file_is_an_error(tmp_path: Path) -> None:
    write_default_file(tmp_path, "port = 9001\nbase_domain = ['typo.example']\n")
    with pytest.raises(ConfigError, match="base_domain"):
        load_settings()


def test_malformed_config_file_is_an_error(tmp_path: Path) -> None:
    path = write_default_file(tmp_path, "port = \n")
    with pytest.raises(ConfigError, match=r"dispatcher\.toml"):
        load_settings(path)


def test_no_config_file_at_all_gives_the_defaults() -> None:
    assert not Path("config/dispatcher.toml").exists()
    assert load_settings().port == 8080


# --- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("port", "http", id="port-not-a-number"),
        pytest.param("port", "70000", id="port-out-of-range"),
        pytest.param("port", "-1", id="port-negative"),
        pytest.param("max_hops", "0", id="max-hops-zero"),
        pytest.param("max_concurrency", "0", id="max-concurrency-zero"),
        pytest.param("domain_cache_size", "0", id="cache-size-zero"),
        pytest.param("domain_cache_ttl", "soon", id="ttl-not-a-number"),
        pytest.param("domain_negative_ttl", "-5", id="negative-ttl-negative"),
        pytest.param("upstream_timeout", "0", id="timeout-zero"),
        pytest.param("connect_timeout", "-1", id="connect-timeout-negative"),
        pytest.param("stream_idle_timeout", "never", id="idle-timeout-word"),
        pytest.param("registry_poll_interval", "0", id="poll-interval-zero"),
        pytest.param("max_body_bytes", "-1", id="max-body-negative"),
        pytest.param("max_header_bytes", "10", id="max-header-bytes-tiny"),
        pytest.param("log_level", "loud", id="log-level-unknown"),
        pytest.param("log_format", "xml", id="log-format-unknown"),
        pytest.param("via_name", "has space", id="via-name-space"),
        pytest.param("database_url", "mysql://db/x", id="database-unsupported"),
        pytest.param("base_domains", "exa mple.com", id="base-domain-invalid"),
        pytest.param("base_domains", "ok.example,bad_label.example", id="base-domain-one-bad"),
        pytest.param("control_hosts", "-bad.example", id="control-host-invalid"),
        pytest.param("trusted_proxies", "not-an-ip", id="trusted-proxy-invalid"),
        pytest.param("trusted_proxies", "10.0.0.0/33", id="trusted-proxy-bad-prefix"),
        pytest.param("base_domains", '["unclosed"', id="json-array-malformed"),
    ],
)
def test_bad_env_value_is_a_config_error_naming_key_and_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"DISPATCHER_{name.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert repr(name) in message
    assert value in message


def test_a_bad_rate_limit_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCHER_RATE_LIMIT_URL", "http://:hunter2@cache:6379")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "'rate_limit_url'" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        pytest.param('port = "http"', "port", "http", id="port-string"),
        pytest.param("max_hops = 0", "max_hops", "0", id="max-hops-zero"),
        pytest.param('log_level = "loud"', "log_level", "loud", id="log-level"),
        pytest.param('base_domains = ["bad domain"]', "base_domains", "bad domain", id="domain"),
        pytest.param('trusted_proxies = ["nope"]', "trusted_proxies", "nope", id="proxy"),
    ],
)
def test_bad_file_value_is_a_config_error_naming_key_and_value(
    tmp_path: Path, line: str, name: str, value: str
) -> None:
    write_default_file(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert repr(name) in str(caught.value)
    assert value in str(caught.value)


def test_bad_file_value_is_no_error_when_env_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_default_file(tmp_path, 'port = "http"\n')
    monkeypatch.setenv("DISPATCHER_PORT", "9000")
    assert load_settings().port == 9000


def test_config_error_is_not_a_validation_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_PORT", "http")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# --- the settings object --------------------------------------------------------------------


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db", id="sqlite"),
        pytest.param("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db", id="aiosqlite"),
        pytest.param("postgresql://u@h/db", "postgresql+asyncpg://u@h/db", id="postgresql"),
        pytest.param(
            "postgresql+asyncpg://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db", id="asyncpg"
        ),
    ],
)
def test_async_database_url_names_the_async_driver(url: str, expected: str) -> None:
    assert load_settings(database_url=url).async_database_url == expected


def test_settings_validate_worker_names_against_the_configured_reserved_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCHER_RESERVED_NAMES", "internal")
    settings = load_settings()
    assert settings.validate_worker_name("WWW") == "www"
    with pytest.raises(ReservedWorkerName):
        settings.validate_worker_name("Internal")
    with pytest.raises(InvalidWorkerName):
        settings.validate_worker_name("-bad")


@pytest.mark.parametrize("value", [pytest.param("", id="empty"), pytest.param("  ", id="blank")])
def test_empty_admin_token_does_not_enable_the_admin_api(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # ``DISPATCHER_ADMIN_TOKEN=`` (as compose files write an unset variable) must not configure
    # the empty string as the bearer token: either it means "unset" or it is refused.
    monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", value)
    try:
        settings = load_settings()
    except ConfigError as exc:
        assert "admin_token" in str(exc)
        return
    assert settings.admin_token is None
