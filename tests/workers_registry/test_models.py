"""Registry models (``workers_registry.models``): README, "Registering workers and domains".

The models are the shapes the admin API, the CLI and the store share; names go through the one
validator in ``dispatcher.hosts`` with the operator's reserved list from the validation context.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from workers_registry.models import (
    ROUTABLE_STATUSES,
    CustomDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    DomainStatus,
    Worker,
    WorkerCreate,
    WorkerSpec,
    _parse_upstream_url,
    check_upstream_url,
)

CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
UPDATED = datetime(2024, 5, 2, 8, 30, tzinfo=UTC)
UPSTREAM = "http://10.0.0.5:8080"


def make_worker(**changes: Any) -> Worker:
    fields: dict[str, Any] = {
        "name": "shop",
        "upstreams": [UPSTREAM],
        "created_at": CREATED,
        "updated_at": UPDATED,
    }
    fields.update(changes)
    return Worker(**fields)


# --- Worker ---------------------------------------------------------------------------------


def test_worker_defaults_match_the_admin_api_body() -> None:
    worker = make_worker()
    assert worker.model_dump(mode="json") == {
        "name": "shop",
        "upstreams": [UPSTREAM],
        "enabled": True,
        "preserve_host": False,
        "max_body_bytes": None,
        "upstream_timeout": None,
        "max_concurrency": None,
        "rate_limit": None,
        "rate_burst": None,
        "client_rate_limit": None,
        "tags": {},
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-02T08:30:00Z",
    }


def test_worker_round_trips_through_json() -> None:
    worker = make_worker(
        upstreams=["http://a.internal:1", "https://b.internal/base"],
        enabled=False,
        preserve_host=True,
        max_body_bytes=1024,
        upstream_timeout=2.5,
        max_concurrency=4,
        tags={"team": "payments"},
    )
    assert Worker.model_validate(worker.model_dump(mode="json")) == worker
    assert Worker.model_validate_json(worker.model_dump_json()) == worker


def test_stored_worker_with_a_now_reserved_name_stays_readable() -> None:
    worker = Worker.model_validate(
        {"name": "internal", "upstreams": [UPSTREAM], "created_at": CREATED, "updated_at": CREATED},
        context={"reserved_names": ["internal"]},
    )
    assert worker.name == "internal"


def test_worker_requires_timestamps() -> None:
    with pytest.raises(ValidationError) as caught:
        Worker(name="shop", upstreams=[UPSTREAM])  # type: ignore[call-arg]
    assert {error["loc"][0] for error in caught.value.errors()} == {"created_at", "updated_at"}


def test_worker_is_immutable() -> None:
    worker = make_worker()
    with pytest.raises(ValidationError):
        worker.enabled = False  # type: ignore[misc]


# --- WorkerCreate and WorkerSpec ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("shop", "shop", id="lowercase"),
        pytest.param("Shop", "shop", id="lowercased"),
        pytest.param("my-shop-2", "my-shop-2", id="hyphens-digits"),
        pytest.param("a" * 63, "a" * 63, id="63-chars"),
    ],
)
def test_worker_create_canonicalises_valid_names(name: str, expected: str) -> None:
    assert WorkerCreate(name=name, upstreams=[UPSTREAM]).name == expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("-shop", id="leading-hyphen"),
        pytest.param("shop-", id="trailing-hyphen"),
        pytest.param("my_shop", id="underscore"),
        pytest.param("my.shop", id="dot"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("bücher", id="non-ascii"),
        pytest.param("www", id="reserved-www"),
        pytest.param("Admin", id="reserved-mixed-case"),
    ],
)
def test_worker_create_rejects_invalid_and_reserved_names(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerCreate(name=name, upstreams=[UPSTREAM])
    assert caught.value.errors()[0]["loc"] == ("name",)


def test_worker_create_uses_the_reserved_list_from_the_context() -> None:
    context = {"reserved_names": ["internal"]}
    body = {"upstreams": [UPSTREAM]}
    assert WorkerCreate.model_validate({**body, "name": "www"}, context=context).name == "www"
    with pytest.raises(ValidationError):
        WorkerCreate.model_validate({**body, "name": "Internal"}, context=context)


def test_worker_create_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerCreate(name="shop", upstreams=[UPSTREAM], upstream=UPSTREAM)  # type: ignore[call-arg]
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("upstreams", [], id="no-upstreams"),
        pytest.param("upstreams", [UPSTREAM] * 65, id="65-upstreams"),
        pytest.param("max_body_bytes", -1, id="negative-body-limit"),
        pytest.param("upstream_timeout", 0, id="zero-timeout"),
        pytest.param("upstream_timeout", 86_401, id="timeout-over-a-day"),
        pytest.param("max_concurrency", 0, id="zero-concurrency"),
        pytest.param("rate_limit", 0, id="zero-rate"),
        pytest.param("rate_limit", -1.5, id="negative-rate"),
        pytest.param("rate_limit", 1_000_001, id="rate-past-a-million"),
        pytest.param("client_rate_limit", 0, id="zero-client-rate"),
        pytest.param("rate_burst", 0, id="zero-burst"),
        pytest.param("tags", {"team": 1}, id="non-string-tag"),
        pytest.param("enabled", "maybe", id="enabled-not-bool"),
    ],
)
def test_worker_spec_rejects_out_of_range_values(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec.model_validate({"upstreams": [UPSTREAM], field: value})
    assert caught.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("max_body_bytes", 0, id="zero-body-limit"),
        pytest.param("upstream_timeout", 86_400, id="timeout-one-day"),
        pytest.param("upstream_timeout", 0.25, id="fractional-timeout"),
        pytest.param("max_concurrency", 1, id="concurrency-one"),
        pytest.param("rate_limit", 0.5, id="fractional-rate"),
        pytest.param("client_rate_limit", 1_000_000, id="client-rate-a-million"),
        pytest.param("upstreams", [UPSTREAM] * 64, id="64-upstreams"),
    ],
)
def test_worker_spec_accepts_limit_edges(field: str, value: Any) -> None:
    spec = WorkerSpec.model_validate({"upstreams": [UPSTREAM], field: value})
    assert getattr(spec, field) == value


def test_rate_burst_belongs_to_a_rate_limit() -> None:
    with pytest.raises(ValidationError, match="rate_burst needs rate_limit"):
        WorkerSpec.model_validate({"upstreams": [UPSTREAM], "rate_burst": 5})
    spec = WorkerSpec.model_validate({"upstreams": [UPSTREAM], "rate_limit": 2, "rate_burst": 5})
    assert (spec.rate_limit, spec.rate_burst) == (2, 5)


def test_worker_spec_canonicalises_every_upstream_in_order() -> None:
    spec = WorkerSpec(upstreams=["http://b.internal:80/", "HTTPS://A.internal/x/"])
    assert spec.upstreams == ["http://b.internal:80", "https://a.internal/x"]


# --- upstream URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://10.0.0.5:8080", "http://10.0.0.5:8080", id="ip-and-port"),
        pytest.param("http://10.0.0.5:8080/", "http://10.0.0.5:8080", id="trailing-slash"),
        pytest.param("https://api.internal", "https://api.internal", id="https-no-port"),
        pytest.param("HTTP://API.Internal", "http://api.internal", id="lowercased"),
        pytest.param("https://a.internal/base/", "https://a.internal/base", id="base-path"),
        pytest.param("http://[::1]:9000", "http://[::1]:9000", id="ipv6"),
        pytest.param("  http://a.internal  ", "http://a.internal", id="whitespace"),
        pytest.param("http://my_app:8000/api", "http://my_app:8000/api", id="underscore-host"),
        pytest.param("http://a.internal:18080", "http://a.internal:18080", id="five-digit-port"),
        pytest.param("http://a/v1;x=1/@me/*", "http://a/v1;x=1/@me/*", id="rfc3986-pchars"),
    ],
)
def test_check_upstream_url_returns_the_canonical_form(url: str, expected: str) -> None:
    assert check_upstream_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://a.internal", id="ftp"),
        pytest.param("ws://a.internal", id="websocket-scheme"),
        pytest.param("a.internal:8080", id="no-scheme"),
        pytest.param("http://", id="no-host"),
        pytest.param("http://user:pw@a.internal", id="credentials"),
        pytest.param("http://user@a.internal", id="username"),
        pytest.param("http://a.internal/?x=1", id="query"),
        pytest.param("http://a.internal/#top", id="fragment"),
        pytest.param("http://a.internal:0", id="port-zero"),
        pytest.param("http://a.internal:99999", id="port-out-of-range"),
        pytest.param("http://a.internal:http", id="port-not-numeric"),
        pytest.param("", id="empty"),
        # Outside the published pattern (the request line could not carry them as given).
        pytest.param("http://a b.internal", id="space-in-host"),
        pytest.param("http://a.internal/caf\u00e9", id="non-ascii-path"),
        pytest.param("http://a.internal/a b", id="space-in-path"),
        pytest.param('http://a.internal/"x"', id="quote-in-path"),
    ],
)
def test_check_upstream_url_rejects_unusable_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"http|URL|port|host|query|credentials"):
        check_upstream_url(url)


@given(
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?(?:\.[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.none() | st.integers(min_value=1, max_value=65535),
    st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), max_size=3),
)
def test_check_upstream_url_is_idempotent(
    scheme: str, host: str, port: int | None, path: list[str]
) -> None:
    url = f"{scheme}://{host}" + (f":{port}" if port else "") + "".join(f"/{p}" for p in path)
    canonical = check_upstream_url(url + "/")
    assert canonical == url
    assert check_upstream_url(canonical) == canonical


# --- custom domains -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "routable"),
    [
        pytest.param("pending", False, id="pending"),
        pytest.param("verified", True, id="verified"),
        pytest.param("active", True, id="active"),
        pytest.param("moved", False, id="moved"),
        pytest.param("failed", False, id="failed"),
    ],
)
def test_only_verified_and_active_domains_route(status: str, routable: bool) -> None:
    domain = CustomDomain(
        domain="shop.example.org",
        worker="shop",
        status=DomainStatus(status),
        created_at=CREATED,
        updated_at=UPDATED,
    )
    assert domain.routable is routable
    assert (DomainStatus(status) in ROUTABLE_STATUSES) is routable


def test_domain_statuses_are_the_five_of_the_design() -> None:
    assert {status.value for status in DomainStatus} == {
        "pending",
        "verified",
        "active",
        "moved",
        "failed",
    }


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        pytest.param("shop.example.org", "shop.example.org", id="plain"),
        pytest.param("Shop.Example.ORG", "shop.example.org", id="lowercased"),
        pytest.param("shop.example.org.", "shop.example.org", id="trailing-dot"),
        pytest.param(" shop.example.org ", "shop.example.org", id="whitespace"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="idna-ascii"),
    ],
)
def test_custom_domain_create_normalises_the_domain(domain: str, expected: str) -> None:
    assert CustomDomainCreate(domain=domain, worker="shop").domain == expected


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("localhost", id="single-label"),
        pytest.param("", id="empty"),
        pytest.param("shop example.org", id="space"),
        pytest.param("shop.example.org:443", id="port"),
        pytest.param("https://shop.example.org", id="url"),
        pytest.param("a..example", id="empty-label"),
    ],
)
def test_custom_domain_create_rejects_non_domains(domain: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CustomDomainCreate(domain=domain, worker="shop")
    assert caught.value.errors()[0]["loc"] == ("domain",)


def test_custom_domain_create_defaults_to_pending() -> None:
    assert CustomDomainCreate(domain="shop.example.org", worker="shop").status is (
        DomainStatus.PENDING
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"worker": "-bad"}, "worker", id="invalid-worker"),
        pytest.param({"worker": "www"}, "worker", id="reserved-worker"),
        pytest.param({"status": "live"}, "status", id="unknown-status"),
        pytest.param({"owner": "x"}, "owner", id="unknown-field"),
    ],
)
def test_custom_domain_create_rejects_bad_fields(changes: dict[str, Any], field: str) -> None:
    body = {"domain": "shop.example.org", "worker": "shop", **changes}
    with pytest.raises(ValidationError) as caught:
        CustomDomainCreate.model_validate(body)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_custom_domain_create_canonicalises_the_worker() -> None:
    body = CustomDomainCreate(domain="shop.example.org", worker="Shop", status=DomainStatus.ACTIVE)
    assert body.worker == "shop"
    assert body.status is DomainStatus.ACTIVE


@pytest.mark.parametrize(
    ("body", "status", "worker"),
    [
        pytest.param({}, None, None, id="empty"),
        pytest.param({"status": "active"}, DomainStatus.ACTIVE, None, id="status-only"),
        pytest.param({"worker": "Blog"}, None, "blog", id="worker-only"),
        pytest.param(
            {"status": "failed", "worker": "blog"}, DomainStatus.FAILED, "blog", id="both"
        ),
    ],
)
def test_custom_domain_patch_changes_status_and_or_worker(
    body: dict[str, Any], status: DomainStatus | None, worker: str | None
) -> None:
    patch = CustomDomainPatch.model_validate(body)
    assert (patch.status, patch.worker) == (status, worker)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"worker": "bad_name"}, id="invalid-worker"),
        pytest.param({"worker": "admin"}, id="reserved-worker"),
        pytest.param({"status": "enabled"}, id="unknown-status"),
        pytest.param({"domain": "x.example"}, id="domain-cannot-change"),
    ],
)
def test_custom_domain_patch_rejects_bad_fields(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CustomDomainPatch.model_validate(body)


@settings(max_examples=300)
@given(
    url=st.one_of(
        st.from_regex(  # mostly canonical already
            r"\Ahttps?://[a-z0-9_](?:[a-z0-9_.-]{0,20}[a-z0-9_])?"
            r"(?::[0-9]{1,6})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,8}){0,3}/?\Z"
        ),
        st.from_regex(
            r"\A[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,20}[A-Za-z0-9_])?"
            r"(?::[0-9]{1,6})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,8}){0,3}/?\Z"
        ),
    )
)
@example(url="http://a:65536")
@example(url="http://a:65535/")
@example(url="http://a:0")
@example(url="http://a:080")
def test_the_canonical_url_shortcut_agrees_with_the_parse(url: str) -> None:
    # Stored URLs take a one-regex shortcut; it must give what the full parse gives, and
    # refuse nothing the parse accepts.
    try:
        expected: str | None = _parse_upstream_url(url)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            check_upstream_url(url)
    else:
        assert check_upstream_url(url) == expected
        assert check_upstream_url(expected) == expected
