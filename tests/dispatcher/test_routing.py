"""Request routing (``dispatcher.routing``): README, "How a request is routed".

``resolve`` is pure: every case here is a table of (host, path, query, custom-domain answer)
against one ``RoutingTable`` built from ``WorkerEntry`` records (what a registry load gives).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from dispatcher.errors import (
    DomainNotFound,
    InvalidRequest,
    InvalidWorkerName,
    MissingWorker,
    RegistryUnavailable,
    ReservedWorkerName,
    RoutingError,
    WorkerNotFound,
)
from dispatcher.hosts import DEFAULT_RESERVED_NAMES, normalize_host
from dispatcher.routing import (
    CONTROL,
    UNAVAILABLE,
    DomainAnswer,
    Route,
    RouteKind,
    RoutingTable,
    resolve,
    resolve_control,
    resolve_tenant,
)
from workers_registry.entries import WorkerEntry
from workers_registry.models import CustomDomain, DomainStatus

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_worker(name: str, *, enabled: bool = True) -> WorkerEntry:
    return WorkerEntry(name, (f"http://127.0.0.1:9000/{name}",), enabled=enabled)


def make_domain(domain: str, worker: str, status: str = "active") -> CustomDomain:
    return CustomDomain(
        domain=domain,
        worker=worker,
        status=DomainStatus(status),
        created_at=NOW,
        updated_at=NOW,
    )


WORKERS = {
    name: make_worker(name)
    for name in ("shop", "blog", "marketing", "a1", "my-app", "apps", "9lives")
}
WORKERS["old"] = make_worker("old", enabled=False)

TABLE = RoutingTable.build(
    base_domains=["example.com", "apps.example.net", "example.net"],
    control_hosts=["ops.example.org", "dispatcher.internal"],
    reserved=DEFAULT_RESERVED_NAMES,
    workers=WORKERS.values(),
)


def route(
    worker: str, kind: RouteKind, path: bytes = b"/", query: bytes = b"", prefix: str = ""
) -> Route:
    return Route(WORKERS[worker], kind, path, query, prefix)


# --- RoutingTable.build ---------------------------------------------------------------------


def test_build_makes_localhost_and_base_apexes_control_hosts() -> None:
    table = RoutingTable.build(base_domains=["example.com"], control_hosts=["ops.example.org"])
    assert table.control_hosts == {"localhost", "example.com", "ops.example.org"}


def test_build_indexes_workers_by_name_and_copies_reserved() -> None:
    table = RoutingTable.build(
        base_domains=["example.com"], reserved=["www"], workers=[WORKERS["shop"]]
    )
    assert dict(table.workers) == {"shop": WORKERS["shop"]}
    assert table.reserved == {"www"}


def test_build_orders_base_domains_longest_first() -> None:
    table = RoutingTable.build(base_domains=["example.com", "apps.example.com", "example.com"])
    assert table.base_domains == ("apps.example.com", "example.com")


# --- control hosts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("localhost", id="localhost"),
        pytest.param("127.0.0.1", id="ipv4-loopback"),
        pytest.param("10.1.2.3", id="ipv4-private"),
        pytest.param("203.0.113.9", id="ipv4-public"),
        pytest.param("[::1]", id="ipv6-loopback"),
        pytest.param("[2001:db8::1]", id="ipv6-global"),
        pytest.param("example.com", id="base-apex"),
        pytest.param("apps.example.net", id="nested-base-apex"),
        pytest.param("example.net", id="second-base-apex"),
        pytest.param("ops.example.org", id="configured-control-host"),
        pytest.param("dispatcher.internal", id="second-configured-control-host"),
    ],
)
@pytest.mark.parametrize("path", [b"/", b"/health", b"/admin/workers", b"/docs", b"/shop"])
def test_control_hosts_go_to_the_control_plane(host: str, path: bytes) -> None:
    assert resolve(host, path, b"", TABLE) is CONTROL


def test_localhost_is_a_control_host_even_when_not_a_base_domain() -> None:
    table = RoutingTable.build(base_domains=["example.com"], workers=WORKERS.values())
    assert resolve("localhost", b"/", b"", table) is CONTROL


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param(make_domain("example.com", "shop"), id="active-custom-domain"),
        pytest.param(UNAVAILABLE, id="registry-unavailable"),
        pytest.param(None, id="no-custom-domain"),
    ],
)
def test_control_host_ignores_the_custom_domain_answer(domain: DomainAnswer) -> None:
    assert resolve("example.com", b"/health", b"", TABLE, domain) is CONTROL


def test_default_base_domain_localhost_routes_worker_subdomains() -> None:
    table = RoutingTable.build(
        base_domains=["localhost"], reserved=DEFAULT_RESERVED_NAMES, workers=WORKERS.values()
    )
    assert resolve("shop.localhost", b"/", b"", table) == route("shop", RouteKind.SUBDOMAIN)
    assert resolve("localhost", b"/", b"", table) is CONTROL


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1", "[::1]", "example.com", "ops.example.org"]
)
def test_path_and_query_routes_work_on_every_control_host(host: str) -> None:
    assert resolve(host, b"/dispatch/shop/x", b"", TABLE) == route(
        "shop", RouteKind.PATH, b"/x", b"", "/dispatch/shop"
    )
    assert resolve(host, b"/dispatch", b"worker=shop", TABLE) == route(
        "shop", RouteKind.QUERY, b"/", b"", "/dispatch"
    )


# --- subdomain routes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "worker"),
    [
        pytest.param("shop.example.com", "shop", id="under-first-base"),
        pytest.param("blog.example.net", "blog", id="under-second-base"),
        pytest.param("blog.apps.example.net", "blog", id="under-nested-base"),
        pytest.param("apps.example.net", None, id="nested-apex-is-control-not-worker-apps"),
        pytest.param("my-app.example.com", "my-app", id="hyphenated-name"),
        pytest.param("9lives.example.com", "9lives", id="leading-digit"),
    ],
)
def test_one_label_under_a_base_domain_routes_to_that_worker(host: str, worker: str | None) -> None:
    result = resolve(host, b"/", b"", TABLE)
    if worker is None:
        assert result is CONTROL
    else:
        assert result == route(worker, RouteKind.SUBDOMAIN)


def test_longest_base_domain_wins_over_a_shorter_one() -> None:
    table = RoutingTable.build(
        base_domains=["example.com", "apps.example.com"], workers=WORKERS.values()
    )
    result = resolve("shop.apps.example.com", b"/", b"", table)
    assert result == route("shop", RouteKind.SUBDOMAIN)


@pytest.mark.parametrize(
    ("host", "error"),
    [
        pytest.param("www.example.com", ReservedWorkerName, id="reserved-www"),
        pytest.param("api.example.net", ReservedWorkerName, id="reserved-api"),
        pytest.param("health.example.com", ReservedWorkerName, id="reserved-health"),
        pytest.param("_acme-challenge.example.com", InvalidWorkerName, id="underscore-label"),
        pytest.param("nope.example.com", WorkerNotFound, id="unknown-worker"),
        pytest.param("old.example.com", WorkerNotFound, id="disabled-worker"),
        pytest.param("a.shop.example.com", DomainNotFound, id="two-labels-under-base"),
        pytest.param("shopexample.com", DomainNotFound, id="suffix-without-dot"),
        pytest.param("shop.example.com.evil.org", DomainNotFound, id="base-not-at-the-end"),
        pytest.param("shop.example.org", DomainNotFound, id="unrelated-domain"),
        pytest.param("shop.localhost", DomainNotFound, id="localhost-is-not-a-base-here"),
        pytest.param("x.ops.example.org", DomainNotFound, id="under-control-host"),
    ],
)
def test_tenant_host_errors(host: str, error: type[RoutingError]) -> None:
    with pytest.raises(error):
        resolve(host, b"/", b"", TABLE)


def test_disabled_worker_is_not_found_not_forbidden() -> None:
    with pytest.raises(WorkerNotFound) as caught:
        resolve("old.example.com", b"/", b"", TABLE)
    assert caught.value.status == 404
    assert caught.value.code == "worker_not_found"


# --- custom domains -------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["active", "verified"])
@pytest.mark.parametrize(
    ("host", "worker"),
    [
        pytest.param("shop.example.org", "shop", id="own-domain"),
        pytest.param("www.example.com", "marketing", id="exact-entry-beats-reserved-wildcard"),
        pytest.param("blog.example.com", "marketing", id="exact-entry-beats-existing-worker"),
        pytest.param("deep.sub.example.com", "blog", id="several-labels-under-base"),
    ],
)
def test_routable_custom_domain_routes_to_its_worker(host: str, worker: str, status: str) -> None:
    domain = make_domain(host, worker, status)
    result = resolve(host, b"/cart", b"id=1", TABLE, domain)
    assert result == route(worker, RouteKind.CUSTOM_DOMAIN, b"/cart", b"id=1")


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_pending_or_failed_custom_domain_does_not_route(status: str) -> None:
    domain = make_domain("shop.example.org", "shop", status)
    with pytest.raises(DomainNotFound):
        resolve("shop.example.org", b"/", b"", TABLE, domain)


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_non_routable_exact_entry_falls_back_to_the_wildcard(status: str) -> None:
    domain = make_domain("blog.example.com", "marketing", status)
    assert resolve("blog.example.com", b"/", b"", TABLE, domain) == route(
        "blog", RouteKind.SUBDOMAIN
    )


@pytest.mark.parametrize(
    "worker",
    [pytest.param("old", id="disabled-worker"), pytest.param("gone", id="unknown-worker")],
)
def test_custom_domain_of_a_missing_or_disabled_worker_is_worker_not_found(worker: str) -> None:
    domain = make_domain("shop.example.org", worker)
    with pytest.raises(WorkerNotFound):
        resolve("shop.example.org", b"/", b"", TABLE, domain)


def test_unknown_domain_is_domain_not_found_with_status_404() -> None:
    with pytest.raises(DomainNotFound) as caught:
        resolve("unknown.example.org", b"/", b"", TABLE, None)
    assert caught.value.status == 404


# --- registry unavailable -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("shop.example.org", id="custom-domain-host"),
        pytest.param("a.b.example.com", id="two-labels-under-base"),
    ],
)
def test_unavailable_registry_is_503_for_hosts_only_it_could_answer(host: str) -> None:
    with pytest.raises(RegistryUnavailable) as caught:
        resolve(host, b"/", b"", TABLE, UNAVAILABLE)
    assert caught.value.status == 503
    assert caught.value.code == "registry_unavailable"


def test_unavailable_registry_still_routes_subdomains_from_the_snapshot() -> None:
    result = resolve("shop.example.com", b"/a", b"b=1", TABLE, UNAVAILABLE)
    assert result == route("shop", RouteKind.SUBDOMAIN, b"/a", b"b=1")


# --- a tenant host owns every path ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query"),
    [
        pytest.param(b"/", b"", id="root"),
        pytest.param(b"/health", b"", id="health"),
        pytest.param(b"/health/detailed", b"", id="health-detailed"),
        pytest.param(b"/docs", b"", id="docs"),
        pytest.param(b"/openapi.json", b"", id="openapi"),
        pytest.param(b"/metrics", b"", id="metrics"),
        pytest.param(b"/admin/workers", b"", id="admin"),
        pytest.param(b"/tls/ask", b"domain=x.example", id="tls-ask"),
        pytest.param(b"/dispatch/blog/x", b"", id="path-route-prefix"),
        pytest.param(b"/api/dispatch", b"worker=blog", id="query-route-prefix"),
        pytest.param(b"/a%2Fb/.c/..d", b"x=%zz&&y", id="raw-bytes-untouched"),
    ],
)
@pytest.mark.parametrize(
    ("host", "domain", "kind"),
    [
        pytest.param("shop.example.com", None, RouteKind.SUBDOMAIN, id="subdomain"),
        pytest.param(
            "shop.example.org",
            make_domain("shop.example.org", "shop"),
            RouteKind.CUSTOM_DOMAIN,
            id="custom-domain",
        ),
    ],
)
def test_tenant_host_owns_every_path(
    host: str, domain: DomainAnswer, kind: RouteKind, path: bytes, query: bytes
) -> None:
    assert resolve(host, path, query, TABLE, domain) == route("shop", kind, path, query)


def test_tenant_route_with_empty_path_sends_slash() -> None:
    assert resolve_tenant("shop.example.com", b"", b"", TABLE, None) == route(
        "shop", RouteKind.SUBDOMAIN
    )


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "OPTIONS"])
def test_tenant_route_does_not_depend_on_the_method(method: str) -> None:
    assert resolve("shop.example.com", b"/dispatch", b"", TABLE, method=method) == route(
        "shop", RouteKind.SUBDOMAIN, b"/dispatch"
    )


# --- path routes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        pytest.param(
            b"/dispatch/shop",
            b"",
            route("shop", RouteKind.PATH, b"/", b"", "/dispatch/shop"),
            id="no-rest-is-slash",
        ),
        pytest.param(
            b"/dispatch/shop/",
            b"",
            route("shop", RouteKind.PATH, b"/", b"", "/dispatch/shop"),
            id="trailing-slash",
        ),
        pytest.param(
            b"/dispatch/shop/cart/items",
            b"",
            route("shop", RouteKind.PATH, b"/cart/items", b"", "/dispatch/shop"),
            id="rest-of-path",
        ),
        pytest.param(
            b"/dispatch/shop/a%2Fb",
            b"",
            route("shop", RouteKind.PATH, b"/a%2Fb", b"", "/dispatch/shop"),
            id="encoded-slash-stays-encoded",
        ),
        pytest.param(
            b"/dispatch/shop/x%20y/%E2%9C%93",
            b"",
            route("shop", RouteKind.PATH, b"/x%20y/%E2%9C%93", b"", "/dispatch/shop"),
            id="percent-escapes-stay-raw",
        ),
        pytest.param(
            b"/dispatch/shop//double",
            b"",
            route("shop", RouteKind.PATH, b"//double", b"", "/dispatch/shop"),
            id="double-slash-kept",
        ),
        pytest.param(
            b"/dispatch/shop/a/",
            b"",
            route("shop", RouteKind.PATH, b"/a/", b"", "/dispatch/shop"),
            id="trailing-slash-of-rest-kept",
        ),
        pytest.param(
            b"/dispatch/%73hop/x",
            b"",
            route("shop", RouteKind.PATH, b"/x", b"", "/dispatch/shop"),
            id="worker-segment-decoded",
        ),
        pytest.param(
            b"/dispatch/SHOP/x",
            b"",
            route("shop", RouteKind.PATH, b"/x", b"", "/dispatch/shop"),
            id="worker-segment-lowercased",
        ),
        pytest.param(
            b"/dispatch/shop/.well-known/x",
            b"",
            route("shop", RouteKind.PATH, b"/.well-known/x", b"", "/dispatch/shop"),
            id="dot-file-is-not-a-dot-segment",
        ),
        pytest.param(
            b"/api/dispatch/blog/posts",
            b"",
            route("blog", RouteKind.PATH, b"/posts", b"", "/api/dispatch/blog"),
            id="api-prefix",
        ),
        pytest.param(
            b"/dispatch/shop/search",
            b"q=a%26b&worker=blog&&x",
            route("shop", RouteKind.PATH, b"/search", b"q=a%26b&worker=blog&&x", "/dispatch/shop"),
            id="raw-query-kept-whole",
        ),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_path_route_sends_the_raw_rest_of_the_path(
    path: bytes, query: bytes, expected: Route, method: str
) -> None:
    assert resolve("localhost", path, query, TABLE, method=method) == expected


@pytest.mark.parametrize(
    ("path", "error"),
    [
        pytest.param(b"/dispatch//x", InvalidWorkerName, id="empty-worker-segment"),
        pytest.param(b"/dispatch/-shop/", InvalidWorkerName, id="invalid-name"),
        pytest.param(b"/dispatch/sh%2Fop/x", InvalidWorkerName, id="encoded-slash-in-name"),
        pytest.param(b"/dispatch/%FF/x", InvalidWorkerName, id="name-not-utf8"),
        pytest.param(b"/dispatch/b%C3%BCcher/", InvalidWorkerName, id="name-non-ascii"),
        pytest.param(b"/dispatch/www/x", ReservedWorkerName, id="reserved-name"),
        pytest.param(b"/api/dispatch/admin", ReservedWorkerName, id="reserved-under-api"),
        pytest.param(b"/dispatch/nope/x", WorkerNotFound, id="unknown-worker"),
        pytest.param(b"/dispatch/old/", WorkerNotFound, id="disabled-worker"),
        pytest.param(b"/dispatch/shop/../admin", InvalidRequest, id="dot-dot-segment"),
        pytest.param(b"/dispatch/shop/%2e%2E/admin", InvalidRequest, id="encoded-dot-dot"),
        pytest.param(b"/dispatch/shop/./x", InvalidRequest, id="dot-segment"),
    ],
)
def test_path_route_errors(path: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve("localhost", path, b"", TABLE)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"/dispatcher", id="longer-word"),
        pytest.param(b"/dispatch-docs/shop", id="hyphen-after-prefix"),
        pytest.param(b"/dispatch.json", id="dot-after-prefix"),
        pytest.param(b"/api/dispatcher/shop", id="api-longer-word"),
        pytest.param(b"/api", id="api-alone"),
        pytest.param(b"/x/dispatch/shop", id="prefix-not-at-start"),
    ],
)
def test_paths_that_only_look_like_dispatch_stay_on_the_control_plane(path: bytes) -> None:
    assert resolve("localhost", path, b"worker=shop", TABLE) is CONTROL


# --- query routes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "worker", "kept"),
    [
        pytest.param(b"/dispatch", b"worker=shop", "shop", b"", id="only-worker"),
        pytest.param(b"/dispatch/", b"worker=shop", "shop", b"", id="trailing-slash"),
        pytest.param(b"/dispatch", b"a=1&worker=shop&b=2", "shop", b"a=1&b=2", id="middle"),
        pytest.param(b"/dispatch", b"b=2&a=1&worker=shop", "shop", b"b=2&a=1", id="order-kept"),
        pytest.param(
            b"/dispatch",
            b"worker=shop&worker=blog",
            "shop",
            b"",
            id="first-worker-wins-all-removed",
        ),
        pytest.param(
            b"/dispatch", b"wor%6Ber=shop&x=%41", "shop", b"x=%41", id="encoded-name-decoded"
        ),
        pytest.param(b"/dispatch", b"worker=%73hop", "shop", b"", id="encoded-value-decoded"),
        pytest.param(b"/dispatch", b"worker=SHOP", "shop", b"", id="value-lowercased"),
        pytest.param(
            b"/dispatch",
            b"workers=1&worker=blog&xworker=2&WORKER=3&worker%20=4&worke=5",
            "blog",
            b"workers=1&xworker=2&WORKER=3&worker%20=4&worke=5",
            id="near-miss-names-kept",
        ),
        pytest.param(
            b"/dispatch",
            b"a+b=c+d&q=%zz&worker=shop&e=%E2%9C%93&f",
            "shop",
            b"a+b=c+d&q=%zz&e=%E2%9C%93&f",
            id="other-params-byte-for-byte",
        ),
        pytest.param(b"/dispatch", b"a=1&&worker=shop&", "shop", b"a=1&&", id="empty-parts-kept"),
        pytest.param(b"/api/dispatch", b"worker=blog&p=1", "blog", b"p=1", id="api-prefix"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_query_route_removes_worker_params_and_keeps_the_rest(
    path: bytes, query: bytes, worker: str, kept: bytes, method: str
) -> None:
    prefix = "/api/dispatch" if path.startswith(b"/api") else "/dispatch"
    result = resolve("localhost", path, query, TABLE, method=method)
    assert result == route(worker, RouteKind.QUERY, b"/", kept, prefix)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("path", "query"),
    [
        pytest.param(b"/dispatch", b"", id="no-query"),
        pytest.param(b"/dispatch/", b"", id="trailing-slash"),
        pytest.param(b"/api/dispatch", b"", id="api"),
        pytest.param(b"/dispatch", b"page=2&workers=3", id="other-params-only"),
    ],
)
def test_dispatch_without_worker_param_is_the_namespace_info(
    path: bytes, query: bytes, method: str
) -> None:
    assert resolve("localhost", path, query, TABLE, method=method) is CONTROL


@pytest.mark.parametrize(
    ("query", "method", "error"),
    [
        pytest.param(b"worker=", "GET", MissingWorker, id="empty-value"),
        pytest.param(b"worker", "GET", MissingWorker, id="no-equals"),
        pytest.param(b"a=1&worker=&b=2", "POST", MissingWorker, id="empty-among-others"),
        pytest.param(b"worker=&worker=shop", "GET", MissingWorker, id="first-one-is-empty"),
        pytest.param(b"", "POST", MissingWorker, id="post-without-worker"),
        pytest.param(b"worker=www", "GET", ReservedWorkerName, id="reserved"),
        pytest.param(b"worker=bad_name", "GET", InvalidWorkerName, id="invalid"),
        pytest.param(b"worker=%FF", "GET", InvalidWorkerName, id="not-utf8"),
        pytest.param(b"worker=+shop", "GET", InvalidWorkerName, id="plus-is-space"),
        pytest.param(b"worker=nope", "GET", WorkerNotFound, id="unknown"),
        pytest.param(b"worker=old", "GET", WorkerNotFound, id="disabled"),
    ],
)
def test_query_route_errors(query: bytes, method: str, error: type[RoutingError]) -> None:
    with pytest.raises(error):
        resolve("localhost", b"/dispatch", query, TABLE, method=method)


def test_missing_worker_is_400_missing_worker() -> None:
    with pytest.raises(MissingWorker) as caught:
        resolve_control(b"/dispatch", b"worker=", TABLE)
    assert caught.value.status == 400
    assert caught.value.code == "missing_worker"


# --- properties -----------------------------------------------------------------------------

# Encodings of the name "worker" (removed) and names that only look like it (kept).
WORKER_KEYS = [b"worker", b"wor%6Ber", b"%77%6f%72%6b%65%72", b"%77orker"]
NEAR_MISS_KEYS = [
    b"workers",
    b"xworker",
    b"WORKER",
    b"Worker",
    b"worker%20",
    b"wor+ker",
    b"worke",
    b"",
    b"%zz",
    b"\xffworker",
    b"worker%00",
]
SHOP_VALUES = [b"shop", b"%73hop", b"SHOP", b"sh%6Fp", b"%53%48%4F%50"]

no_amp = st.binary(max_size=12).filter(lambda b: b"&" not in b)
no_amp_eq = no_amp.filter(lambda b: b"=" not in b)


@st.composite
def kept_params(draw: st.DrawFn) -> bytes:
    key = draw(st.sampled_from(NEAR_MISS_KEYS) | no_amp_eq.map(lambda b: b"k" + b))
    if draw(st.booleans()):
        return key
    return key + b"=" + draw(no_amp)


@st.composite
def worker_queries(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A query naming worker ``shop`` (first), and the query the upstream must receive."""
    kept = draw(st.lists(kept_params(), max_size=6))
    first = draw(st.sampled_from(WORKER_KEYS)) + b"=" + draw(st.sampled_from(SHOP_VALUES))
    later = draw(
        st.lists(
            st.tuples(st.sampled_from(WORKER_KEYS), no_amp).map(lambda kv: kv[0] + b"=" + kv[1]),
            max_size=3,
        )
    )
    # Interleave: kept params keep their relative order, the first worker param precedes the
    # later ones.
    parts = list(kept)
    position = draw(st.integers(min_value=0, max_value=len(parts)))
    parts.insert(position, first)
    for extra in later:
        parts.insert(draw(st.integers(min_value=position + 1, max_value=len(parts))), extra)
    return b"&".join(parts), b"&".join(kept)


@given(worker_queries(), st.sampled_from([b"/dispatch", b"/dispatch/", b"/api/dispatch"]))
@example((b"a=1&worker=shop&b=2", b"a=1&b=2"), b"/dispatch")
@example((b"=&worker=shop&&", b"=&&"), b"/dispatch")
def test_query_route_removes_exactly_the_worker_params_keeping_others_in_order(
    case: tuple[bytes, bytes], path: bytes
) -> None:
    query, expected = case
    result = resolve("localhost", path, query, TABLE, method="POST")
    assert isinstance(result, Route)
    assert result.kind is RouteKind.QUERY
    assert result.worker.name == "shop"
    assert result.upstream_path == b"/"
    assert result.query == expected


# Segments no upstream can read as a dot segment (those are refused: see below).
segments = st.binary(max_size=10).filter(
    lambda b: not any(c in b for c in (b"/", b"\\", b".", b"%"))
)
rests = st.lists(segments | st.sampled_from([b"a%2Fb", b"%2F", b"%2e%2ex", b"x.y"]), max_size=5)


@given(
    st.sampled_from([b"shop", b"%73hop", b"Shop", b"%53HOP"]),
    rests,
    st.booleans(),
    st.binary(max_size=20),
)
@example(b"shop", [b"a%2Fb"], False, b"")
def test_path_route_keeps_the_raw_bytes_after_the_worker_segment(
    segment: bytes, rest_segments: list[bytes], api: bool, query: bytes
) -> None:
    rest = b"".join(b"/" + s for s in rest_segments)
    prefix = b"/api/dispatch" if api else b"/dispatch"
    result = resolve("localhost", prefix + b"/" + segment + rest, query, TABLE)
    assert result == route("shop", RouteKind.PATH, rest or b"/", query, prefix.decode() + "/shop")


@given(
    st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    # No byte that could spell a dot segment: those paths are refused (tests above).
    st.binary().map(lambda b: b"/" + b.translate(None, b".%\\")),
    st.binary(),
)
def test_subdomain_routes_to_the_named_worker_or_reports_why_not(
    name: str, path: bytes, query: bytes
) -> None:
    host = f"{name}.example.com"
    if name in DEFAULT_RESERVED_NAMES:
        with pytest.raises(ReservedWorkerName):
            resolve(host, path, query, TABLE)
    elif name in WORKERS and WORKERS[name].enabled:
        assert resolve(host, path, query, TABLE) == route(name, RouteKind.SUBDOMAIN, path, query)
    else:
        with pytest.raises(WorkerNotFound):
            resolve(host, path, query, TABLE)


@st.composite
def normalised_hosts(draw: st.DrawFn) -> str:
    structured = st.sampled_from(
        [
            "localhost",
            "127.0.0.1",
            "[::1]",
            "example.com",
            "apps.example.net",
            "ops.example.org",
            "shop.example.com",
            "old.example.com",
            "www.example.com",
            "_x.example.com",
            "a.b.example.com",
            "shop.example.org",
        ]
    )
    label = st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True)
    under_base = st.tuples(label, st.sampled_from(["example.com", "apps.example.net"])).map(
        ".".join
    )
    raw = draw(structured | under_base | st.text(max_size=30))
    try:
        return normalize_host(raw)
    except RoutingError:
        assume(False)
        raise


paths = st.one_of(
    st.binary().map(lambda b: b"/" + b),
    st.tuples(
        st.sampled_from([b"/dispatch", b"/api/dispatch", b"/dispatch/", b"/dispatch/shop"]),
        st.binary(max_size=30),
    ).map(b"".join),
)
queries = st.binary() | st.lists(kept_params() | st.sampled_from(WORKER_KEYS)).map(b"&".join)
answers = st.sampled_from(
    [
        None,
        UNAVAILABLE,
        *(
            make_domain("x.example.org", w, s.value)
            for w in ("shop", "old", "gone")
            for s in DomainStatus
        ),
    ]
)


@given(
    normalised_hosts(),
    paths,
    queries,
    answers,
    st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
)
def test_resolve_raises_only_routing_registry_or_request_errors(
    host: str, path: bytes, query: bytes, domain: DomainAnswer, method: str
) -> None:
    try:
        result = resolve(host, path, query, TABLE, domain, method=method)
    except (RoutingError, RegistryUnavailable, InvalidRequest):
        return
    if result is CONTROL:
        return
    assert isinstance(result, Route)
    assert result.upstream_path.startswith(b"/")
    assert result.worker.enabled
    assert TABLE.workers[result.worker.name] is result.worker


# -- the remembered subdomain answers --------------------------------------------------------


def test_subdomain_answers_are_remembered_and_errors_raised_fresh_each_time() -> None:
    table = RoutingTable.build(
        base_domains=["example.com"], reserved=["admin"], workers=[make_worker("shop")]
    )
    for _ in range(2):
        assert resolve_tenant("shop.example.com", b"/", b"", table, None).worker.name == "shop"
    raised = []
    for _ in range(2):
        with pytest.raises(WorkerNotFound) as caught:
            resolve("ghost.example.com", b"/", b"", table)
        raised.append(caught.value)
        with pytest.raises(ReservedWorkerName):
            resolve("admin.example.com", b"/", b"", table)
    # Same answer, but not the same object: a re-raised error would keep growing its traceback.
    assert raised[0] is not raised[1]
    assert raised[0].message == raised[1].message == "Worker 'ghost' does not exist"


def test_a_new_table_does_not_reuse_the_old_tables_answers() -> None:
    old = RoutingTable.build(base_domains=["example.com"], workers=[])
    with pytest.raises(WorkerNotFound):
        resolve("shop.example.com", b"/", b"", old)
    new = RoutingTable.build(base_domains=["example.com"], workers=[make_worker("shop")])
    assert resolve_tenant("shop.example.com", b"/", b"", new, None).worker.name == "shop"


def test_remembered_subdomain_answers_are_bounded() -> None:
    table = RoutingTable.build(base_domains=["example.com"], workers=[make_worker("shop")])
    for n in range(25_000):
        with pytest.raises(WorkerNotFound):
            table.subdomain_worker(f"w{n}.example.com")
    assert len(table._subdomains) <= 10_000
    assert table.subdomain_worker("shop.example.com") == make_worker("shop")


# --- dot segments, on every route kind (issue 13) -------------------------------------------

DOT_SEGMENT_PATHS = [
    pytest.param(b"/../../secret", id="plain"),
    pytest.param(b"/a/./b", id="single-dot"),
    pytest.param(b"/a/..", id="at-the-end"),
    pytest.param(b"/%2e%2e/secret", id="encoded"),
    pytest.param(b"/%2E%2e/secret", id="encoded-mixed-case"),
    pytest.param(b"/.%2E/secret", id="half-encoded"),
    pytest.param(b"/..%2fsecret", id="encoded-slash"),
    pytest.param(b"/..%2Fsecret", id="encoded-slash-upper"),
    pytest.param(b"/..;/secret", id="path-parameter"),
    pytest.param(b"/..;jsessionid=x/secret", id="path-parameter-with-value"),
    pytest.param(b"/..\\secret", id="backslash"),
    pytest.param(b"/%2e%2e%5csecret", id="encoded-backslash"),
    pytest.param(b"/%2e%2e%5Csecret", id="encoded-backslash-upper"),
    pytest.param(b"/%252e%252e/secret", id="double-encoded"),
    pytest.param(b"/..%00/secret", id="nul"),
    pytest.param(b"/.. /secret", id="trailing-blank"),
    pytest.param(b"/a\\..\\b", id="backslash-both-sides"),
    pytest.param("/\uff0e\uff0e/secret".encode(), id="raw-utf8-fullwidth-dots"),
]
NOT_DOT_SEGMENT_PATHS = [
    pytest.param(b"/.well-known/acme", id="dot-file"),
    pytest.param(b"/app.js", id="extension"),
    pytest.param(b"/...", id="three-dots"),
    pytest.param(b"/..x/y", id="dots-then-name"),
    pytest.param(b"/a%2Fb", id="encoded-slash-kept"),
    pytest.param(b"/%2e%2ex", id="encoded-dots-then-name"),
]


@pytest.mark.parametrize("path", DOT_SEGMENT_PATHS)
@pytest.mark.parametrize(
    ("host", "prefix", "domain"),
    [
        pytest.param("shop.example.com", b"", None, id="subdomain"),
        pytest.param(
            "shop.example.org",
            b"",
            CustomDomain(
                domain="shop.example.org",
                worker="shop",
                status=DomainStatus.ACTIVE,
                created_at=NOW,
                updated_at=NOW,
            ),
            id="custom-domain",
        ),
        pytest.param("localhost", b"/dispatch/shop", None, id="path"),
        pytest.param("localhost", b"/api/dispatch/shop", None, id="api-path"),
    ],
)
def test_dot_segments_are_refused_on_every_route_kind(
    host: str, prefix: bytes, domain: DomainAnswer, path: bytes
) -> None:
    with pytest.raises(InvalidRequest):
        resolve(host, prefix + path, b"", TABLE, domain)


@pytest.mark.parametrize("path", NOT_DOT_SEGMENT_PATHS)
@pytest.mark.parametrize("prefix", [b"", b"/dispatch/shop"], ids=["subdomain", "path"])
def test_names_with_dots_are_not_dot_segments(prefix: bytes, path: bytes) -> None:
    host = "localhost" if prefix else "shop.example.com"
    result = resolve(host, prefix + path, b"", TABLE)
    assert isinstance(result, Route)
    assert result.upstream_path == path
