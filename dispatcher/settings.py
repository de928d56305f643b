"""Settings: one frozen object, validated once at start.

Precedence (highest first): command-line flags (passed to ``load_settings`` as overrides),
``DISPATCHER_<NAME>`` environment variables, the TOML file, built-in defaults. The TOML file is
``config/dispatcher.toml`` in the working directory when it exists, or the file named by
``DISPATCHER_CONFIG`` / ``--config``, which must exist. There is no module-level instance:
``load_settings()`` builds one and the caller passes it on (``create_app(settings)``).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dispatcher.errors import InvalidHost
from dispatcher.hosts import DEFAULT_RESERVED_NAMES, normalize_domain, validate_worker_name
from dispatcher.networks import DEFAULT_DENIED_NETWORKS, UpstreamNetworks

__all__ = ["DEFAULT_CONFIG_FILE", "ConfigError", "Settings", "load_settings", "parse_resolver"]

DEFAULT_CONFIG_FILE = Path("config/dispatcher.toml")

_config_file: ContextVar[Path | None] = ContextVar("dispatcher_config_file", default=None)

#: Settings whose values are never repeated in an error message.
_SECRET_SETTINGS = frozenset({"admin_token", "rate_limit_url"})

StrList = Annotated[tuple[str, ...], NoDecode]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# One DNS label, optionally a service label ("_dispatcher-challenge").
_CHALLENGE_LABEL = r"^_?[a-z0-9](?:[a-z0-9-]{0,60}[a-z0-9])?$"


class ConfigError(Exception):
    """A setting has a bad value, or the configuration file cannot be read."""


class Settings(BaseSettings):
    """Every setting of the dispatcher, with its default (README, "Configuration")."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    database_url: str = "sqlite+aiosqlite:///./dispatcher.db"
    base_domains: StrList = ("localhost",)
    control_hosts: StrList = ()
    reserved_names: StrList = DEFAULT_RESERVED_NAMES
    admin_token: SecretStr | None = None
    trusted_proxies: StrList = ("127.0.0.1", "::1")
    upstream_allowed_networks: StrList = ()
    upstream_denied_networks: StrList = DEFAULT_DENIED_NETWORKS
    domain_cache_ttl: float = Field(60.0, ge=0)
    domain_negative_ttl: float = Field(10.0, ge=0)
    domain_cache_size: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(104_857_600, ge=0)
    upstream_timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    max_concurrency: int = Field(256, ge=1)
    stream_idle_timeout: float = Field(300.0, gt=0)
    max_header_bytes: int = Field(32_768, ge=1024)
    request_head_timeout: float = Field(10.0, gt=0)
    request_body_timeout: float = Field(30.0, gt=0)
    max_response_header_bytes: int = Field(65_536, ge=1024)
    via_name: str = Field("dispatcher", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    max_hops: int = Field(3, ge=1)
    registry_poll_interval: float = Field(2.0, gt=0)
    registry_change_retention: float = Field(3600.0, gt=0)
    domain_challenge_prefix: str = Field("_dispatcher-challenge", pattern=_CHALLENGE_LABEL)
    cname_target: str | None = None
    domain_verify_min_interval: float = Field(60.0, gt=0)
    domain_verify_max_interval: float = Field(14_400.0, gt=0)
    domain_verify_timeout: float = Field(604_800.0, gt=0)
    domain_recheck_interval: float = Field(86_400.0, gt=0)
    dns_resolvers: StrList = ()
    dns_timeout: float = Field(5.0, gt=0)
    metrics_per_worker: bool = False
    loop_lag_probe: bool = False
    rate_limit_url: SecretStr | None = None
    rate_limit_timeout: float = Field(0.05, gt=0, le=10)
    rate_limit_fail_open: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    keepalive_timeout: float = Field(75.0, gt=0)
    http_server: Literal["dispatcher", "uvicorn"] = "dispatcher"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator(
        "base_domains",
        "control_hosts",
        "reserved_names",
        "trusted_proxies",
        "upstream_allowed_networks",
        "upstream_denied_networks",
        "dns_resolvers",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(item.strip() for item in text.split(",") if item.strip())
        return value

    @field_validator("base_domains", "control_hosts")
    @classmethod
    def _normalise_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(normalize_domain(item) for item in value)
        except InvalidHost as exc:
            raise ValueError(f"not a valid domain name ({exc.message})") from exc

    @field_validator("cname_target")
    @classmethod
    def _normalise_target(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            return normalize_domain(value.strip())
        except InvalidHost as exc:
            raise ValueError(f"not a valid domain name ({exc.message})") from exc

    @field_validator("dns_resolvers")
    @classmethod
    def _check_resolvers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_resolver(item)
        return value

    @model_validator(mode="after")
    def _check_verify_intervals(self) -> Settings:
        if self.domain_verify_min_interval > self.domain_verify_max_interval:
            raise ValueError(
                "domain_verify_min_interval must not exceed domain_verify_max_interval"
            )
        return self

    @field_validator("reserved_names")
    @classmethod
    def _lowercase_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(item.lower() for item in value)

    @field_validator("trusted_proxies", "upstream_allowed_networks", "upstream_denied_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator("admin_token", "rate_limit_url", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: Any) -> Any:
        # Compose files write an unset variable as empty: that must not enable the admin API.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("rate_limit_url")
    @classmethod
    def _check_rate_limit_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().split("://", 1)[0].lower()
            if scheme not in {"redis", "rediss", "unix"}:
                # The message never repeats the URL: it may hold a password.
                raise ValueError("use redis://[:PASSWORD@]HOST[:PORT][/DB], rediss:// or unix://")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if scheme not in {"sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg"}:
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql://USER@HOST/DB")
        return value

    @property
    def async_database_url(self) -> str:
        """The SQLAlchemy URL with its async driver made explicit."""
        scheme, rest = self.database_url.split("://", 1)
        driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
        return f"{driver.get(scheme, scheme)}://{rest}"

    @property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies)

    @functools.cached_property
    def upstream_networks(self) -> UpstreamNetworks:
        """Where workers' upstreams may be (checked at registration and at connect time)."""
        return UpstreamNetworks(self.upstream_allowed_networks, self.upstream_denied_networks)

    @property
    def registration_context(self) -> dict[str, Any]:
        """The validation context of a worker or domain registered by an operator (admin
        API, CLI): the reserved names and the upstream network rule."""
        return {"reserved_names": self.reserved, "upstream_networks": self.upstream_networks}

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset(self.reserved_names)

    @property
    def resolvers(self) -> tuple[tuple[str, int], ...]:
        """``dns_resolvers`` as (address, port) pairs; empty: the system's resolvers."""
        return tuple(parse_resolver(item) for item in self.dns_resolvers)

    def validate_worker_name(self, name: str) -> str:
        """The one worker-name validator, bound to this configuration's reserved list."""
        return validate_worker_name(name, self.reserved)


def parse_resolver(value: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``addr`` or ``[addr]:port`` as (IP address, port).

    DNS servers are named by address: resolving their names would need a resolver.
    """
    text = value.strip()
    port = 53
    if text.startswith("["):
        address, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: write an IPv6 resolver as [address]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
    else:
        address, port_text = text, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise ValueError(f"{value!r}: the port must be 1-65535")
        port = int(port_text)
    try:
        return str(ipaddress.ip_address(address)), port
    except ValueError:
        message = f"{value!r}: a resolver is an IP address, optionally with a port"
        raise ValueError(message) from None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raise ``ConfigError`` naming the bad key and value.

    ``overrides`` are command-line flags (``None`` values are ignored).
    """
    path = _pick_config_file(config_file)
    cli = {key: value for key, value in overrides.items() if value is not None}
    with _using_config_file(path):
        try:
            return Settings(**cli)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, path)) from None
        except (OSError, ValueError) as exc:  # unreadable or malformed TOML
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None


def _pick_config_file(config_file: str | Path | None) -> Path | None:
    named = config_file or os.environ.get("DISPATCHER_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"configuration file {str(path)!r} does not exist")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


@contextmanager
def _using_config_file(path: Path | None) -> Iterator[None]:
    token = _config_file.set(path)
    try:
        yield
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError, path: Path | None) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "settings"
        if error["type"] == "extra_forbidden":
            where = f" in {path}" if path else ""
            problems.append(f"unknown setting {key!r}{where}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if key in _SECRET_SETTINGS:  # the value may hold a password: never echo it
            problems.append(f"invalid setting {key!r}: {message}")
            continue
        value = error.get("input")
        problems.append(f"invalid setting {key!r} = {value!r}: {message}")
    return "; ".join(problems)
