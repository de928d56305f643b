"""The admin HTTP API against a real dispatcher (uvicorn on loopback), on SQLite and Postgres.

Each test gets a fresh registry (``registry_url``) and its own dispatcher, so tests never see
each other's workers. Requests go to ``127.0.0.1`` (an IP literal: a control host) unless a
test names a tenant host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dispatcher.app import create_app
from dispatcher.control.admin import MAX_ADMIN_BODY_BYTES
from dispatcher.hosts import DEFAULT_RESERVED_NAMES
from dispatcher.settings import Settings
from tests.servers import ThreadedServer, serve_gateway, wait_until
from tests.tenant import TenantApp
from workers_registry.migrate import upgrade_sync

TOKEN = "s3cret-admin-token"
JSON = {"content-type": "application/json"}
AUTH = {"authorization": f"Bearer {TOKEN}"}

#: Every admin operation (method, path, a valid body), plus an unknown path under /admin and
#: an invalid name: the guard answers before routing and validation.
OPERATIONS: list[tuple[str, str, Any]] = [
    ("GET", "/admin/workers", None),
    ("POST", "/admin/workers", {"name": "x", "upstreams": ["http://a"]}),
    ("GET", "/admin/workers/shop", None),
    ("PUT", "/admin/workers/shop", {"upstreams": ["http://a"]}),
    ("DELETE", "/admin/workers/shop", None),
    ("GET", "/admin/domains", None),
    ("POST", "/admin/domains", {"domain": "a.example", "worker": "x"}),
    ("GET", "/admin/domains/shop.example.org", None),
    ("PATCH", "/admin/domains/shop.example.org", {"status": "active"}),
    ("DELETE", "/admin/domains/shop.example.org", None),
    ("POST", "/admin/import/workers", None),
    ("POST", "/admin/import/domains", None),
    ("GET", "/admin/nowhere", None),
    ("GET", "/admin/workers/admin", None),
]


@dataclass
class Dispatcher:
    url: str
    settings: Settings

    def client(self, *, token: str | None = TOKEN, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)


@contextmanager
def serve(database_url: str, **overrides: Any) -> Iterator[Dispatcher]:
    upgrade_sync(database_url)
    options: dict[str, Any] = {
        "database_url": database_url,
        "admin_token": TOKEN,
        "registry_poll_interval": 0.1,
        # The configured list, not the built-in one, must apply to the admin API.
        "reserved_names": (*DEFAULT_RESERVED_NAMES, "billing"),
        "log_level": "warning",
    }
    settings = Settings(**{**options, **overrides})
    with serve_gateway(create_app(settings)) as server:
        yield Dispatcher(server.url, settings)


@pytest.fixture
def dispatcher(registry_url: str) -> Iterator[Dispatcher]:
    with serve(registry_url) as running:
        yield running


@pytest.fixture
def api(dispatcher: Dispatcher) -> Iterator[httpx.Client]:
    with dispatcher.client() as client:
        yield client


def worker_body(name: str = "shop", **fields: Any) -> dict[str, Any]:
    return {"name": name, "upstreams": ["http://10.0.0.5:8080"], **fields}


def add_worker(api: httpx.Client, name: str = "shop", **fields: Any) -> dict[str, Any]:
    response = api.post("/admin/workers", json=worker_body(name, **fields))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def add_domain(
    api: httpx.Client, domain: str = "shop.example.org", worker: str = "shop", **fields: Any
) -> dict[str, Any]:
    response = api.post("/admin/domains", json={"domain": domain, "worker": worker, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error object of ``response``, after checking it is the contract's error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def detail_fields(response: httpx.Response) -> list[str]:
    error = error_of(response, 400, "invalid_request")
    for detail in error["details"]:
        assert set(detail) == {"field", "message"}
        assert detail["message"]
    return [detail["field"] for detail in error["details"]]


# -- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_every_admin_route_is_disabled_without_a_token(
    registry_url: str, token: str | None
) -> None:
    with serve(registry_url, admin_token=token) as disabled:
        with disabled.client(token="anything") as client:
            for method, path, body in OPERATIONS:
                error_of(client.request(method, path, json=body), 403, "admin_disabled")
        with disabled.client(token=None) as client:  # checked before authentication
            error_of(client.get("/admin/workers"), 403, "admin_disabled")


def test_every_admin_route_needs_the_bearer_token(dispatcher: Dispatcher) -> None:
    attempts = {
        "missing": {},
        "wrong": {"authorization": "Bearer nope"},
        "prefix": {"authorization": f"Bearer {TOKEN[:-1]}"},
        "longer": {"authorization": f"Bearer {TOKEN}x"},
        "no-scheme": {"authorization": TOKEN},
        "basic": {"authorization": f"Basic {TOKEN}"},
        "empty": {"authorization": "Bearer"},
    }
    with dispatcher.client(token=None) as client:
        for method, path, body in OPERATIONS:
            for name, headers in attempts.items():
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, name)
                error_of(response, 401, "unauthorized")
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith("Bearer"), (method, path, name)
                if name == "wrong":
                    assert challenge == 'Bearer error="invalid_token"'
                elif name == "missing":
                    assert challenge == "Bearer"
    assert not any(dispatcher_workers(dispatcher))


def dispatcher_workers(dispatcher: Dispatcher) -> list[dict[str, Any]]:
    with dispatcher.client() as client:
        workers: list[dict[str, Any]] = client.get("/admin/workers").json()["workers"]
        return workers


def test_the_right_token_is_accepted_whatever_the_scheme_case(dispatcher: Dispatcher) -> None:
    with dispatcher.client(token=None) as client:
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = client.get("/admin/workers", headers={"authorization": f"{scheme} {TOKEN}"})
            assert response.status_code == 200, scheme
        upper = client.get("/admin/workers", headers={"authorization": f"Bearer {TOKEN.upper()}"})
    error_of(upper, 401, "unauthorized")


# -- workers --------------------------------------------------------------------------------


def test_worker_lifecycle(api: httpx.Client) -> None:
    assert api.get("/admin/workers").json() == {"workers": []}

    body = worker_body(
        "shop",
        upstreams=["http://10.0.0.5:8080/", "https://10.0.0.6"],
        enabled=True,
        preserve_host=True,
        max_body_bytes=1000,
        upstream_timeout=2.5,
        max_concurrency=8,
        rate_limit=100,
        rate_burst=150,
        client_rate_limit=2.5,
        tags={"team": "web"},
    )
    created = api.post("/admin/workers", json=body)
    assert created.status_code == 201
    assert created.headers["location"] == "/admin/workers/shop"
    stored = created.json()
    assert {key: stored[key] for key in body} == {
        **body,
        "upstreams": ["http://10.0.0.5:8080", "https://10.0.0.6"],
    }
    assert stored["created_at"] == stored["updated_at"]

    assert api.get("/admin/workers").json() == {"workers": [stored]}
    assert api.get("/admin/workers/shop").json() == stored
    assert api.get("/admin/workers/SHOP").json() == stored  # names compare lowercased

    replaced = api.put("/admin/workers/shop", json={"upstreams": ["http://10.0.0.7"]})
    assert replaced.status_code == 200
    after = replaced.json()
    assert after["upstreams"] == ["http://10.0.0.7"]
    # PUT replaces: what the body leaves out goes back to its default.
    assert after["max_concurrency"] is None and after["tags"] == {}
    assert after["rate_limit"] is None and after["client_rate_limit"] is None
    assert after["preserve_host"] is False
    assert after["created_at"] == stored["created_at"]
    assert after["updated_at"] >= stored["updated_at"]
    assert api.get("/admin/workers/shop").json() == after

    same_name = api.put("/admin/workers/shop", json=worker_body("SHOP", enabled=False))
    assert same_name.status_code == 200
    assert same_name.json()["enabled"] is False

    deleted = api.delete("/admin/workers/shop")
    assert deleted.status_code == 204
    assert deleted.content == b""
    error_of(api.get("/admin/workers/shop"), 404, "worker_not_found")
    error_of(api.delete("/admin/workers/shop"), 404, "worker_not_found")
    assert api.get("/admin/workers").json() == {"workers": []}


def test_workers_are_listed_by_name(api: httpx.Client) -> None:
    for name in ("zeta", "alpha", "mid"):
        add_worker(api, name)
    names = [worker["name"] for worker in api.get("/admin/workers").json()["workers"]]
    assert names == ["alpha", "mid", "zeta"]


def test_duplicate_worker_is_a_conflict(api: httpx.Client) -> None:
    first = add_worker(api, "shop")
    error_of(api.post("/admin/workers", json=worker_body("Shop")), 409, "conflict")
    assert api.get("/admin/workers/shop").json() == first


def test_replacing_an_unknown_worker_is_not_found(api: httpx.Client) -> None:
    error_of(
        api.put("/admin/workers/ghost", json={"upstreams": ["http://a"]}), 404, "worker_not_found"
    )
    error_of(api.get("/admin/workers/ghost"), 404, "worker_not_found")


def test_put_cannot_rename_a_worker(api: httpx.Client) -> None:
    stored = add_worker(api, "shop")
    response = api.put("/admin/workers/shop", json=worker_body("other"))
    assert detail_fields(response) == ["name"]
    assert api.get("/admin/workers/shop").json() == stored
    error_of(api.get("/admin/workers/other"), 404, "worker_not_found")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param(b"{not json", ["body"], id="invalid-json"),
        pytest.param(b"", ["body"], id="empty-body"),
        pytest.param(b"NaN", ["body"], id="json-nan"),
        pytest.param(b'["shop"]', ["body"], id="not-an-object"),
        pytest.param({"name": "shop"}, ["upstreams"], id="missing-upstreams"),
        pytest.param({"upstreams": ["http://a"]}, ["name"], id="missing-name"),
        pytest.param(worker_body(upstreams=[]), ["upstreams"], id="no-upstreams"),
        pytest.param(worker_body(upstreams=["ftp://a"]), ["upstreams"], id="bad-scheme"),
        pytest.param(worker_body(upstreams=["http://u:p@a"]), ["upstreams"], id="credentials"),
        pytest.param(worker_body("-shop"), ["name"], id="leading-hyphen"),
        pytest.param(worker_body("sh_op"), ["name"], id="underscore"),
        pytest.param(worker_body("a" * 64), ["name"], id="too-long"),
        pytest.param(worker_body("admin"), ["name"], id="reserved-builtin"),
        pytest.param(worker_body("billing"), ["name"], id="reserved-configured"),
        pytest.param(worker_body("\u212aelvin"), ["name"], id="kelvin-sign"),
        pytest.param(worker_body(max_concurrency=0), ["max_concurrency"], id="zero-concurrency"),
        pytest.param(worker_body(rate_limit=0), ["rate_limit"], id="zero-rate"),
        pytest.param(worker_body(rate_burst=10), ["rate_burst"], id="burst-without-rate"),
        pytest.param(worker_body(max_body_bytes=-1), ["max_body_bytes"], id="negative-limit"),
        pytest.param(worker_body(upstream_timeout=0), ["upstream_timeout"], id="zero-timeout"),
        pytest.param(worker_body(enabled="maybe"), ["enabled"], id="not-a-bool"),
        pytest.param(worker_body(tags={"team": 1}), ["tags.team"], id="tag-not-a-string"),
        pytest.param(worker_body(colour="red"), ["colour"], id="unknown-field"),
        pytest.param(
            {"name": "-", "upstreams": "http://a"}, ["upstreams", "name"], id="several-fields"
        ),
    ],
)
def test_invalid_worker_bodies_list_the_fields(
    api: httpx.Client, body: bytes | dict[str, Any], fields: list[str]
) -> None:
    kwargs: dict[str, Any] = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    assert sorted(detail_fields(api.post("/admin/workers", **kwargs))) == sorted(fields)
    assert api.get("/admin/workers").json() == {"workers": []}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param(b"{not json", ["body"], id="invalid-json"),
        pytest.param(b"[]", ["body"], id="not-an-object"),
        pytest.param({}, ["upstreams"], id="missing-upstreams"),
        pytest.param({"upstreams": ["gopher://a"]}, ["upstreams"], id="bad-scheme"),
        pytest.param({"upstreams": ["http://a"], "name": "admin"}, ["name"], id="reserved-name"),
        pytest.param({"upstreams": ["http://a"], "tags": []}, ["tags"], id="tags-not-a-map"),
    ],
)
def test_invalid_replacements_list_the_fields(
    api: httpx.Client, body: bytes | dict[str, Any], fields: list[str]
) -> None:
    stored = add_worker(api, "shop")
    kwargs: dict[str, Any] = (
        {"content": body, "headers": JSON} if isinstance(body, bytes) else {"json": body}
    )
    assert detail_fields(api.put("/admin/workers/shop", **kwargs)) == fields
    assert api.get("/admin/workers/shop").json() == stored


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("admin", "reserved", id="reserved-builtin"),
        pytest.param("billing", "reserved", id="reserved-configured"),
        pytest.param("-bad", "Invalid worker name", id="leading-hyphen"),
        pytest.param("a_b", "Invalid worker name", id="underscore"),
        pytest.param("a" * 64, "Invalid worker name", id="too-long"),
        pytest.param("%E2%84%AAelvin", "Invalid worker name", id="kelvin-sign"),
    ],
)
def test_worker_names_in_the_path_go_through_the_same_validator(
    api: httpx.Client, name: str, message: str
) -> None:
    for method, body in (("GET", None), ("PUT", {"upstreams": ["http://a"]}), ("DELETE", None)):
        response = api.request(method, f"/admin/workers/{name}", json=body)
        assert detail_fields(response) == ["name"], method
        assert message in response.json()["error"]["details"][0]["message"]


def test_a_body_over_the_limit_is_refused(api: httpx.Client) -> None:
    body = (
        b'{"name": "shop", "upstreams": ["http://a"], "tags": {"x": "'
        + b"a" * (MAX_ADMIN_BODY_BYTES)
        + b'"}}'
    )
    error_of(api.post("/admin/workers", content=body, headers=JSON), 413, "payload_too_large")


def test_unknown_methods_are_405_json(api: httpx.Client) -> None:
    for method, path, allowed in [
        ("PATCH", "/admin/workers", {"GET", "POST"}),
        ("POST", "/admin/workers/shop", {"GET", "PUT", "DELETE"}),
        ("PUT", "/admin/domains", {"GET", "POST"}),
        ("PUT", "/admin/domains/shop.example.org", {"GET", "PATCH", "DELETE"}),
    ]:
        response = api.request(method, path, json={})
        error_of(response, 405, "method_not_allowed")
        assert set(response.headers["allow"].replace(" ", "").split(",")) - {"HEAD"} == allowed


# -- custom domains ---------------------------------------------------------------------------


def test_domain_lifecycle_and_status_transitions(api: httpx.Client) -> None:
    add_worker(api, "shop")
    add_worker(api, "blog")
    assert api.get("/admin/domains").json() == {"domains": []}

    created = api.post("/admin/domains", json={"domain": "Shop.Example.ORG.", "worker": "Shop"})
    assert created.status_code == 201
    assert created.headers["location"] == "/admin/domains/shop.example.org"
    stored = created.json()
    assert (stored["domain"], stored["worker"], stored["status"]) == (
        "shop.example.org",
        "shop",
        "pending",  # the default
    )
    assert api.get("/admin/domains").json() == {"domains": [stored]}
    assert api.get("/admin/domains/SHOP.example.org").json() == stored

    for status in ("verified", "active", "failed", "pending"):
        patched = api.patch("/admin/domains/shop.example.org", json={"status": status})
        assert patched.status_code == 200
        assert patched.json()["status"] == status
        assert api.get("/admin/domains/shop.example.org").json()["status"] == status

    moved = api.patch(
        "/admin/domains/shop.example.org", json={"worker": "blog", "status": "active"}
    )
    assert (moved.json()["worker"], moved.json()["status"]) == ("blog", "active")
    assert moved.json()["created_at"] == stored["created_at"]
    unchanged = api.patch("/admin/domains/shop.example.org", json={})
    assert unchanged.status_code == 200
    assert unchanged.json() == moved.json()

    deleted = api.delete("/admin/domains/shop.example.org")
    assert deleted.status_code == 204
    assert deleted.content == b""
    error_of(api.get("/admin/domains/shop.example.org"), 404, "domain_not_found")
    error_of(api.delete("/admin/domains/shop.example.org"), 404, "domain_not_found")
    error_of(
        api.patch("/admin/domains/shop.example.org", json={"status": "active"}),
        404,
        "domain_not_found",
    )


def test_domains_are_listed_by_domain_and_filtered_by_worker(api: httpx.Client) -> None:
    add_worker(api, "shop")
    add_worker(api, "blog")
    add_domain(api, "z.example.org", "shop")
    add_domain(api, "a.example.org", "blog")
    add_domain(api, "m.example.org", "shop")
    listed = [d["domain"] for d in api.get("/admin/domains").json()["domains"]]
    assert listed == ["a.example.org", "m.example.org", "z.example.org"]
    shop = api.get("/admin/domains", params={"worker": "SHOP"}).json()["domains"]
    assert [d["domain"] for d in shop] == ["m.example.org", "z.example.org"]
    assert api.get("/admin/domains", params={"worker": "nobody"}).json() == {"domains": []}
    assert detail_fields(api.get("/admin/domains", params={"worker": "admin"})) == ["worker"]


def test_unknown_or_repeated_query_parameters_are_refused(api: httpx.Client) -> None:
    add_worker(api, "shop")
    add_domain(api)
    # A typo must not silently mean "every domain".
    assert detail_fields(api.get("/admin/domains", params={"wroker": "shop"})) == ["wroker"]
    repeated = api.get("/admin/domains", params=[("worker", "shop"), ("worker", "blog")])
    assert detail_fields(repeated) == ["worker"]
    assert detail_fields(api.get("/admin/workers", params={"worker": "shop"})) == ["worker"]
    assert detail_fields(api.get("/admin/workers/shop", params={"x": "1"})) == ["x"]
    assert api.get("/admin/domains", params={"worker": "shop"}).status_code == 200


def test_body_fields_have_json_types(api: httpx.Client) -> None:
    # Strict JSON types: lax coercion would store false as 0 and "8" as 8.
    for fields, field in [
        ({"max_body_bytes": False}, "max_body_bytes"),
        ({"max_concurrency": "8"}, "max_concurrency"),
        ({"enabled": 1}, "enabled"),
        ({"upstream_timeout": "5"}, "upstream_timeout"),
    ]:
        response = api.post("/admin/workers", json=worker_body(**fields))
        assert detail_fields(response) == [field], fields
    assert add_worker(api, upstream_timeout=5)["upstream_timeout"] == 5.0


def test_duplicate_domain_is_a_conflict(api: httpx.Client) -> None:
    add_worker(api, "shop")
    add_domain(api, "shop.example.org")
    duplicate = api.post("/admin/domains", json={"domain": "SHOP.example.org", "worker": "shop"})
    error_of(duplicate, 409, "conflict")


def test_a_domain_naming_an_unknown_worker_is_invalid(api: httpx.Client) -> None:
    add_worker(api, "shop")
    response = api.post("/admin/domains", json={"domain": "a.example.org", "worker": "ghost"})
    assert detail_fields(response) == ["worker"]
    add_domain(api, "b.example.org")
    patched = api.patch("/admin/domains/b.example.org", json={"worker": "ghost"})
    assert detail_fields(patched) == ["worker"]
    assert api.get("/admin/domains/b.example.org").json()["worker"] == "shop"
    assert [d["domain"] for d in api.get("/admin/domains").json()["domains"]] == ["b.example.org"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param({"worker": "shop"}, ["domain"], id="missing-domain"),
        pytest.param({"domain": "a.example.org"}, ["worker"], id="missing-worker"),
        pytest.param({"domain": "not a domain", "worker": "shop"}, ["domain"], id="spaces"),
        pytest.param({"domain": "localhost", "worker": "shop"}, ["domain"], id="not-qualified"),
        pytest.param({"domain": "a.example.org", "worker": "admin"}, ["worker"], id="reserved"),
        pytest.param({"domain": "a.example.org", "worker": "-x"}, ["worker"], id="bad-worker"),
        pytest.param(
            {"domain": "a.example.org", "worker": "shop", "status": "live"},
            ["status"],
            id="unknown-status",
        ),
        pytest.param(
            {"domain": "a.example.org", "worker": "shop", "owner": "me"}, ["owner"], id="extra"
        ),
    ],
)
def test_invalid_domain_bodies_list_the_fields(
    api: httpx.Client, body: dict[str, Any], fields: list[str]
) -> None:
    add_worker(api, "shop")
    assert detail_fields(api.post("/admin/domains", json=body)) == fields
    assert api.get("/admin/domains").json() == {"domains": []}


def test_invalid_domain_patches_list_the_fields(api: httpx.Client) -> None:
    add_worker(api, "shop")
    add_domain(api)
    for body, fields in [
        ({"status": "live"}, ["status"]),
        ({"worker": "billing"}, ["worker"]),
        ({"domain": "b.example.org"}, ["domain"]),
        ([], ["body"]),
    ]:
        response = api.patch("/admin/domains/shop.example.org", json=body)
        assert detail_fields(response) == fields, body
    assert api.get("/admin/domains/shop.example.org").json()["status"] == "pending"


def test_malformed_domains_in_the_path_are_invalid(api: httpx.Client) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = api.request(method, "/admin/domains/bad_domain!.org", json={})
        assert detail_fields(response) == ["domain"], method


def test_removing_a_worker_removes_its_domains(api: httpx.Client) -> None:
    add_worker(api, "shop")
    add_domain(api, "shop.example.org")
    assert api.delete("/admin/workers/shop").status_code == 204
    error_of(api.get("/admin/domains/shop.example.org"), 404, "domain_not_found")


# -- effect on routing ------------------------------------------------------------------------


@pytest.fixture
def tenant() -> Iterator[str]:
    with ThreadedServer(TenantApp("shop-tenant")) as server:
        yield server.url


def status_for(client: httpx.Client, host: str, path: str = "/") -> tuple[int, str]:
    response = client.get(path, headers={"host": host})
    return response.status_code, response.text


def test_a_domain_added_through_the_api_routes_traffic(
    dispatcher: Dispatcher, api: httpx.Client, tenant: str
) -> None:
    add_worker(api, "shop", upstreams=[tenant])
    add_domain(api, "shop.example.org", status="pending")
    with httpx.Client(base_url=dispatcher.url, timeout=10) as client:
        # Pending domains do not route.
        assert client.get("/", headers={"host": "shop.example.org"}).status_code == 404

        api.patch("/admin/domains/shop.example.org", json={"status": "active"})
        wait_until(
            lambda: status_for(client, "shop.example.org") == (200, "hello from shop-tenant\n"),
            what="the activated domain to route",
        )
        api.patch("/admin/domains/shop.example.org", json={"status": "failed"})
        wait_until(
            lambda: status_for(client, "shop.example.org")[0] == 404,
            what="the failed domain to stop routing",
        )
        api.patch("/admin/domains/shop.example.org", json={"status": "verified"})
        wait_until(
            lambda: status_for(client, "shop.example.org")[0] == 200,
            what="the verified domain to route",
        )
        api.delete("/admin/domains/shop.example.org")
        wait_until(
            lambda: status_for(client, "shop.example.org")[0] == 404,
            what="the removed domain to stop routing",
        )


def test_a_worker_added_through_the_api_routes_its_subdomain(
    dispatcher: Dispatcher, api: httpx.Client, tenant: str
) -> None:
    with httpx.Client(base_url=dispatcher.url, timeout=10) as client:
        assert status_for(client, "shop.localhost")[0] == 404
        add_worker(api, "shop", upstreams=[tenant])
        wait_until(lambda: status_for(client, "shop.localhost")[0] == 200, what="subdomain")
        api.put("/admin/workers/shop", json={"upstreams": [tenant], "enabled": False})
        wait_until(lambda: status_for(client, "shop.localhost")[0] == 404, what="disabled")


def test_admin_routes_are_not_served_on_tenant_hosts(
    dispatcher: Dispatcher, api: httpx.Client, tenant: str
) -> None:
    add_worker(api, "shop", upstreams=[tenant])
    add_domain(api, "shop.example.org", status="active")
    with httpx.Client(base_url=dispatcher.url, headers=AUTH, timeout=10) as client:
        wait_until(lambda: status_for(client, "shop.localhost")[0] == 200, what="subdomain")
        for host in ("shop.localhost", "shop.example.org"):
            response = client.get("/admin/workers", headers={"host": host})
            # The tenant's own 404 page: the request went to the tenant, not the admin API.
            assert (response.status_code, response.text) == (404, "tenant has no such page")
            echoed = client.post("/admin/workers", headers={"host": host}, json={})
            # The tenant app answers POST / only; any other path is its 404.
            assert echoed.text == "tenant has no such page"


def test_lone_surrogates_are_not_json_text(api: httpx.Client) -> None:
    body = b'{"name": "shop", "upstreams": ["http://a"], "tags": {"k": "\\ud800"}}'
    assert detail_fields(api.post("/admin/workers", content=body, headers=JSON)) == ["body"]
    paired = b'{"name": "shop", "upstreams": ["http://a"], "tags": {"k": "\\ud83d\\ude00"}}'
    response = api.post("/admin/workers", content=paired, headers=JSON)
    assert response.json()["tags"] == {"k": "\U0001f600"}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"max_concurrency": 2**31}, id="concurrency-past-int32"),
        pytest.param({"max_body_bytes": 2**63}, id="limit-past-int64"),
        pytest.param({"tags": {"k": "v\x00"}}, id="nul-in-tag"),
        pytest.param({"upstreams": ["http://a\x00b"]}, id="nul-in-upstream-host"),
    ],
)
def test_values_the_registry_cannot_store_are_invalid(
    api: httpx.Client, fields: dict[str, Any]
) -> None:
    assert detail_fields(api.post("/admin/workers", json=worker_body(**fields)))


# -- hostile input (issue 13) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 50_000, id="50k-arrays"),
        pytest.param(b'{"a":' * 50_000, id="50k-objects"),
        pytest.param(b'{"name": "shop", "tags": ' + b"[" * 33 + b"]" * 33 + b"}", id="33-levels"),
    ],
)
def test_deep_nesting_is_400_not_500(api: httpx.Client, body: bytes) -> None:
    assert detail_fields(api.post("/admin/workers", content=body, headers=JSON)) == ["body"]


def test_brackets_inside_strings_do_not_count_as_nesting(api: httpx.Client) -> None:
    tags = {"k": "[" * 100 + '\\"{' * 50}
    response = api.post(
        "/admin/workers", json={"name": "deep", "upstreams": ["http://a"], "tags": tags}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="none"),
        pytest.param("text/plain", id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param("application/jsonx", id="prefix"),
        pytest.param("application/json-patch+json", id="other-json"),
    ],
)
def test_a_body_not_declared_json_is_415(api: httpx.Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"name": "shop", "upstreams": ["http://a"]}'
    error_of(
        api.post("/admin/workers", content=body, headers=headers), 415, "unsupported_media_type"
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON", "application/json; charset=utf-8"],
)
def test_json_with_parameters_is_accepted(api: httpx.Client, content_type: str) -> None:
    body = b'{"name": "typed", "upstreams": ["http://a"]}'
    response = api.post("/admin/workers", content=body, headers={"content-type": content_type})
    assert response.status_code == 201, response.text
    api.delete("/admin/workers/typed")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://169.254.169.254/", id="metadata"),
        pytest.param("http://169.254.170.2/v2", id="ecs-metadata"),
        pytest.param("http://[::ffff:169.254.169.254]", id="ipv4-mapped"),
        pytest.param("http://[::ffff:a9fe:a9fe]", id="ipv4-mapped-hex"),
        pytest.param("http://[64:ff9b::a9fe:a9fe]", id="nat64"),
        pytest.param("http://[2002:a9fe:a9fe::1]", id="6to4"),
        pytest.param("http://[fe80::1]", id="ipv6-link-local"),
        pytest.param("http://[fd00:ec2::254]", id="aws-ipv6-metadata"),
        pytest.param("http://100.100.100.200", id="alibaba-metadata"),
        pytest.param("http://0.0.0.0:8080", id="this-network"),
        pytest.param("http://2130706433", id="decimal-loopback"),
        pytest.param("http://127.1", id="short-loopback"),
        pytest.param("http://0x7f.1", id="hex-loopback"),
        pytest.param("http://0177.0.0.1", id="octal-loopback"),
        pytest.param("http://2852039166", id="decimal-metadata"),
        pytest.param("http://0xa9.0xfe.0xa9.0xfe", id="hex-metadata"),
    ],
)
def test_upstreams_in_denied_networks_or_odd_spellings_are_refused(
    api: httpx.Client, url: str
) -> None:
    response = api.post("/admin/workers", json={"name": "probe", "upstreams": [url]})
    assert detail_fields(response) == ["upstreams"], response.text


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://10.0.0.5/app", "http://[::1]:9000", "http://shop.internal"],
)
def test_loopback_private_and_names_are_allowed_by_default(api: httpx.Client, url: str) -> None:
    response = api.post("/admin/workers", json={"name": "fine", "upstreams": [url]})
    assert response.status_code == 201, response.text
    api.delete("/admin/workers/fine")


# -- bulk import -----------------------------------------------------------------------------

NDJSON = {"content-type": "application/x-ndjson"}
CSV = {"content-type": "text/csv"}


def test_import_adds_every_record_in_one_go(api: httpx.Client) -> None:
    workers = (
        '{"name": "shop", "upstreams": ["http://10.0.0.1"]}\n'
        '{"name": "blog", "upstreams": ["http://10.0.0.2"]}\n'
    )
    domains = "domain,worker,status\nshop.example.org,shop,active\nblog.example.org,blog,\n"

    added = api.post("/admin/import/workers", content=workers, headers=NDJSON)
    assert (added.status_code, added.json()) == (201, {"imported": 2})
    added = api.post("/admin/import/domains", content=domains, headers=CSV)
    assert (added.status_code, added.json()) == (201, {"imported": 2})

    listed = api.get("/admin/domains").json()["domains"]
    assert [(d["domain"], d["worker"], d["status"]) for d in listed] == [
        ("blog.example.org", "blog", "pending"),
        ("shop.example.org", "shop", "active"),
    ]
    # A pending domain imported gets its verification record, as one added alone does.
    assert listed[0]["verification"]["txt_value"]


def test_an_import_with_a_bad_line_writes_nothing_and_names_the_line(api: httpx.Client) -> None:
    add_worker(api)
    body = "\n".join(
        [
            '{"domain": "a.example.org", "worker": "shop"}',
            "",
            '{"domain": "b.example.org", "worker": "shop", "status": "live"}',
            '{"domain": "c.example.org", "worker": "ghost"}',
        ]
    )

    post = api.post("/admin/import/domains", content=body, headers=NDJSON)
    error = error_of(post, 400, "invalid_request")
    assert [detail["field"] for detail in error["details"]] == ["line 3"]
    assert api.get("/admin/domains").json()["domains"] == []

    # Valid lines, but one names a worker that does not exist: refused in the transaction.
    body = body.replace(', "status": "live"', "")
    post = api.post("/admin/import/domains", content=body, headers=NDJSON)
    error = error_of(post, 400, "invalid_request")
    assert error["details"] == [{"field": "line 4", "message": "worker 'ghost' does not exist"}]
    assert api.get("/admin/domains").json()["domains"] == []


def test_an_import_refuses_a_domain_that_could_never_route(api: httpx.Client) -> None:
    add_worker(api)
    body = (
        '{"domain": "a.example.org", "worker": "shop"}\n{"domain": "localhost", "worker": "shop"}'
    )

    post = api.post("/admin/import/domains", content=body, headers=NDJSON)

    assert [d["field"] for d in error_of(post, 400, "invalid_request")["details"]] == ["line 2"]
    assert api.get("/admin/domains").json()["domains"] == []


def test_an_import_of_an_existing_key_is_a_conflict_naming_the_line(api: httpx.Client) -> None:
    add_worker(api, "blog")
    body = (
        '{"name": "shop", "upstreams": ["http://a"]}\n{"name": "blog", "upstreams": ["http://a"]}'
    )

    error = error_of(
        api.post("/admin/import/workers", content=body, headers=NDJSON), 409, "conflict"
    )

    assert error["details"] == [{"field": "line 2", "message": "worker 'blog' already exists"}]
    assert [w["name"] for w in api.get("/admin/workers").json()["workers"]] == ["blog"]


def test_an_import_must_say_what_it_is(api: httpx.Client) -> None:
    body = '{"name": "shop", "upstreams": ["http://a"]}'
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/json"}):
        post = api.post("/admin/import/workers", content=body, headers=headers)
        error_of(post, 415, "unsupported_media_type")
