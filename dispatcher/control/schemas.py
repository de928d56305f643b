"""Pydantic models of the control plane's own JSON answers, for the OpenAPI document.

They describe the bodies of ``GET /``, ``/health``, ``/health/detailed``, ``/dispatch``, the
admin API's listings and the error contract (README, "Errors"). Pure data: the handlers build
their JSON directly; ``dispatcher.control.openapi`` turns these models into JSON Schema, and
the tests check the live answers against that schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers_registry.models import DomainRecord, Worker

__all__ = [
    "DispatchInfo",
    "DispatchRoutes",
    "DomainList",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "Health",
    "HealthDetailed",
    "Imported",
    "ServiceInfo",
    "TlsPermission",
    "WorkerList",
]


class ServiceInfo(BaseModel):
    """``GET /``: what this service is and where its docs are."""

    service: str = Field(examples=["dispatcher"])
    version: str
    base_domains: list[str] = Field(examples=[["example.com"]])
    docs: str = Field(examples=["/docs"])


class Health(BaseModel):
    """``GET /health``: liveness; answered without any I/O."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok"]
    service: str
    version: str


class HealthDetailed(BaseModel):
    """``GET /health/detailed``: readiness, with one entry per check."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded"]
    checks: dict[str, Any] = Field(
        description="Registry probe, snapshot size and age, registry version, cache statistics, "
        "change listener."
    )


class DispatchRoutes(BaseModel):
    """How requests reach a worker (help text)."""

    model_config = ConfigDict(extra="allow")

    subdomain: list[str]
    path: str
    query: str
    custom_domain: str


class DispatchInfo(BaseModel):
    """``GET /dispatch`` without a ``worker`` parameter: namespace information."""

    service: str
    workers: int = Field(ge=0, description="Number of registered workers")
    routes: DispatchRoutes


class TlsPermission(BaseModel):
    """``GET /tls/ask`` when a certificate may be issued for ``domain``."""

    domain: str
    allowed: Literal[True]


class ErrorDetail(BaseModel):
    """One invalid field of a rejected request."""

    field: str = Field(description="Dotted path of the field, e.g. `upstreams.0`")
    message: str


class ErrorInfo(BaseModel):
    """The error object: a stable ``code``, a safe message and the request id."""

    code: str = Field(examples=["worker_not_found"])
    message: str
    request_id: str
    details: list[ErrorDetail] = Field(
        default_factory=list,
        description="Present on `invalid_request`: one entry per invalid field",
    )


class ErrorBody(BaseModel):
    """Every error the dispatcher itself answers has this body."""

    error: ErrorInfo


class Imported(BaseModel):
    """The body of ``POST /admin/import/workers`` and ``POST /admin/import/domains``."""

    imported: int = Field(ge=1, description="Records added, in one transaction")


class WorkerList(BaseModel):
    """The body of ``GET /admin/workers``."""

    workers: list[Worker]


class DomainList(BaseModel):
    """The body of ``GET /admin/domains``."""

    domains: list[DomainRecord]
