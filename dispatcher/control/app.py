"""The dispatcher's own endpoints (Starlette), served on control hosts only.

The gateway hands a request here only when routing said "control plane"; tenant hosts never
reach this app. Every error is the contract's JSON shape with the gateway's request id.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dispatcher import __version__
from dispatcher.control.admin import admin_routes
from dispatcher.control.docs import docs_page, docs_routes
from dispatcher.control.openapi import openapi_document
from dispatcher.control.operations import CONTROL_OPERATIONS
from dispatcher.errors import (
    DispatcherError,
    DomainNotFound,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from dispatcher.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dispatcher.onboarding import DomainVerifier
from dispatcher.responses import error_body
from dispatcher.settings import Settings
from workers_registry.store import RegistryStore

__all__ = ["REQUEST_ID_KEY", "ControlState", "create_control_app"]

#: The scope key under which the gateway leaves the request id for the control plane.
REQUEST_ID_KEY = "dispatcher.request_id"


class ControlState(Protocol):
    """What the control plane may read about the running dispatcher."""

    @property
    def worker_count(self) -> int: ...

    async def health_report(self) -> tuple[bool, dict[str, Any]]: ...

    async def may_issue_certificate(self, domain: str) -> bool: ...

    def metrics_text(self) -> bytes: ...

    @property
    def registry(self) -> RegistryStore:
        """The open registry store; raises ``RegistryUnavailable`` before start-up."""
        ...

    @property
    def verifier(self) -> DomainVerifier:
        """The domain verifier; raises ``RegistryUnavailable`` before start-up."""
        ...


def create_control_app(settings: Settings, state: ControlState) -> Starlette:
    """Build the control-plane app for ``settings``."""

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "service": "dispatcher",
                "version": __version__,
                "base_domains": list(settings.base_domains),
                "docs": "/docs",
            }
        )

    async def health(request: Request) -> Response:
        # Liveness only: no I/O, so a slow database never fails a liveness probe.
        return JSONResponse({"status": "ok", "service": "dispatcher", "version": __version__})

    async def health_detailed(request: Request) -> Response:
        ok, checks = await state.health_report()
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "checks": checks},
            status_code=200 if ok else 503,
            headers={"cache-control": "no-store"},
        )

    async def dispatch_info(request: Request) -> Response:
        base = request.url.path.rstrip("/")
        return JSONResponse(
            {
                "service": "dispatcher",
                "workers": state.worker_count,
                "routes": {
                    "subdomain": [f"<worker>.{domain}" for domain in settings.base_domains],
                    "path": f"{base}/<worker>/<path>",
                    "query": f"{base}?worker=<worker>",
                    "custom_domain": "any registered custom domain",
                },
            }
        )

    async def tls_ask(request: Request) -> Response:
        # Caddy's on-demand TLS asks here before getting a certificate: 200 means yes.
        domain = request.query_params.get("domain", "").strip()
        if not domain:
            raise InvalidRequest(
                "Name the domain: /tls/ask?domain=<host>",
                details=[{"field": "domain", "message": "required"}],
            )
        if await state.may_issue_certificate(domain):
            return JSONResponse({"domain": domain, "allowed": True})
        raise DomainNotFound(f"No certificate may be issued for '{domain[:253]}'")

    async def metrics(request: Request) -> Response:
        return Response(state.metrics_text(), media_type=METRICS_CONTENT_TYPE)

    spec = json.dumps(openapi_document(), separators=(",", ":")).encode("utf-8")

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    handlers = {
        "getServiceInfo": info,
        "getHealth": health,
        "getHealthDetailed": health_detailed,
        "getDispatchInfo": dispatch_info,
        "getApiDispatchInfo": dispatch_info,
        "tlsAsk": tls_ask,
        "getMetrics": metrics,
        "getOpenAPI": openapi,
        "getDocs": docs_page,
    }
    routes: list[BaseRoute] = [
        Route(path, handlers[operation.operation_id], methods=[operation.method])
        for operation in CONTROL_OPERATIONS
        for path in (operation.path, *operation.aliases)
    ]
    routes += [
        *docs_routes(),
        *admin_routes(settings, lambda: state.registry, lambda: state.verifier),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_exception,
            DispatcherError: _dispatcher_error,
            Exception: _internal_error,
        },
    )


def request_id_of(request: Request) -> str:
    return str(request.scope.get(REQUEST_ID_KEY, ""))


def error_response(exc: DispatcherError, request: Request) -> Response:
    """The contract's JSON error as a Starlette response (for control-plane handlers)."""
    return Response(
        error_body(exc, request_id_of(request)),
        status_code=exc.status,
        media_type="application/json",
        headers={"cache-control": "no-store", **exc.headers},
    )


async def _dispatcher_error(request: Request, exc: Any) -> Response:
    return error_response(exc, request)


async def _internal_error(request: Request, exc: Any) -> Response:
    # Starlette re-raises after this response, so the gateway still logs the exception;
    # the client gets the contract's JSON, never the exception text.
    return error_response(DispatcherError(), request)


async def _http_exception(request: Request, exc: Any) -> Response:
    assert isinstance(exc, HTTPException)
    error: DispatcherError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} is not allowed here")
        error.headers.update(exc.headers or {})
    elif exc.status_code == 404:
        error = NotFound(f"No route for {request.url.path}")
    else:
        error = DispatcherError()
    return error_response(error, request)
