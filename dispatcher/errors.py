"""The dispatcher's one exception tree.

Every error the dispatcher itself answers with is one of these; each class carries its
public ``code`` and HTTP ``status`` from the error contract (README, "Errors").
Foreign exceptions (socket errors, database driver errors) are mapped onto this tree at one
boundary each and chained with ``from exc``; their text never reaches a client.

    DispatcherError                      internal_error 500
    ├── RoutingError
    │   ├── InvalidHost                  invalid_host 400
    │   ├── InvalidWorkerName            invalid_worker_name 400
    │   ├── ReservedWorkerName           reserved_worker_name 400
    │   ├── MissingWorker                missing_worker 400
    │   ├── WorkerNotFound               worker_not_found 404
    │   └── DomainNotFound               domain_not_found 404
    ├── RequestRejected
    │   ├── InvalidRequest               invalid_request 400
    │   ├── Unauthorized                 unauthorized 401
    │   ├── AdminDisabled                admin_disabled 403
    │   ├── NotFound                     not_found 404
    │   ├── MethodNotAllowed             method_not_allowed 405
    │   ├── RequestTimeout               request_timeout 408
    │   ├── Conflict                     conflict 409
    │   ├── PayloadTooLarge              payload_too_large 413
    │   ├── UnsupportedMediaType         unsupported_media_type 415
    │   ├── RateLimited                  rate_limited 429
    │   ├── HeadersTooLarge              headers_too_large 431
    │   └── LoopDetected                 loop_detected 508
    ├── RegistryUnavailable              registry_unavailable 503
    ├── RateLimitUnavailable             rate_limit_unavailable 503
    ├── WorkerOverloaded                 worker_overloaded 503
    └── UpstreamError
        ├── UpstreamUnavailable          upstream_unavailable 502
        │   └── UpstreamConnectFailed    (nothing was sent: safe to try another target)
        └── UpstreamTimeout              upstream_timeout 504
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AdminDisabled",
    "Conflict",
    "DispatcherError",
    "DomainNotFound",
    "HeadersTooLarge",
    "InvalidHost",
    "InvalidRequest",
    "InvalidWorkerName",
    "LoopDetected",
    "MethodNotAllowed",
    "MissingWorker",
    "NotFound",
    "PayloadTooLarge",
    "RateLimitUnavailable",
    "RateLimited",
    "RegistryUnavailable",
    "RequestRejected",
    "RequestTimeout",
    "ReservedWorkerName",
    "RoutingError",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamConnectFailed",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WorkerNotFound",
    "WorkerOverloaded",
]


class DispatcherError(Exception):
    """Base of every error the dispatcher answers itself.

    ``message`` is safe to show to clients: it is written by us, never copied from a foreign
    exception. ``details`` is an optional list of ``{"field", "message"}`` objects.
    """

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def to_body(self, request_id: str) -> dict[str, Any]:
        """The JSON error object of the error contract."""
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        }
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class RoutingError(DispatcherError):
    """The request could not be mapped to a worker."""


class InvalidHost(RoutingError):
    code = "invalid_host"
    status = 400
    default_message = "The Host header is missing or malformed"


class InvalidWorkerName(RoutingError):
    code = "invalid_worker_name"
    status = 400
    default_message = "Invalid worker name"


class ReservedWorkerName(RoutingError):
    code = "reserved_worker_name"
    status = 400
    default_message = "This worker name is reserved"


class MissingWorker(RoutingError):
    code = "missing_worker"
    status = 400
    default_message = "The 'worker' query parameter is missing or empty"


class WorkerNotFound(RoutingError):
    code = "worker_not_found"
    status = 404
    default_message = "Worker does not exist"


class DomainNotFound(RoutingError):
    code = "domain_not_found"
    status = 404
    default_message = "No worker is registered for this domain"


class RequestRejected(DispatcherError):
    """The request itself breaks a rule (bad input, auth, limits)."""


class InvalidRequest(RequestRejected):
    code = "invalid_request"
    status = 400
    default_message = "Invalid request"


class Unauthorized(RequestRejected):
    code = "unauthorized"
    status = 401
    default_message = "Missing or invalid bearer token"


class AdminDisabled(RequestRejected):
    code = "admin_disabled"
    status = 403
    default_message = "The admin API is disabled: no admin_token is configured"


class NotFound(RequestRejected):
    code = "not_found"
    status = 404
    default_message = "Not found"


class MethodNotAllowed(RequestRejected):
    code = "method_not_allowed"
    status = 405
    default_message = "Method not allowed"


class Conflict(RequestRejected):
    code = "conflict"
    status = 409
    default_message = "Already exists"


class PayloadTooLarge(RequestRejected):
    code = "payload_too_large"
    status = 413
    default_message = "Request body is too large"


class RequestTimeout(RequestRejected):
    code = "request_timeout"
    status = 408
    default_message = "The request was not received in time"


class UnsupportedMediaType(RequestRejected):
    code = "unsupported_media_type"
    status = 415
    default_message = "The request body must be application/json"


class RateLimited(RequestRejected):
    code = "rate_limited"
    status = 429
    default_message = "Too many requests"


class HeadersTooLarge(RequestRejected):
    code = "headers_too_large"
    status = 431
    default_message = "Request headers are too large"


class LoopDetected(RequestRejected):
    code = "loop_detected"
    status = 508
    default_message = "Routing loop detected"


class RegistryUnavailable(DispatcherError):
    code = "registry_unavailable"
    status = 503
    default_message = "The worker registry is unavailable"


class RateLimitUnavailable(DispatcherError):
    code = "rate_limit_unavailable"
    status = 503
    default_message = "The rate limiter cannot answer; try again shortly"


class WorkerOverloaded(DispatcherError):
    code = "worker_overloaded"
    status = 503
    default_message = "Too many requests in flight for this worker"


class UpstreamError(DispatcherError):
    """The worker's upstream failed before a response started."""


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"
    status = 502
    default_message = "The worker's upstream is unavailable"


class UpstreamConnectFailed(UpstreamUnavailable):
    """No connection could be made: not a byte of the request left the dispatcher."""

    default_message = "Could not connect to the worker's upstream"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    status = 504
    default_message = "The worker's upstream did not answer in time"
