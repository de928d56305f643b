"""The JSON error response of the error contract, sent over raw ASGI.

Used by the hot path and by the control plane alike, so every error the dispatcher produces
has the same shape: ``{"error": {"code", "message", "request_id"[, "details"]}}``.
"""

from __future__ import annotations

import json

from dispatcher.asgi import Send
from dispatcher.errors import DispatcherError

__all__ = ["error_body", "error_head", "send_error"]


def error_body(exc: DispatcherError, request_id: str) -> bytes:
    return json.dumps(exc.to_body(request_id), separators=(",", ":")).encode("utf-8")


def error_head(exc: DispatcherError, request_id: str, length: int) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(length).encode("ascii")),
        (b"x-request-id", request_id.encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in exc.headers.items()
    )
    return headers


async def send_error(
    send: Send, exc: DispatcherError, request_id: str, *, head: bool = False
) -> int:
    """Answer ``exc`` as JSON; returns the number of body bytes sent."""
    body = error_body(exc, request_id)
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": error_head(exc, request_id, len(body)),
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
    return 0 if head else len(body)
