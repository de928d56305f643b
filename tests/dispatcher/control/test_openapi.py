"""The OpenAPI 3.1 document, the offline ``/docs`` page, and the API checked against both.

- the document is valid OpenAPI 3.1 (openapi-spec-validator) and describes every admin
  operation with its body, responses, the error schema and the bearer scheme;
- every route the control plane serves is in the document, and live answers match it;
- ``/docs`` and its assets are served by the dispatcher itself (nothing from another host);
- schemathesis, driven by the served document, finds no server error in the admin API
  (SQLite and Postgres);
- headless Chromium renders ``/docs`` and lists the admin operations (skipped without
  Chromium, failed under ``CI=true``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from dispatcher.app import Gateway, create_app
from dispatcher.control.app import create_control_app
from dispatcher.control.docs import swagger_ui_directory
from dispatcher.control.openapi import openapi_document
from dispatcher.settings import Settings
from tests.postgres import PostgresServer
from tests.servers import ThreadedServer, serve_gateway
from workers_registry.migrate import upgrade_sync

TOKEN = "openapi-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}

#: (method, path, request body schema or None, success status, its own error statuses); every
#: admin operation also documents 401, 403 and 503, and 413 when it takes a body.
ADMIN_OPERATIONS = [
    ("get", "/admin/workers", None, "200", set()),
    ("post", "/admin/workers", "WorkerCreate", "201", {"400", "409"}),
    ("get", "/admin/workers/{name}", None, "200", {"400", "404"}),
    ("put", "/admin/workers/{name}", "WorkerReplace", "200", {"400", "404"}),
    ("delete", "/admin/workers/{name}", None, "204", {"400", "404"}),
    ("get", "/admin/domains", None, "200", {"400"}),
    ("post", "/admin/domains", "CustomDomainCreate", "201", {"400", "409"}),
    ("get", "/admin/domains/{domain}", None, "200", {"400", "404"}),
    ("patch", "/admin/domains/{domain}", "CustomDomainPatch", "200", {"400", "404"}),
    ("delete", "/admin/domains/{domain}", None, "204", {"400", "404"}),
    ("post", "/admin/import/workers", "lines", "201", {"400", "409"}),
    ("post", "/admin/import/domains", "lines", "201", {"400", "409"}),
]

#: Served by the control plane but not API operations: the docs page's own files.
_UNDOCUMENTED = {"/docs/init.js", "/docs/assets"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow one local ``$ref``."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def validator_for(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A JSON Schema 2020-12 validator for ``schema`` whose refs resolve in ``document``."""
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


# -- the document ---------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(document).validate()
    operation_ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for key, operation in item.items()
        if key != "parameters"
    ]
    assert len(operation_ids) == len(set(operation_ids))


@pytest.mark.parametrize(
    ("method", "path", "body", "success", "errors"),
    [pytest.param(*op, id=f"{op[0]} {op[1]}") for op in ADMIN_OPERATIONS],
)
def test_every_admin_operation_is_described(
    document: dict[str, Any],
    method: str,
    path: str,
    body: str | None,
    success: str,
    errors: set[str],
) -> None:
    operation = document["paths"][path][method]
    assert operation["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The dispatcher's `admin_token` setting.",
    }
    if body is None:
        assert "requestBody" not in operation
    elif body == "lines":  # an import file
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/x-ndjson", "text/csv"}
    else:
        content = operation["requestBody"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{body}"}
        assert resolve(document, content["schema"])["type"] == "object"
    responses = operation["responses"]
    errors = errors | {"401", "403", "503"} | ({"413", "415"} if body else set())
    assert set(responses) == {success} | errors
    if success != "204":
        schema = resolve(document, responses[success])["content"]["application/json"]["schema"]
        assert resolve(document, schema)["type"] == "object"
    for status in errors:
        response = resolve(document, responses[status])
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    unauthorized = resolve(document, responses["401"])
    assert "WWW-Authenticate" in unauthorized["headers"]


def test_the_error_schema_is_the_contract(document: dict[str, Any]) -> None:
    body = validator_for(document, {"$ref": "#/components/schemas/ErrorBody"})
    body.validate({"error": {"code": "conflict", "message": "m", "request_id": "r"}})
    body.validate(
        {
            "error": {
                "code": "invalid_request",
                "message": "m",
                "request_id": "r",
                "details": [{"field": "upstreams", "message": "m"}],
            }
        }
    )
    for invalid in (
        {},
        {"error": {"code": "x", "message": "m"}},
        {"error": {"code": "x", "message": "m", "request_id": "r", "details": [{"field": "f"}]}},
    ):
        assert not body.is_valid(invalid), invalid


def test_request_bodies_match_the_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "name" in schemas["WorkerCreate"]["required"]
    assert "name" not in schemas["WorkerReplace"]["required"]
    assert schemas["WorkerReplace"]["properties"] == schemas["WorkerCreate"]["properties"]
    assert set(schemas["CustomDomainCreate"]["required"]) == {"domain", "worker"}
    status = resolve(document, schemas["DomainRecord"]["properties"]["status"])
    assert status["enum"] == ["pending", "verified", "active", "moved", "failed"]
    worker = validator_for(document, {"$ref": "#/components/schemas/WorkerCreate"})
    worker.validate({"name": "shop", "upstreams": ["http://10.0.0.5:8080"]})
    assert not worker.is_valid({"name": "-shop", "upstreams": ["http://a"]})
    assert not worker.is_valid({"name": "shop", "upstreams": ["http://a"], "colour": "red"})


# -- against a running dispatcher -------------------------------------------------------------


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    database_url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('openapi') / 'registry.db'}"
    upgrade_sync(database_url)
    settings = Settings(database_url=database_url, admin_token=TOKEN, log_level="warning")
    with serve_gateway(create_app(settings)) as server:
        yield server


def served_operations(gateway: Gateway) -> set[tuple[str, str]]:
    """(method, path) of every route of the control-plane app, HEAD aside."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                if prefix + route.path in _UNDOCUMENTED:
                    continue
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Route) and prefix + route.path not in _UNDOCUMENTED:
                path = (prefix + route.path).rstrip("/") or "/"  # "/dispatch/" is "/dispatch"
                found.update((method.lower(), path) for method in route.methods or ())

    walk(list(gateway.control.routes), "")
    return {(method, path) for method, path in found if method != "head"}


def test_every_served_route_is_documented(document: dict[str, Any]) -> None:
    gateway = create_app(Settings(admin_token=TOKEN))
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = served_operations(gateway)
    assert {operation[:2] for operation in ADMIN_OPERATIONS} <= served
    assert served - documented == set()


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/", "ServiceInfo"),
        ("/health", "Health"),
        ("/dispatch", "DispatchInfo"),
        ("/api/dispatch", "DispatchInfo"),
    ],
)
def test_control_answers_match_the_document(
    document: dict[str, Any], dispatcher: ThreadedServer, path: str, schema: str
) -> None:
    response = httpx.get(dispatcher.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    validator_for(document, {"$ref": f"#/components/schemas/{schema}"}).validate(response.json())


def test_tls_ask_and_metrics_match_the_document(
    document: dict[str, Any], dispatcher: ThreadedServer
) -> None:
    tls = document["paths"]["/tls/ask"]["get"]["responses"]
    with httpx.Client(base_url=dispatcher.url) as client:
        refused = client.get("/tls/ask", params={"domain": "unknown.example.net"})
        assert str(refused.status_code) in tls
        validator_for(document, {"$ref": "#/components/schemas/ErrorBody"}).validate(refused.json())
        missing = client.get("/tls/ask")
        assert missing.status_code == 400 and "400" in tls
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    documented = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics.headers["content-type"].split(";")[0] in documented


def test_errors_match_the_document(document: dict[str, Any], dispatcher: ThreadedServer) -> None:
    error = validator_for(document, {"$ref": "#/components/schemas/ErrorBody"})
    with httpx.Client(base_url=dispatcher.url, headers=AUTH) as client:
        invalid = client.post("/admin/workers", json={"name": "-", "upstreams": []})
        assert invalid.status_code == 400
        error.validate(invalid.json())
        assert invalid.json()["error"]["details"]
        for response in (client.get("/admin/workers/ghost"), client.get("/nowhere")):
            assert response.status_code == 404
            error.validate(response.json())


def test_the_served_document_is_the_built_one(
    document: dict[str, Any], dispatcher: ThreadedServer
) -> None:
    response = httpx.get(dispatcher.url + "/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == document


# -- /docs ------------------------------------------------------------------------------------

_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_ABSOLUTE = re.compile(r"(?i)(?:https?:)?//[a-z0-9]")


def test_docs_page_loads_only_local_files(dispatcher: ThreadedServer) -> None:
    with httpx.Client(base_url=dispatcher.url) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert _ABSOLUTE.search(page.text) is None, "the page names another host"
        urls = _URL.findall(page.text)
        assert {"/docs/assets/swagger-ui-bundle.js", "/docs/init.js"} <= set(urls)
        for url in urls:
            assert url.startswith("/docs/"), url
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.content, url
        init = client.get("/docs/init.js")
        assert init.headers["content-type"].startswith("text/javascript")
        assert _ABSOLUTE.search(init.text) is None
        assert 'url: "/openapi.json"' in init.text
        assert "validatorUrl: null" in init.text  # no upload to an online validator


def test_docs_assets_come_from_the_installed_package(dispatcher: ThreadedServer) -> None:
    directory = swagger_ui_directory()
    for name, media_type in [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
    ]:
        response = httpx.get(f"{dispatcher.url}/docs/assets/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.content == (directory / name).read_bytes()
    missing = httpx.get(f"{dispatcher.url}/docs/assets/nope.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    reason = "Chromium is not installed (Debian package `chromium`)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; it is required in CI", pytrace=False)
    pytest.skip(reason)


_OPERATION = re.compile(
    r'opblock-summary-method">([A-Z]+)</span>.*?class="opblock-summary-path"[^>]*data-path="([^"]+)"',
    re.DOTALL,
)


def test_chromium_renders_the_docs_with_every_admin_operation(
    dispatcher: ThreadedServer, tmp_path: Path
) -> None:
    chromium = find_chromium()
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{dispatcher.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    rendered = {(method.lower(), path) for method, path in _OPERATION.findall(dom)}
    assert {operation[:2] for operation in ADMIN_OPERATIONS} <= rendered, dom[-2000:]
    assert ("get", "/health") in rendered
    assert "Unable to render this definition" not in dom
    assert 'class="errors-wrapper"' not in dom


# -- schemathesis -----------------------------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A dispatcher with the admin API on (its URL)."""
    if request.param == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'registry.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database_url = postgres.url(postgres.create_database())
    upgrade_sync(database_url)
    settings = Settings(database_url=database_url, admin_token=TOKEN, log_level="warning")
    with serve_gateway(create_app(settings)) as server:
        yield server.url


def seed(url: str) -> None:
    """Make sure worker ``shop`` and domain ``shop.example.org`` exist (``shop`` is the
    document's example name, so a fuzzed DELETE may have removed it)."""
    with httpx.Client(base_url=url, headers=AUTH) as client:
        worker = client.post(
            "/admin/workers", json={"name": "shop", "upstreams": ["http://127.0.0.1:9"]}
        )
        assert worker.status_code in (201, 409)
        domain = client.post(
            "/admin/domains", json={"domain": "shop.example.org", "worker": "shop"}
        )
        assert domain.status_code in (201, 409)


_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


#: Built from the same function that serves /openapi.json (test_the_served_document_is_the_
#: built_one pins that); schemathesis needs it at collection time, before any server runs.
@schemathesis.serializer("application/x-ndjson")
def _ndjson(_context: Any, value: Any) -> bytes:
    """An import body (JSON lines) is text: sent as the string generated."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else str(value).encode()


admin_schema = schemathesis.openapi.from_dict(openapi_document()).include(path_regex="^/admin/")


@pytest.fixture(scope="module")
def seeded_operations(fuzzed: str) -> set[str]:
    """The operations whose run has (re-)created the seed on this dispatcher."""
    return set()


@admin_schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_schemathesis_finds_no_server_error(
    case: schemathesis.Case, fuzzed: str, seeded_operations: set[str]
) -> None:
    """Examples, coverage (boundaries, enums, missing fields) and fuzzing, positive and
    negative, per admin operation: no 5xx, answers as documented, invalid input refused."""
    if case.operation.label not in seeded_operations:
        seed(fuzzed)
        seeded_operations.add(case.operation.label)
    case.call_and_validate(base_url=fuzzed, headers=AUTH, checks=_CHECKS, timeout=10)


class _BrokenState:
    worker_count = 0

    async def health_report(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    @property
    def registry(self) -> Any:
        raise RuntimeError("secret driver text")


@pytest.mark.anyio
async def test_unexpected_errors_are_the_contract_json() -> None:
    app = create_control_app(Settings(admin_token=TOKEN), _BrokenState())
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/admin/workers", headers=AUTH)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text
