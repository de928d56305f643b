"""Route declarations: what each control-plane and admin operation is, for serving and for docs.

Each operation is declared once (``Operation``): method, path, the handler's name, the models of
its body and answers, its parameters and the errors it may answer. The control plane and the
admin API build their Starlette routes from these declarations, and ``dispatcher.control.openapi``
renders the same declarations, with the pydantic models they name, into the OpenAPI document:
an operation is served exactly when it is described. Pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel

from dispatcher.control.schemas import (
    DispatchInfo,
    DomainList,
    Health,
    HealthDetailed,
    Imported,
    ServiceInfo,
    TlsPermission,
    WorkerList,
)
from workers_registry.models import (
    CheckedDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    DomainRecord,
    Worker,
    WorkerCreate,
)

__all__ = [
    "ADMIN_OPERATIONS",
    "CONTROL_OPERATIONS",
    "IMPORT_MEDIA_TYPES",
    "Answer",
    "Operation",
    "Parameter",
]

#: The media types of an import file: JSON lines, or CSV (neither can be sent cross-site
#: by a browser without a preflight).
IMPORT_MEDIA_TYPES: Final = ("application/x-ndjson", "text/csv")

#: A JSON body: a model, or the name of a schema the document derives from one.
Body = type[BaseModel] | str


@dataclass(frozen=True, slots=True)
class Answer:
    """One successful answer: its description and body (``None``: no body)."""

    description: str
    body: Body | None = None
    media_type: str = "application/json"
    #: JSON Schema ``type`` of a body that is not a model (text, HTML, any object).
    body_type: str = "object"


@dataclass(frozen=True, slots=True)
class Parameter:
    """A path or query parameter; ``kind`` says which syntax it follows."""

    name: str
    location: Literal["path", "query"]
    description: str
    required: bool = True
    kind: Literal["text", "worker", "domain"] = "text"


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path (plus ``aliases``: the same handler on other paths)."""

    method: str
    path: str
    operation_id: str  # also the key of its handler
    summary: str
    answers: Mapping[str, Answer]  # by status code
    tag: str = "control"
    description: str = ""
    #: Error answers, by the names of the error table in ``dispatcher.control.openapi``.
    errors: tuple[str, ...] = ()
    body: Body | None = None
    body_description: str = ""
    #: A body that is text, not JSON: the media types it may be sent as (an import file).
    text_body: tuple[str, ...] = ()
    parameters: tuple[Parameter, ...] = ()
    aliases: tuple[str, ...] = field(default=())
    #: Behind the admin guard: bearer auth, and its 401/403 (and 413 with a body).
    admin: bool = False


_DISPATCH_HELP = (
    "Without a `worker` parameter: the number of workers and how to reach them. "
    "`/dispatch/<worker>/<path>` (path route) and `/dispatch?worker=<worker>` "
    "(query route) forward any method to the worker instead; those answers are "
    "the worker's."
)

#: The control plane's own routes (the admin API's are ``dispatcher.control.admin``'s).
CONTROL_OPERATIONS: Final = (
    Operation(
        "GET",
        "/",
        "getServiceInfo",
        "Service information",
        {"200": Answer("Service information", ServiceInfo)},
    ),
    Operation(
        "GET",
        "/health",
        "getHealth",
        "Liveness (no I/O)",
        {"200": Answer("The process is alive", Health)},
    ),
    Operation(
        "GET",
        "/health/detailed",
        "getHealthDetailed",
        "Readiness: registry probe, snapshot, caches",
        {
            "200": Answer("Every check passed", HealthDetailed),
            "503": Answer("At least one check failed (`degraded`)", HealthDetailed),
        },
    ),
    Operation(
        "GET",
        "/dispatch",
        "getDispatchInfo",
        "Namespace information and routing help",
        {"200": Answer("Namespace information", DispatchInfo)},
        description=_DISPATCH_HELP,
        aliases=("/dispatch/",),
    ),
    Operation(
        "GET",
        "/api/dispatch",
        "getApiDispatchInfo",
        "Namespace information and routing help",
        {"200": Answer("Namespace information", DispatchInfo)},
        description=_DISPATCH_HELP,
        aliases=("/api/dispatch/",),
    ),
    Operation(
        "GET",
        "/tls/ask",
        "tlsAsk",
        "May a certificate be issued for this host? (Caddy on-demand TLS)",
        {
            "200": Answer(
                "Yes: an active or verified custom domain, or `<worker>.<base>`.", TlsPermission
            )
        },
        errors=("InvalidRequest", "NoCertificate"),
        parameters=(
            Parameter("domain", "query", "The host name Caddy is about to get a certificate for."),
        ),
    ),
    Operation(
        "GET",
        "/metrics",
        "getMetrics",
        "Prometheus metrics",
        {
            "200": Answer(
                "Prometheus text exposition format", media_type="text/plain", body_type="string"
            )
        },
    ),
    Operation(
        "GET",
        "/openapi.json",
        "getOpenAPI",
        "This document",
        {"200": Answer("OpenAPI 3.1 document", body_type="object")},
    ),
    Operation(
        "GET",
        "/docs",
        "getDocs",
        "Interactive API documentation (works offline)",
        {"200": Answer("HTML page", media_type="text/html", body_type="string")},
    ),
)

_NAME = Parameter(
    "name", "path", "Worker name (a reserved or malformed name answers 400).", kind="worker"
)
_DOMAIN = Parameter(
    "domain", "path", "Custom domain (case-insensitive; IDNA or Unicode).", kind="domain"
)
_DELETED = Answer("Deleted (no body)", media_type="")

#: The operator API under ``/admin`` (served by ``dispatcher.control.admin``).
ADMIN_OPERATIONS: Final = (
    Operation(
        "GET",
        "/admin/workers",
        "listWorkers",
        "List workers",
        {"200": Answer("Every worker, by name", WorkerList)},
        tag="workers",
        admin=True,
    ),
    Operation(
        "POST",
        "/admin/workers",
        "createWorker",
        "Register a worker",
        {"201": Answer("The stored worker", Worker)},
        tag="workers",
        errors=("InvalidRequest", "Conflict"),
        body=WorkerCreate,
        body_description="The worker to register",
        admin=True,
    ),
    Operation(
        "GET",
        "/admin/workers/{name}",
        "getWorker",
        "Show a worker",
        {"200": Answer("The worker", Worker)},
        tag="workers",
        errors=("InvalidRequest", "WorkerNotFound"),
        parameters=(_NAME,),
        admin=True,
    ),
    Operation(
        "PUT",
        "/admin/workers/{name}",
        "replaceWorker",
        "Replace a worker's settings",
        {"200": Answer("The replaced worker", Worker)},
        tag="workers",
        errors=("InvalidRequest", "WorkerNotFound"),
        body="WorkerReplace",
        body_description="Every setting; the name may be omitted",
        parameters=(_NAME,),
        admin=True,
    ),
    Operation(
        "DELETE",
        "/admin/workers/{name}",
        "deleteWorker",
        "Remove a worker and its custom domains",
        {"204": _DELETED},
        tag="workers",
        errors=("InvalidRequest", "WorkerNotFound"),
        parameters=(_NAME,),
        admin=True,
    ),
    Operation(
        "GET",
        "/admin/domains",
        "listDomains",
        "List custom domains",
        {"200": Answer("Every custom domain, by domain", DomainList)},
        tag="domains",
        errors=("InvalidRequest",),
        parameters=(
            Parameter("worker", "query", "Only the domains of this worker.", False, kind="worker"),
        ),
        admin=True,
    ),
    Operation(
        "POST",
        "/admin/domains",
        "createDomain",
        "Register a custom domain",
        {
            "201": Answer(
                "The stored custom domain, with the records the customer must create",
                DomainRecord,
            )
        },
        tag="domains",
        errors=("InvalidRequest", "Conflict"),
        body=CustomDomainCreate,
        body_description="The domain and its worker (which must exist)",
        admin=True,
    ),
    Operation(
        "GET",
        "/admin/domains/{domain}",
        "getDomain",
        "Show a custom domain",
        {"200": Answer("The custom domain and its verification record", DomainRecord)},
        tag="domains",
        errors=("InvalidRequest", "DomainNotFound"),
        parameters=(_DOMAIN,),
        admin=True,
    ),
    Operation(
        "PATCH",
        "/admin/domains/{domain}",
        "updateDomain",
        "Change a custom domain's status and/or worker",
        {"200": Answer("The changed custom domain", DomainRecord)},
        tag="domains",
        errors=("InvalidRequest", "DomainNotFound"),
        body=CustomDomainPatch,
        body_description="The fields to change",
        parameters=(_DOMAIN,),
        admin=True,
    ),
    Operation(
        "DELETE",
        "/admin/domains/{domain}",
        "deleteDomain",
        "Remove a custom domain",
        {"204": _DELETED},
        tag="domains",
        errors=("InvalidRequest", "DomainNotFound"),
        parameters=(_DOMAIN,),
        admin=True,
    ),
    Operation(
        "POST",
        "/admin/domains/{domain}/verify",
        "verifyDomain",
        "Check a custom domain's DNS records now",
        {"200": Answer("The domain after the check, and the check's result", CheckedDomain)},
        tag="domains",
        description="Runs the verifier's check at once, whatever the schedule, and writes its "
        'outcome (README, "Custom domains: onboarding").',
        errors=("InvalidRequest", "DomainNotFound"),
        parameters=(_DOMAIN,),
        admin=True,
    ),
    *(
        Operation(
            "POST",
            f"/admin/import/{what}",
            f"import{what.capitalize()}",
            f"Add many {what} in one transaction",
            {"201": Answer("How many were added", Imported)},
            tag=what,
            description="The body is a file: JSON lines (the body of one create per line) or "
            "CSV with a header line. Validated whole first: a bad line rejects it with its "
            'number and nothing is written (README, "Bulk import").',
            errors=("InvalidRequest", "Conflict"),
            body_description="JSON lines, or CSV with a header line",
            text_body=IMPORT_MEDIA_TYPES,
            admin=True,
        )
        for what in ("workers", "domains")
    ),
)
