"""The OpenAPI 3.1 document of the control plane and the admin API.

Rendered from the route declarations (``dispatcher.control.operations``: the same ones the
routes are built from) and the pydantic models they name (``dispatcher.control.schemas`` for
the control plane's own answers, ``workers_registry.models`` for the admin API), so the
document changes when a route or a model does. It adds the error contract's body and the
bearer scheme of ``/admin``. Pure: no I/O, no settings; ``openapi_document()`` returns a
fresh dict.

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
from dispatcher.control.operations import (
    ADMIN_OPERATIONS,
    CONTROL_OPERATIONS,
    Answer,
    Body,
    Operation,
    Parameter,
)
from dispatcher.control.schemas import ErrorBody
from workers_registry.models import UPSTREAM_URL_PATTERN

__all__ = ["OPENAPI_VERSION", "WORKER_NAME_PATTERN", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"

#: RFC 1123 label syntax, either case (names are compared lowercased).
WORKER_NAME_PATTERN: Final = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"

_OPERATIONS: Final = (*CONTROL_OPERATIONS, *ADMIN_OPERATIONS)

_REF = "#/components/schemas/{model}"

# (status, component name, error codes, description)
_ERRORS: Final = [
    ("400", "InvalidRequest", "invalid_request", "Invalid body or parameter; see `details`."),
    ("401", "Unauthorized", "unauthorized", "Missing or wrong bearer token."),
    ("403", "AdminDisabled", "admin_disabled", "No `admin_token` is configured."),
    ("404", "WorkerNotFound", "worker_not_found", "No such worker."),
    ("404", "DomainNotFound", "domain_not_found", "No such custom domain."),
    ("405", "MethodNotAllowed", "method_not_allowed", "Method not allowed on this path."),
    ("404", "NoCertificate", "domain_not_found", "No certificate for this host."),
    ("409", "Conflict", "conflict", "Already registered."),
    ("413", "PayloadTooLarge", "payload_too_large", "Request body too large."),
    (
        "415",
        "UnsupportedMediaType",
        "unsupported_media_type",
        "The body is not declared with a media type the operation takes (`application/json`;"
        " an import: `application/x-ndjson` or `text/csv`).",
    ),
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
        "paths": _paths(),
        "components": _components(),
    }


# -- components ---------------------------------------------------------------------------------


def _components() -> dict[str, Any]:
    _, top = models_json_schema(_models(), ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    for name in ("WorkerCreate", "Worker"):
        _describe_worker_fields(schemas[name])
    for name in ("CustomDomainCreate", "DomainRecord", "CheckedDomain"):
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


# -- paths, from the route declarations ---------------------------------------------------------


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Every model the declarations name: request bodies as validated, answers as serialised."""
    found: dict[type[BaseModel], JsonSchemaMode] = {ErrorBody: "serialization"}
    for operation in _OPERATIONS:
        if isinstance(operation.body, type):
            found[operation.body] = "validation"
        for answer in operation.answers.values():
            if isinstance(answer.body, type):
                found.setdefault(answer.body, "serialization")
    return list(found.items())


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for operation in _OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    return paths


def _operation(declared: Operation) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [declared.tag],
        "operationId": declared.operation_id,
        "summary": declared.summary,
    }
    if declared.description:
        operation["description"] = declared.description
    if declared.admin:
        operation["security"] = [{"bearerAuth": []}]
    if declared.parameters:
        operation["parameters"] = [_parameter(parameter) for parameter in declared.parameters]
    errors = list(declared.errors)
    if declared.body is not None:
        operation["requestBody"] = _body(_schema_name(declared.body), declared.body_description)
    elif declared.text_body:
        text = {"type": "string", "description": "One record per line"}
        operation["requestBody"] = {
            "required": True,
            "description": declared.body_description,
            "content": {media_type: {"schema": text} for media_type in declared.text_body},
        }
    if declared.admin:  # the guard answers these before any handler runs
        errors += ["Unauthorized", "AdminDisabled", "RegistryUnavailable"]
        if declared.body is not None or declared.text_body:
            errors += ["PayloadTooLarge", "UnsupportedMediaType"]
    operation["responses"] = {
        **{status: _answer(answer) for status, answer in declared.answers.items()},
        **_errors(*errors),
    }
    return operation


def _schema_name(body: Body) -> str:
    return body if isinstance(body, str) else body.__name__


def _answer(answer: Answer) -> dict[str, Any]:
    if answer.body is not None:
        return _json(answer.description, _schema_name(answer.body))
    if answer.media_type:
        schema = {"type": answer.body_type}
        return {
            "description": answer.description,
            "content": {answer.media_type: {"schema": schema}},
        }
    return {"description": answer.description}


def _parameter(parameter: Parameter) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if parameter.kind == "worker":
        schema |= _worker_name_schema()
    elif parameter.kind == "domain":
        schema |= {"minLength": 1, **_domain_schema()}
    return {
        "name": parameter.name,
        "in": parameter.location,
        "required": parameter.required,
        "description": parameter.description,
        "schema": schema,
    }
