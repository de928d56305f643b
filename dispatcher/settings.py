"""Settings: one frozen object, validated once at start.

Precedence (highest first): command-line flags (passed to ``load_settings`` as overrides),
``DISPATCHER_<NAME>`` environment variables, the TOML file, built-in defaults. The TOML file is
``config/dispatcher.toml`` in the working directory when it exists, or the file named by
``DISPATCHER_CONFIG`` / ``--config``, which must exist. There is no module-level instance:
``load_settings()`` builds one and the caller passes it on (``create_app(settings)``).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dispatcher.errors import InvalidHost
from dispatcher.hosts import DEFAULT_RESERVED_NAMES, normalize_domain, validate_worker_name

__all__ = ["DEFAULT_CONFIG_FILE", "ConfigError", "Settings", "load_settings"]

DEFAULT_CONFIG_FILE = Path("config/dispatcher.toml")

_config_file: ContextVar[Path | None] = ContextVar("dispatcher_config_file", default=None)

StrList = Annotated[tuple[str, ...], NoDecode]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A setting has a bad value, or the configuration file cannot be read."""


class Settings(BaseSettings):
    """Every setting of the dispatcher, with the defaults of DESIGN.md."""

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
    domain_cache_ttl: float = Field(60.0, ge=0)
    domain_negative_ttl: float = Field(10.0, ge=0)
    domain_cache_size: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(104_857_600, ge=0)
    upstream_timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    max_concurrency: int = Field(256, ge=1)
    stream_idle_timeout: float = Field(300.0, gt=0)
    max_header_bytes: int = Field(32_768, ge=1024)
    via_name: str = Field("dispatcher", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    max_hops: int = Field(3, ge=1)
    registry_poll_interval: float = Field(2.0, gt=0)
    registry_change_retention: float = Field(3600.0, gt=0)
    metrics_per_worker: bool = False
    loop_lag_probe: bool = False
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
        "base_domains", "control_hosts", "reserved_names", "trusted_proxies", mode="before"
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

    @field_validator("reserved_names")
    @classmethod
    def _lowercase_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(item.lower() for item in value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: Any) -> Any:
        # Compose files write an unset variable as empty: that must not enable the admin API.
        if isinstance(value, str) and not value.strip():
            return None
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

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset(self.reserved_names)

    def validate_worker_name(self, name: str) -> str:
        """The one worker-name validator, bound to this configuration's reserved list."""
        return validate_worker_name(name, self.reserved)


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
        value = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"invalid setting {key!r} = {value!r}: {message}")
    return "; ".join(problems)
