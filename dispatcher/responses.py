"""The JSON error response of the error contract, sent over raw ASGI.

Used by the hot path and by the control plane alike, so every error the dispatcher produces
has the same shape: ``{"error": {"code", "message", "request_id"[, "details"]}}``.
"""

from __future__ import annotations

import asyncio
import json

from dispatcher.asgi import Exchange, Headers, Scope, Send
from dispatcher.errors import DispatcherError

__all__ = ["deny_websocket", "error_body", "error_head", "send_error"]


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


async def deny_websocket(
    scope: Scope, send: Send, exchange: Exchange, status: int, headers: Headers, body: bytes
) -> None:
    """Refuse a WebSocket handshake with an HTTP response (ASGI's denial response extension).

    A server without the extension cannot send one: the handshake is closed before accept,
    which it answers with 403. Records the status and body bytes on ``exchange``.
    """
    exchange.response_started = True
    if "websocket.http.response" not in scope.get("extensions", {}):
        exchange.status = 403
        await send({"type": "websocket.close", "code": 1008})
        return
    exchange.status = status
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
    exchange.bytes_out += len(body)
    # uvicorn's sansio WebSocket server marks the denial complete one loop turn later (its
    # connection_lost, scheduled by the send); returning at once makes it log a false
    # "returned without completing handshake".
    await asyncio.sleep(0)
