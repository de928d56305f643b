"""Pydantic models of the registry: the shapes the admin API, the CLI and the store share.

Pure data and validation; no I/O. Worker names go through the one validator in
``dispatcher.hosts``; the reserved list comes from the validation context
(``{"reserved_names": ...}``) so every entry point applies the operator's configuration, and
falls back to the built-in list.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dispatcher.errors import InvalidHost, RoutingError
from dispatcher.hosts import DEFAULT_RESERVED_NAMES, normalize_domain, validate_worker_name

__all__ = [
    "ROUTABLE_STATUSES",
    "UPSTREAM_URL_PATTERN",
    "CustomDomain",
    "CustomDomainCreate",
    "CustomDomainPatch",
    "DomainStatus",
    "Worker",
    "WorkerCreate",
    "WorkerSpec",
    "check_upstream_url",
]


class DomainStatus(StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    ACTIVE = "active"
    FAILED = "failed"


#: Only these statuses route traffic.
ROUTABLE_STATUSES = frozenset({DomainStatus.VERIFIED, DomainStatus.ACTIVE})

# The registry's columns: INTEGER and BIGINT on both databases; text without NUL characters.
PositiveInt = Annotated[int, Field(ge=1, le=2**31 - 1)]
ByteCount = Annotated[int, Field(ge=0, le=2**63 - 1)]
Text = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]*$", max_length=1024)]


#: The shape of an upstream base URL: the API's published pattern, and checked here too, so the
#: documented contract and the validation are the same. Host: a name (underscores allowed, as
#: in container service names) or a bracketed IPv6 address; the base path: RFC 3986 ``pchar``.
UPSTREAM_URL_PATTERN: Final = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://"
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*$"
)
_UPSTREAM_URL = re.compile(UPSTREAM_URL_PATTERN)


#: A URL already in the canonical form ``check_upstream_url`` returns: lowercase scheme and
#: host name, no port 0 or leading zero, no trailing slash. Every stored URL is one, and this
#: one C-speed match is what reading 100,000 workers costs instead of a parse each.
_CANONICAL_URL = re.compile(
    r"https?://[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?(?::([1-9][0-9]{0,4}))?"
    r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_upstream_url(url: str) -> str:
    """Validate an upstream base URL and return its canonical form (no trailing slash).

    Accepts ``http`` and ``https`` URLs with a host, an optional port and an optional base path;
    rejects credentials, queries and fragments.
    """
    canonical = _CANONICAL_URL.fullmatch(url)
    if canonical and not url.endswith("/") and int(canonical[1] or 1) <= 65535:
        return url
    return _parse_upstream_url(url)


def _parse_upstream_url(url: str) -> str:
    """``check_upstream_url`` the long way: parsed, each rule checked, rebuilt."""
    if _CONTROL.search(url.strip()):
        raise ValueError(f"{url!r}: control characters are not allowed in a URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{url!r}: the URL has no host")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: credentials in upstream URLs are not supported")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: an upstream URL has no query or fragment")
    if port == 0:
        raise ValueError(f"{url!r}: port 0 is not a valid port")
    if not _UPSTREAM_URL.fullmatch(url.strip()):
        raise ValueError(
            f"{url!r} is not an upstream base URL: http(s)://host[:port][/base/path], "
            "no credentials, query or fragment"
        )
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _reserved(info: ValidationInfo) -> frozenset[str] | tuple[str, ...]:
    context = info.context if isinstance(info.context, dict) else {}
    reserved = context.get("reserved_names")
    return frozenset(reserved) if reserved is not None else DEFAULT_RESERVED_NAMES


def _check_name(value: str, info: ValidationInfo) -> str:
    try:
        return validate_worker_name(value, _reserved(info))
    except RoutingError as exc:
        raise ValueError(exc.message) from None


class WorkerSpec(BaseModel):
    """Everything about a worker except its name (the body of ``PUT /admin/workers/<name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: list[str] = Field(min_length=1, max_length=64)
    enabled: bool = True
    preserve_host: bool = False
    max_body_bytes: ByteCount | None = None
    upstream_timeout: Annotated[float, Field(gt=0, le=86_400)] | None = None
    max_concurrency: PositiveInt | None = None
    tags: dict[Text, Text] = Field(default_factory=dict, max_length=64)

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, value: list[str]) -> list[str]:
        return [check_upstream_url(url) for url in value]


class WorkerCreate(WorkerSpec):
    """A worker to register (the body of ``POST /admin/workers``)."""

    name: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str, info: ValidationInfo) -> str:
        return _check_name(value, info)


class Worker(WorkerCreate):
    """A registered worker as stored."""

    created_at: datetime
    updated_at: datetime

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str, info: ValidationInfo) -> str:
        # Stored rows were validated when written; a reserved list changed since must not
        # make the registry unreadable.
        return value


class CustomDomainCreate(BaseModel):
    """A custom domain to register (the body of ``POST /admin/domains``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str
    worker: str
    status: DomainStatus = DomainStatus.PENDING

    @field_validator("domain")
    @classmethod
    def _check_domain(cls, value: str) -> str:
        return _check_domain(value)

    @field_validator("worker")
    @classmethod
    def _check_worker(cls, value: str, info: ValidationInfo) -> str:
        return _check_name(value, info)


class CustomDomainPatch(BaseModel):
    """A change to a custom domain (the body of ``PATCH /admin/domains/<domain>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: DomainStatus | None = None
    worker: str | None = None

    @field_validator("worker")
    @classmethod
    def _check_worker(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _check_name(value, info)


class CustomDomain(BaseModel):
    """A registered custom domain as stored."""

    model_config = ConfigDict(frozen=True)

    domain: str
    worker: str
    status: DomainStatus
    created_at: datetime
    updated_at: datetime

    @property
    def routable(self) -> bool:
        return self.status in ROUTABLE_STATUSES


def _check_domain(value: str) -> str:
    try:
        domain = normalize_domain(value.strip())
    except InvalidHost as exc:
        raise ValueError(f"{value!r} is not a valid domain name: {exc.message}") from None
    if "." not in domain:
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return domain
