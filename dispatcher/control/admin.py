"""The operator HTTP API under ``/admin`` (DESIGN.md, "Operator interfaces", "Contract details").

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
    POST   /admin/import/workers      -> 201 {"imported": N} (JSON lines or CSV, one transaction)
    POST   /admin/import/domains      -> 201 {"imported": N} (the same, for custom domains)

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
from dispatcher.errors import (
    AdminDisabled,
    DomainNotFound,
    InvalidHost,
    InvalidRequest,
    PayloadTooLarge,
    RoutingError,
    Unauthorized,
    WorkerNotFound,
)
from dispatcher.hosts import normalize_domain
from dispatcher.settings import Settings
from workers_registry.bulk import ImportFormat, parse_domains, parse_workers
from workers_registry.models import (
    CustomDomain,
    CustomDomainCreate,
    CustomDomainPatch,
    Worker,
    WorkerCreate,
)
from workers_registry.store import RegistryStore

__all__ = [
    "MAX_ADMIN_BODY_BYTES",
    "MAX_IMPORT_BODY_BYTES",
    "AdminGuard",
    "DomainList",
    "WorkerList",
    "admin_routes",
]

ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]

#: Admin bodies are a few hundred bytes; anything much larger is a mistake or an attack.
MAX_ADMIN_BODY_BYTES = 1024 * 1024
#: An import body (``POST /admin/import/...``): ~600,000 domains or ~200,000 workers.
MAX_IMPORT_BODY_BYTES = 64 * 1024 * 1024

_BEARER = b"bearer "
_JSON_HEADERS = {"cache-control": "no-store"}


class WorkerList(BaseModel):
    """The body of ``GET /admin/workers``."""

    workers: list[Worker]


class DomainList(BaseModel):
    """The body of ``GET /admin/domains``."""

    domains: list[CustomDomain]


class Imported(BaseModel):
    """The body of ``POST /admin/import/workers`` and ``POST /admin/import/domains``."""

    imported: int


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


def admin_routes(settings: Settings, store: Callable[[], RegistryStore]) -> list[BaseRoute]:
    """The ``/admin`` routes, guarded by ``AdminGuard``.

    ``store`` returns the running dispatcher's registry store (it raises
    ``RegistryUnavailable`` before the lifespan has opened one).
    """
    context = {"reserved_names": settings.reserved}

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
        return _json(DomainList(domains=await store().list_domains(worker)))

    async def create_domain(request: Request) -> Response:
        spec = _validate(CustomDomainCreate, await _read_json(request), context)
        domain = await store().add_domain(spec)
        return _json(domain, 201, location=f"/admin/domains/{domain.domain}")

    async def show_domain(request: Request) -> Response:
        key = _domain_param(request)
        domain = await store().get_domain(key)
        if domain is None:
            raise _domain_missing(key)
        return _json(domain)

    async def update_domain(request: Request) -> Response:
        key = _domain_param(request)
        patch = _validate(CustomDomainPatch, await _read_json(request), context)
        return _json(await store().update_domain(key, patch))

    async def remove_domain(request: Request) -> Response:
        await store().remove_domain(_domain_param(request))
        return Response(status_code=204, headers=_JSON_HEADERS)

    # Parsing and validating up to a few hundred thousand records takes seconds: off the
    # event loop, so the requests being forwarded meanwhile are not held up.
    async def import_workers(request: Request) -> Response:
        lines, fmt = await _read_import(request)
        parsed = await asyncio.to_thread(parse_workers, lines, fmt, reserved=settings.reserved)
        count = await store().import_workers(parsed.records, parsed.labels)
        return _json(Imported(imported=count), 201)

    async def import_domains(request: Request) -> Response:
        lines, fmt = await _read_import(request)
        parsed = await asyncio.to_thread(parse_domains, lines, fmt, reserved=settings.reserved)
        count = await store().import_domains(parsed.records, parsed.labels)
        return _json(Imported(imported=count), 201)

    routes = [
        _route("/import/workers", {"POST": import_workers}),
        _route("/import/domains", {"POST": import_domains}),
        _route("/workers", {"GET": list_workers, "POST": create_worker}),
        _route(
            "/workers/{name}", {"GET": show_worker, "PUT": replace_worker, "DELETE": remove_worker}
        ),
        _route("/domains", {"GET": list_domains, "POST": create_domain}, query={"GET": "worker"}),
        _route(
            "/domains/{domain}",
            {"GET": show_domain, "PATCH": update_domain, "DELETE": remove_domain},
        ),
    ]
    return [Mount("/admin", routes=routes, middleware=[Middleware(AdminGuard, settings=settings)])]


def _route(
    path: str, handlers: dict[str, Handler], *, query: dict[str, str] | None = None
) -> Route:
    """One route per path, so a 405 answer's ``Allow`` lists every method of the path.

    ``query`` names the one query parameter a method takes; any other is refused, so a typo
    (``?wroker=shop``) is an error instead of silently meaning "everything".
    """
    accepted = query or {}

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        _check_query(request, accepted.get(method))
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers))


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


async def _read_body(request: Request, limit: int) -> bytearray:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"This admin request body is limited to {limit} bytes")
    return body


async def _read_import(request: Request) -> tuple[list[str], ImportFormat]:
    """An import body's lines and format: CSV for ``Content-Type: text/csv``, else JSON lines."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, MAX_IMPORT_BODY_BYTES)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("body", "The body is not UTF-8") from None
    return text.splitlines(), "csv" if content_type == "text/csv" else "jsonl"


async def _read_json(request: Request) -> Any:
    """The request body parsed as JSON, read up to ``MAX_ADMIN_BODY_BYTES``."""
    body = await _read_body(request, MAX_ADMIN_BODY_BYTES)
    if not body:
        raise _invalid("body", "A JSON object is required")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
        # "\ud800" escapes decode to lone surrogates, which no database can store as text
        # (RFC 8259 section 8.2): refuse them here rather than fail in the driver.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError):
        raise _invalid("body", "The body is not valid JSON") from None
    return data


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
