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

import idna
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dispatcher.errors import InvalidHost, RoutingError
from dispatcher.hosts import (
    DEFAULT_RESERVED_NAMES,
    is_ip_literal,
    normalize_domain,
    validate_worker_name,
)

__all__ = [
    "ROUTABLE_STATUSES",
    "UPSTREAM_URL_PATTERN",
    "CheckedDomain",
    "CustomDomain",
    "CustomDomainCreate",
    "CustomDomainPatch",
    "DomainCheck",
    "DomainRecord",
    "DomainStatus",
    "DomainVerification",
    "Worker",
    "WorkerCreate",
    "WorkerSpec",
    "check_custom_domain",
    "check_upstream_url",
    "is_canonical_upstream_url",
]


class DomainStatus(StrEnum):
    """Where a custom domain is in onboarding (README, "Custom domains: onboarding")."""

    PENDING = "pending"  # waiting for its DNS records; checked on a back-off schedule
    VERIFIED = "verified"  # the TXT record proved ownership; routes
    ACTIVE = "active"  # ownership proven (or vouched for) and pointing at the platform; routes
    MOVED = "moved"  # was active, no longer points at the platform: no routing, no certificate
    FAILED = "failed"  # not verified within domain_verify_timeout


#: Only these statuses route traffic.
ROUTABLE_STATUSES = frozenset({DomainStatus.VERIFIED, DomainStatus.ACTIVE})

# The registry's columns: INTEGER and BIGINT on both databases; text without NUL characters.
PositiveInt = Annotated[int, Field(ge=1, le=2**31 - 1)]
ByteCount = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: Requests per second: fractions allowed (0.5 = one request every two seconds).
RequestRate = Annotated[float, Field(gt=0, le=1_000_000)]
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
    return url if is_canonical_upstream_url(url) else _parse_upstream_url(url)


def is_canonical_upstream_url(url: str) -> bool:
    """True when ``url`` is already what ``check_upstream_url`` returns for it (every URL the
    store wrote is): it is valid and ``check_upstream_url`` would give it back unchanged."""
    canonical = _CANONICAL_URL.fullmatch(url)
    return canonical is not None and not url.endswith("/") and int(canonical[1] or 1) <= 65535


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
    rate_limit: RequestRate | None = None
    rate_burst: PositiveInt | None = None
    client_rate_limit: RequestRate | None = None
    tags: dict[Text, Text] = Field(default_factory=dict, max_length=64)

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, value: list[str], info: ValidationInfo) -> list[str]:
        urls = [check_upstream_url(url) for url in value]
        # Registration only (admin API, CLI): rows already stored are not judged again here;
        # the dispatcher checks every address again when it connects.
        context = info.context if isinstance(info.context, dict) else {}
        networks = context.get("upstream_networks")
        if networks is not None:
            for url in urls:
                networks.check_host(urlsplit(url).hostname or "")
        return urls

    @field_validator("rate_burst")
    @classmethod
    def _check_burst(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Fields are validated in order: rate_limit (if valid) is in info.data by now.
        if value is not None and info.data.get("rate_limit") is None:
            raise ValueError("rate_burst needs rate_limit (it is the burst of that limit)")
        return value


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
        return check_custom_domain(value)

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
    """A registered custom domain as stored.

    The onboarding columns: ``verification_token`` (the TXT value the customer publishes),
    ``status_changed_at`` (when the status last changed: the verify timeout counts from
    there), ``checked_at`` (the last check that got an answer), ``next_check_at`` (``None``:
    not scheduled, e.g. a domain an operator vouched for), ``failure_reason`` and
    ``failed_checks`` (consecutive checks without success: the back-off step of a pending
    domain, the misses of an active one).
    """

    model_config = ConfigDict(frozen=True)

    domain: str
    worker: str
    status: DomainStatus
    created_at: datetime
    updated_at: datetime
    verification_token: str | None = None
    status_changed_at: datetime | None = None
    checked_at: datetime | None = None
    next_check_at: datetime | None = None
    failure_reason: str | None = None
    failed_checks: int = 0

    @property
    def routable(self) -> bool:
        return self.status in ROUTABLE_STATUSES


class DomainVerification(BaseModel):
    """What the customer must publish for a domain, and where its checks stand."""

    model_config = ConfigDict(frozen=True)

    txt_name: str
    txt_value: str | None
    cname_target: str
    checked_at: datetime | None
    next_check_at: datetime | None
    failure_reason: str | None


class DomainRecord(BaseModel):
    """A custom domain as the admin API and the CLI show it.

    ``verification`` says what the customer must publish and where the checks stand;
    ``shadows_worker`` names the worker whose ``<name>.<base>`` subdomain this exact entry
    takes over (an operator's deliberate choice), or is ``None``.
    """

    model_config = ConfigDict(frozen=True)

    domain: str
    worker: str
    status: DomainStatus
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime | None
    verification: DomainVerification
    shadows_worker: str | None = None


class DomainCheck(BaseModel):
    """The outcome of one check: ``result`` (the metric label: ``active``, ``verified``,
    ``txt_missing``, ``txt_mismatch``, ``nxdomain``, ``not_pointed``, ``cname_loop``,
    ``timeout``, ``servfail``, ``error``), the ``reason`` when not a success, and the status
    before and after."""

    model_config = ConfigDict(frozen=True)

    result: str
    reason: str | None
    previous_status: DomainStatus
    status: DomainStatus


class CheckedDomain(DomainRecord):
    """The answer of ``POST /admin/domains/<domain>/verify``: the domain after the check."""

    check: DomainCheck


def _check_domain(value: str) -> str:
    try:
        domain = normalize_domain(value.strip())
    except InvalidHost as exc:
        raise ValueError(f"{value!r} is not a valid domain name: {exc.message}") from None
    if "." not in domain:
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return domain


def check_custom_domain(value: str) -> str:
    """A name a customer may onboard, in its stored form (lowercase IDNA ASCII, no dot at
    the end), or ``ValueError`` saying why not.

    Refused: IP literals (nothing to verify, and they are control hosts), wildcards, names
    longer than DNS allows (253 characters, 63 per label), labels that are not host-name
    labels (``_service`` labels and all-numeric top-level labels included) and malformed
    A-labels (``xn--`` that do not decode).
    """
    text = value.strip()
    if "*" in text:
        raise ValueError(f"{_shown(text)}: wildcard domains cannot be registered")
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if is_ip_literal(candidate):
        raise ValueError(f"{_shown(text)} is an IP address, not a domain name")
    domain = _check_domain(text)
    labels = domain.split(".")
    if any(label.startswith("_") for label in labels):
        raise ValueError(f"{_shown(text)} is not a host name (a label starts with '_')")
    if labels[-1].isdigit():
        raise ValueError(f"{_shown(text)} is not a host name (all-numeric top-level label)")
    for label in labels:
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                raise ValueError(
                    f"{_shown(text)} is not a valid internationalised domain name"
                ) from None
    return domain


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")
