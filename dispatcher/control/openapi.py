"""The OpenAPI 3.1 document of the control plane and the admin API.

Built from the pydantic models (``dispatcher.control.schemas`` for the control plane's own
answers, ``workers_registry.models`` and ``dispatcher.control.admin`` for the admin API), so the
document changes when a model does. Every route the control plane serves is described here,
including the error contract's body and the bearer scheme of ``/admin``. Pure: no I/O, no
settings; ``openapi_document()`` returns a fresh dict.

The generated schemas are the models' own; this module adds only what a model cannot say about
itself: the syntax of a worker name (the one validator lowercases and checks the reserved list;
the document gives the pattern) and of an upstream URL, so generated examples look like real
input.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from dispatcher import __version__
from dispatcher.control.admin import DomainList, Imported, WorkerList
from dispatcher.control.schemas import (
    DispatchInfo,
    ErrorBody,
    Health,
    HealthDetailed,
    ServiceInfo,
    TlsPermission,
)
from workers_registry.models import (
    UPSTREAM_URL_PATTERN,
    CustomDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    Worker,
    WorkerCreate,
)

__all__ = ["OPENAPI_VERSION", "WORKER_NAME_PATTERN", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"

#: RFC 1123 label syntax, either case (names are compared lowercased).
WORKER_NAME_PATTERN: Final = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"

_MODELS: Final[list[tuple[type[BaseModel], JsonSchemaMode]]] = [
    (ServiceInfo, "serialization"),
    (Health, "serialization"),
    (HealthDetailed, "serialization"),
    (DispatchInfo, "serialization"),
    (TlsPermission, "serialization"),
    (ErrorBody, "serialization"),
    (WorkerCreate, "validation"),
    (CustomDomainCreate, "validation"),
    (CustomDomainPatch, "validation"),
    (Worker, "serialization"),
    (CustomDomain, "serialization"),
    (WorkerList, "serialization"),
    (DomainList, "serialization"),
    (Imported, "serialization"),
]

_REF = "#/components/schemas/{model}"

# (status, component name, error codes, description)
_ERRORS: Final = [
    ("400", "InvalidRequest", "invalid_request", "Invalid body or parameter; see `details`."),
    ("401", "Unauthorized", "unauthorized", "Missing or wrong bearer token."),
    ("403", "AdminDisabled", "admin_disabled", "No `admin_token` is configured."),
    ("404", "WorkerNotFound", "worker_not_found", "No such worker."),
    ("404", "DomainNotFound", "domain_not_found", "No such custom domain."),
    ("405", "MethodNotAllowed", "method_not_allowed", "Method not allowed on this path."),
    ("409", "Conflict", "conflict", "Already registered."),
    ("413", "PayloadTooLarge", "payload_too_large", "Request body too large."),
    ("503", "RegistryUnavailable", "registry_unavailable", "The registry cannot be reached."),
]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh, JSON-ready dict)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Edge dispatcher",
            "version": __version__,
            "summary": "Control plane and operator API of the multi-tenant edge dispatcher.",
            "description": (
                "Served on control hosts only (`localhost`, IP literals, each base domain's "
                "apex and `control_hosts`): on a tenant host every path belongs to the tenant. "
                "Every error the dispatcher produces itself is JSON: "
                '`{"error": {"code", "message", "request_id", "details"?}}`.'
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "control", "description": "Service information, health and routing help."},
            {"name": "workers", "description": "Admin API: registered workers."},
            {"name": "domains", "description": "Admin API: custom domains."},
        ],
        "paths": {**_control_paths(), **_admin_paths()},
        "components": _components(),
    }


# -- components ---------------------------------------------------------------------------------


def _components() -> dict[str, Any]:
    _, top = models_json_schema(_MODELS, ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    for name in ("WorkerCreate", "Worker"):
        _describe_worker_fields(schemas[name])
    for name in ("CustomDomainCreate", "CustomDomain"):
        schemas[name]["properties"]["worker"].update(_worker_name_schema())
        schemas[name]["properties"]["domain"].update(_domain_schema())
    patch_worker = schemas["CustomDomainPatch"]["properties"]["worker"]["anyOf"][0]
    patch_worker.update(_worker_name_schema())
    schemas["WorkerReplace"] = _worker_replace(schemas["WorkerCreate"])
    return {
        "schemas": schemas,
        "responses": {
            name: _error_response(description, code) for _, name, code, description in _ERRORS
        }
        | {"Unauthorized": _unauthorized()},
        "headers": {
            "X-Request-ID": {
                "description": "The request id; also in the error body and the logs.",
                "schema": {"type": "string"},
            }
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "The dispatcher's `admin_token` setting.",
            }
        },
    }


def _worker_name_schema() -> dict[str, Any]:
    return {
        "pattern": WORKER_NAME_PATTERN,
        "examples": ["shop"],
        "description": "Worker name: 1-63 characters a-z, 0-9 and '-', not starting or ending "
        "with '-', compared lowercased; reserved names are refused.",
    }


def _domain_schema() -> dict[str, Any]:
    return {
        "format": "hostname",
        "examples": ["shop.example.org"],
        "description": "Fully qualified domain name; stored lowercased in IDNA ASCII form "
        "(Unicode input is converted).",
    }


def _describe_worker_fields(schema: dict[str, Any]) -> None:
    properties = schema["properties"]
    properties["name"].update(_worker_name_schema())
    properties["upstreams"]["items"].update(
        {
            "pattern": UPSTREAM_URL_PATTERN,
            "description": "Base URL (http or https), optionally with a base path; "
            "no credentials, query or fragment.",
        }
    )


def _worker_replace(create: dict[str, Any]) -> dict[str, Any]:
    # The body of PUT: WorkerCreate whose name may be left out (it is in the path).
    replace = copy.deepcopy(create)
    replace["title"] = "WorkerReplace"
    replace["description"] = (
        "A worker's new settings (the body of `PUT /admin/workers/{name}`). `name` may be "
        "omitted; if given it must be the name in the path (workers cannot be renamed)."
    )
    replace["required"] = [field for field in replace["required"] if field != "name"]
    return replace


def _error_response(description: str, code: str) -> dict[str, Any]:
    return {
        "description": f"`{code}`: {description}",
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {
            "application/json": {
                "schema": _ref("ErrorBody"),
                "example": {
                    "error": {"code": code, "message": description, "request_id": "b3c1f0d2"}
                },
            }
        },
    }


def _unauthorized() -> dict[str, Any]:
    response = _error_response("Missing or wrong bearer token.", "unauthorized")
    response["headers"]["WWW-Authenticate"] = {
        "description": "`Bearer` challenge (RFC 6750).",
        "schema": {"type": "string"},
    }
    return response


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=schema)}


def _errors(*names: str) -> dict[str, Any]:
    statuses = {name: status for status, name, _, _ in _ERRORS}
    return {statuses[name]: {"$ref": f"#/components/responses/{name}"} for name in names}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _body(schema: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }


# -- control plane ------------------------------------------------------------------------------


def _control_paths() -> dict[str, Any]:
    dispatch = {
        "get": {
            "tags": ["control"],
            "summary": "Namespace information and routing help",
            "description": (
                "Without a `worker` parameter: the number of workers and how to reach them. "
                "`/dispatch/<worker>/<path>` (path route) and `/dispatch?worker=<worker>` "
                "(query route) forward any method to the worker instead; those answers are "
                "the worker's."
            ),
            "responses": {"200": _json("Namespace information", "DispatchInfo")},
        }
    }
    paths: dict[str, Any] = {
        "/": _get(
            "getServiceInfo", "Service information", _json("Service information", "ServiceInfo")
        ),
        "/health": _get(
            "getHealth",
            "Liveness (no I/O)",
            _json("The process is alive", "Health"),
        ),
        "/health/detailed": _get(
            "getHealthDetailed",
            "Readiness: registry probe, snapshot, caches",
            _json("Every check passed", "HealthDetailed"),
            {"503": _json("At least one check failed (`degraded`)", "HealthDetailed")},
        ),
        "/dispatch": _with_operation_id(dispatch, "getDispatchInfo"),
        "/api/dispatch": _with_operation_id(dispatch, "getApiDispatchInfo"),
        "/tls/ask": _get(
            "tlsAsk",
            "May a certificate be issued for this host? (Caddy on-demand TLS)",
            _json(
                "Yes: an active or verified custom domain, or `<worker>.<base>`.",
                "TlsPermission",
            ),
            {
                "400": {"$ref": "#/components/responses/InvalidRequest"},
                "404": _error_response("No certificate for this host.", "domain_not_found"),
            },
            parameters=[
                {
                    "name": "domain",
                    "in": "query",
                    "required": True,
                    "description": "The host name Caddy is about to get a certificate for.",
                    "schema": {"type": "string"},
                }
            ],
        ),
        "/metrics": _get(
            "getMetrics",
            "Prometheus metrics",
            {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        ),
        "/openapi.json": _get(
            "getOpenAPI",
            "This document",
            {
                "description": "OpenAPI 3.1 document",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        ),
        "/docs": _get(
            "getDocs",
            "Interactive API documentation (works offline)",
            {
                "description": "HTML page",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
        ),
    }
    return paths


def _get(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    others: dict[str, Any] | None = None,
    *,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["control"],
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, **(others or {})},
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _with_operation_id(item: dict[str, Any], operation_id: str) -> dict[str, Any]:
    item = copy.deepcopy(item)
    item["get"]["operationId"] = operation_id
    return item


# -- admin API ----------------------------------------------------------------------------------


def _admin(
    tag: str,
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [tag],
        "operationId": operation_id,
        "summary": summary,
        "security": [{"bearerAuth": []}],
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    guard = _errors("Unauthorized", "AdminDisabled", "RegistryUnavailable")
    if body is not None:
        guard |= _errors("PayloadTooLarge")
    operation["responses"] = {**responses, **guard}
    return operation


def _admin_paths() -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "Worker name (a reserved or malformed name answers 400).",
        "schema": {"type": "string", **_worker_name_schema()},
    }
    domain = {
        "name": "domain",
        "in": "path",
        "required": True,
        "description": "Custom domain (case-insensitive; IDNA or Unicode).",
        "schema": {"type": "string", "minLength": 1, **_domain_schema()},
    }
    worker_filter = {
        "name": "worker",
        "in": "query",
        "required": False,
        "description": "Only the domains of this worker.",
        "schema": {"type": "string", "pattern": WORKER_NAME_PATTERN},
    }
    deleted = {"description": "Deleted (no body)"}
    return {
        "/admin/workers": {
            "get": _admin(
                "workers",
                "listWorkers",
                "List workers",
                {"200": _json("Every worker, by name", "WorkerList")},
            ),
            "post": _admin(
                "workers",
                "createWorker",
                "Register a worker",
                {
                    "201": _json("The stored worker", "Worker"),
                    **_errors("InvalidRequest", "Conflict"),
                },
                body=_body("WorkerCreate", "The worker to register"),
            ),
        },
        "/admin/workers/{name}": {
            "parameters": [name],
            "get": _admin(
                "workers",
                "getWorker",
                "Show a worker",
                {
                    "200": _json("The worker", "Worker"),
                    **_errors("InvalidRequest", "WorkerNotFound"),
                },
            ),
            "put": _admin(
                "workers",
                "replaceWorker",
                "Replace a worker's settings",
                {
                    "200": _json("The replaced worker", "Worker"),
                    **_errors("InvalidRequest", "WorkerNotFound"),
                },
                body=_body("WorkerReplace", "Every setting; the name may be omitted"),
            ),
            "delete": _admin(
                "workers",
                "deleteWorker",
                "Remove a worker and its custom domains",
                {"204": deleted, **_errors("InvalidRequest", "WorkerNotFound")},
            ),
        },
        "/admin/domains": {
            "get": _admin(
                "domains",
                "listDomains",
                "List custom domains",
                {
                    "200": _json("Every custom domain, by domain", "DomainList"),
                    **_errors("InvalidRequest"),
                },
                parameters=[worker_filter],
            ),
            "post": _admin(
                "domains",
                "createDomain",
                "Register a custom domain",
                {
                    "201": _json("The stored custom domain", "CustomDomain"),
                    **_errors("InvalidRequest", "Conflict"),
                },
                body=_body("CustomDomainCreate", "The domain and its worker (which must exist)"),
            ),
        },
        "/admin/domains/{domain}": {
            "parameters": [domain],
            "get": _admin(
                "domains",
                "getDomain",
                "Show a custom domain",
                {
                    "200": _json("The custom domain", "CustomDomain"),
                    **_errors("InvalidRequest", "DomainNotFound"),
                },
            ),
            "patch": _admin(
                "domains",
                "updateDomain",
                "Change a custom domain's status and/or worker",
                {
                    "200": _json("The changed custom domain", "CustomDomain"),
                    **_errors("InvalidRequest", "DomainNotFound"),
                },
                body=_body("CustomDomainPatch", "The fields to change"),
            ),
            "delete": _admin(
                "domains",
                "deleteDomain",
                "Remove a custom domain",
                {"204": deleted, **_errors("InvalidRequest", "DomainNotFound")},
            ),
        },
        "/admin/import/workers": {"post": _import("workers", "importWorkers")},
        "/admin/import/domains": {"post": _import("domains", "importDomains")},
    }


def _import(tag: str, operation_id: str) -> dict[str, Any]:
    """A bulk import: the file as the body, one transaction (README, "Bulk import")."""
    lines = {"type": "string", "description": "One record per line"}
    return _admin(
        tag,
        operation_id,
        f"Add many {tag} in one transaction (JSON lines or CSV; a bad line writes nothing)",
        {
            "201": _json("How many records were added", "Imported"),
            **_errors("InvalidRequest", "Conflict"),
        },
        body={
            "required": True,
            "description": "JSON lines (the body of one POST per line), or CSV with a header",
            "content": {"application/x-ndjson": {"schema": lines}, "text/csv": {"schema": lines}},
        },
    )
