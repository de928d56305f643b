"""The operator HTTP API under ``/admin`` (README, "Admin HTTP API").

    GET    /admin/workers             -> 200 {"workers": [...]}
    POST   /admin/workers             -> 201 the stored worker
    GET    /admin/workers/{name}      -> 200 the worker
    PUT    /admin/workers/{name}      -> 200 the replaced worker (body: no name, or the same name)
    DELETE /admin/workers/{name}      -> 204
    GET    /admin/domains[?worker=W]  -> 200 {"domains": [...]}
    POST   /admin/domains             -> 201 the stored custom domain
    GET    /admin/domains/{domain}    -> 200 the custom domain
    PATCH  /admin/domains/{domain}    -> 200 the changed custom domain (status and/or worker)
    DELETE /admin/domains/{domain}    -> 204
    POST   /admin/domains/{domain}/verify -> 200 the domain after a check made now
    POST   /admin/import/workers      -> 201 {"imported": N}: a JSON lines or CSV file, at once
    POST   /admin/import/domains      -> 201 {"imported": N}: the same, for custom domains

Domains are answered with their verification record (``DomainRecord``); a new domain must
pass ``dispatcher.onboarding.check_placement`` too (base domains, control hosts, names under
a base domain unless vouched for with ``active``; README, "Custom domains: onboarding").

The routes are served by the control plane, so only on control hosts. ``AdminGuard`` runs
before any of them: with no ``admin_token`` configured every path answers 403
``admin_disabled``; otherwise a missing or wrong ``Authorization: Bearer`` token answers 401
``unauthorized``. Bodies and path parameters go through the registry's pydantic models and the
one worker-name validator (with the configured reserved names); whatever they reject becomes
400 ``invalid_request`` with one ``details`` entry per field. Bodies are JSON with JSON's own
types (strict: ``"8"`` is not a number); unknown query parameters are refused, not ignored,
so a typo cannot widen a listing. Handlers raise ``DispatcherError``
subclasses; the control plane's exception handler writes the contract's JSON. This module does
no SQL of its own: the ``RegistryStore`` does, and maps database errors.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dispatcher.asgi import ASGIApp, Receive, Scope, Send
from dispatcher.control.operations import ADMIN_OPERATIONS, IMPORT_MEDIA_TYPES, Operation
from dispatcher.control.schemas import DomainList, Imported, WorkerList
from dispatcher.errors import (
    AdminDisabled,
    DomainNotFound,
    InvalidHost,
    InvalidRequest,
    PayloadTooLarge,
    RoutingError,
    Unauthorized,
    UnsupportedMediaType,
    WorkerNotFound,
)
from dispatcher.hosts import normalize_domain
from dispatcher.onboarding import (
    DomainVerifier,
    check_placement,
    domain_records,
    log_operator_status,
)
from dispatcher.settings import Settings
from workers_registry.bulk import ImportFormat, parse_domains, parse_workers
from workers_registry.models import (
    CheckedDomain,
    CustomDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    DomainRecord,
    WorkerCreate,
)
from workers_registry.store import RegistryStore

__all__ = [
    "MAX_ADMIN_BODY_BYTES",
    "MAX_IMPORT_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "AdminGuard",
    "admin_routes",
]

ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]

#: Admin bodies are a few hundred bytes; anything much larger is a mistake or an attack.
MAX_ADMIN_BODY_BYTES = 1024 * 1024
#: An import body (``POST /admin/import/...``): ~600,000 domains or ~200,000 workers.
MAX_IMPORT_BODY_BYTES = 64 * 1024 * 1024

#: Admin bodies nest two levels (a worker's ``tags``); deeper is refused before parsing.
MAX_JSON_DEPTH = 32

_BEARER = b"bearer "
_JSON_HEADERS = {"cache-control": "no-store"}


class AdminGuard:
    """Pure ASGI gate in front of every admin route: disabled (403), then bearer auth (401).

    The token is compared with ``hmac.compare_digest`` on bytes, so the time taken does not
    depend on how much of a guess is right. Per RFC 6750 section 3.1, a request without
    credentials gets a bare ``Bearer`` challenge and one with a wrong token gets
    ``error="invalid_token"``.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        token = settings.admin_token
        self._token = None if token is None else token.get_secret_value().encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self._check(scope)
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> None:
        if self._token is None:
            raise AdminDisabled()
        presented = _bearer_token(scope)
        if presented is None:
            raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(presented, self._token):
            raise Unauthorized(
                "Invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )


def _bearer_token(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            # The scheme is case-insensitive (RFC 7235 section 2.1).
            if value[: len(_BEARER)].lower() == _BEARER:
                return bytes(value[len(_BEARER) :].strip())
            return None
    return None


def admin_routes(
    settings: Settings,
    store: Callable[[], RegistryStore],
    verifier: Callable[[], DomainVerifier],
) -> list[BaseRoute]:
    """The ``/admin`` routes, guarded by ``AdminGuard``.

    ``store`` and ``verifier`` return the running dispatcher's registry store and domain
    verifier (they raise ``RegistryUnavailable`` before the lifespan has opened them).
    """
    context = settings.registration_context

    async def records(domains: list[CustomDomain]) -> list[DomainRecord]:
        return await domain_records(store(), settings, domains)

    async def record(domain: CustomDomain) -> DomainRecord:
        return (await records([domain]))[0]

    def worker_name(request: Request) -> str:
        value = str(request.path_params["name"])
        try:
            return settings.validate_worker_name(value)
        except RoutingError as exc:
            raise _invalid("name", exc.message) from None

    async def list_workers(request: Request) -> Response:
        workers = await store().list_workers()
        return _json(WorkerList(workers=workers))

    async def create_worker(request: Request) -> Response:
        spec = _validate(WorkerCreate, await _read_json(request), context)
        worker = await store().add_worker(spec)
        return _json(worker, 201, location=f"/admin/workers/{worker.name}")

    async def show_worker(request: Request) -> Response:
        name = worker_name(request)
        worker = await store().get_worker(name)
        if worker is None:
            raise _worker_missing(name)
        return _json(worker)

    async def replace_worker(request: Request) -> Response:
        name = worker_name(request)
        body = await _read_json(request)
        if isinstance(body, dict) and "name" not in body:
            body = {**body, "name": name}  # the name is optional: it is in the path
        spec = _validate(WorkerCreate, body, context)
        if spec.name != name:
            message = (
                f"The body names worker '{spec.name}', the path '{name}': renaming is not supported"
            )
            raise _invalid("name", message)
        return _json(await store().replace_worker(name, spec))

    async def remove_worker(request: Request) -> Response:
        await store().remove_worker(worker_name(request))
        return Response(status_code=204, headers=_JSON_HEADERS)

    async def list_domains(request: Request) -> Response:
        worker = request.query_params.get("worker")
        if worker is not None:
            try:
                worker = settings.validate_worker_name(worker)
            except RoutingError as exc:
                raise _invalid("worker", exc.message) from None
        domains = await store().list_domains(worker)
        return _json(DomainList(domains=await records(domains)))

    async def create_domain(request: Request) -> Response:
        spec = _validate(CustomDomainCreate, await _read_json(request), context)
        check_placement(spec, settings)
        domain = await store().add_domain(spec)
        verifier().wake()
        return _json(await record(domain), 201, location=f"/admin/domains/{domain.domain}")

    async def show_domain(request: Request) -> Response:
        key = _domain_param(request)
        domain = await store().get_domain(key)
        if domain is None:
            raise _domain_missing(key)
        return _json(await record(domain))

    async def update_domain(request: Request) -> Response:
        key = _domain_param(request)
        patch = _validate(CustomDomainPatch, await _read_json(request), context)
        domain = await store().update_domain(key, patch)
        if patch.status is not None:
            log_operator_status(domain, "admin API")
            verifier().wake()
        return _json(await record(domain))

    async def verify_domain(request: Request) -> Response:
        report = await verifier().check(_domain_param(request))
        shown = await record(report.domain)
        return _json(CheckedDomain(**dict(shown), check=report.model()))

    async def remove_domain(request: Request) -> Response:
        await store().remove_domain(_domain_param(request))
        return Response(status_code=204, headers=_JSON_HEADERS)

    # Parsing and validating up to a few hundred thousand records takes seconds: off the
    # event loop, so the requests being forwarded meanwhile are not held up.
    async def import_workers(request: Request) -> Response:
        lines, fmt = await _read_import(request)
        parsed = await asyncio.to_thread(parse_workers, lines, fmt, context=context)
        count = await store().import_workers(parsed.records, parsed.labels)
        return _json(Imported(imported=count), 201)

    async def import_domains(request: Request) -> Response:
        lines, fmt = await _read_import(request)

        def check(spec: CustomDomainCreate) -> None:
            check_placement(spec, settings)

        parsed = await asyncio.to_thread(parse_domains, lines, fmt, context=context, check=check)
        count = await store().import_domains(parsed.records, parsed.labels)
        return _json(Imported(imported=count), 201)

    handlers: dict[str, Handler] = {
        "importWorkers": import_workers,
        "importDomains": import_domains,
        "listWorkers": list_workers,
        "createWorker": create_worker,
        "getWorker": show_worker,
        "replaceWorker": replace_worker,
        "deleteWorker": remove_worker,
        "listDomains": list_domains,
        "createDomain": create_domain,
        "getDomain": show_domain,
        "updateDomain": update_domain,
        "deleteDomain": remove_domain,
        "verifyDomain": verify_domain,
    }
    paths: dict[str, list[Operation]] = {}
    for operation in ADMIN_OPERATIONS:
        paths.setdefault(operation.path.removeprefix("/admin"), []).append(operation)
    routes = [_route(path, operations, handlers) for path, operations in paths.items()]
    return [Mount("/admin", routes=routes, middleware=[Middleware(AdminGuard, settings=settings)])]


def _route(path: str, operations: list[Operation], handlers: dict[str, Handler]) -> Route:
    """One route per path, so a 405 answer's ``Allow`` lists every method of the path.

    A method takes the query parameters its declaration names; any other is refused, so a
    typo (``?wroker=shop``) is an error instead of silently meaning "everything".
    """
    by_method = {operation.method: handlers[operation.operation_id] for operation in operations}
    accepted = {
        operation.method: parameter.name
        for operation in operations
        for parameter in operation.parameters
        if parameter.location == "query"
    }

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        _check_query(request, accepted.get(method))
        return await by_method[method](request)

    return Route(path, endpoint, methods=list(by_method))


def _check_query(request: Request, accepted: str | None) -> None:
    details = []
    for name in dict.fromkeys(request.query_params.keys()):
        if name != accepted:
            details.append({"field": name, "message": f"Unknown query parameter {name!r}"})
        elif len(request.query_params.getlist(name)) > 1:
            details.append({"field": name, "message": f"Query parameter {name!r} is repeated"})
    if details:
        fields = ", ".join(detail["field"] for detail in details)
        raise InvalidRequest(f"Invalid query parameters: {fields}", details=details)


def _json(content: BaseModel, status: int = 200, *, location: str | None = None) -> Response:
    headers = dict(_JSON_HEADERS)
    if location is not None:
        headers["location"] = location
    return JSONResponse(content.model_dump(mode="json"), status_code=status, headers=headers)


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, details=[{"field": field, "message": message}])


def _worker_missing(name: str) -> WorkerNotFound:
    return WorkerNotFound(f"Worker '{name}' does not exist")


def _domain_missing(domain: str) -> DomainNotFound:
    return DomainNotFound(f"Domain '{domain}' is not registered")


def _domain_param(request: Request) -> str:
    value = str(request.path_params["domain"])
    try:
        return normalize_domain(value.strip())
    except InvalidHost as exc:
        raise _invalid("domain", f"{value!r} is not a valid domain name: {exc.message}") from None


async def _read_import(request: Request) -> tuple[list[str], ImportFormat]:
    """An import body's lines and format, read up to ``MAX_IMPORT_BODY_BYTES``; 415 unless it
    is declared ``application/x-ndjson`` or ``text/csv``."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in IMPORT_MEDIA_TYPES:
        raise UnsupportedMediaType(
            "An import is sent as application/x-ndjson (JSON lines) or text/csv"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMPORT_BODY_BYTES:
            raise PayloadTooLarge(f"An import body is limited to {MAX_IMPORT_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("body", "The body is not UTF-8") from None
    return text.splitlines(), "csv" if media_type == "text/csv" else "jsonl"


async def _read_json(request: Request) -> Any:
    """The request body parsed as JSON, read up to ``MAX_ADMIN_BODY_BYTES``.

    Only a body declared ``application/json`` (parameters allowed) is read: anything else is
    415, so a form a browser can send cross-site without a preflight is never taken for JSON.
    Nesting deeper than ``MAX_JSON_DEPTH`` is 400, decided before the parser recurses.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("Admin request bodies must be sent as application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ADMIN_BODY_BYTES:
            raise PayloadTooLarge(
                f"Admin request bodies are limited to {MAX_ADMIN_BODY_BYTES} bytes"
            )
    if not body:
        raise _invalid("body", "A JSON object is required")
    if _nesting(body) > MAX_JSON_DEPTH:
        raise _invalid("body", f"The body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
        # "\ud800" escapes decode to lone surrogates, which no database can store as text
        # (RFC 8259 section 8.2): refuse them here rather than fail in the driver.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError):
        raise _invalid("body", "The body is not valid JSON") from None
    return data


def _nesting(body: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings
    are not counted), found without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would accept NaN and Infinity


def _validate(model: type[ModelT], data: Any, context: dict[str, Any]) -> ModelT:
    """``data`` (parsed JSON) as ``model``, with JSON's own types: strict mode refuses
    ``false`` or ``"5"`` for a number, which lax mode would turn into 0 and 5."""
    try:
        return model.model_validate_json(json.dumps(data), strict=True, context=context)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "body",
                "message": error["msg"].removeprefix("Value error, "),
            }
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        fields = ", ".join(dict.fromkeys(detail["field"] for detail in details))
        raise InvalidRequest(f"Invalid fields: {fields}", details=details) from None
