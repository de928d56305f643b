"""A tenant app for the tests: a real upstream that reports what it received.

Pure ASGI so every byte is under the test's control:

- ``ANY /echo...``: JSON with method, raw path, query, headers and body length/sha256;
- ``GET /bytes?n=N``: N bytes streamed in 64 KiB chunks (``Content-Length`` set;
  ``chunked=1`` streams without it);
- ``GET /sse?key=K``: server-sent events; event 1 at once, event 2 only after
  ``GET /release?key=K``, then the stream ends;
- ``GET /redirect?to=L``: 302 with ``Location: L`` and a cookie;
- ``GET /status?code=C``: that status with a small text body;
- ``GET /hop``: a response carrying hop-by-hop headers and its own X-Request-ID;
- any WebSocket: accepted, every text message echoed back as ``<name>:<text>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(n: int) -> bytes:
    """The first n bytes tenant /bytes sends (for checking downloads)."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


async def answer_lifespan(
    receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    """The ASGI lifespan protocol of an app with nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


class TenantApp:
    def __init__(self, name: str = "tenant") -> None:
        self.name = name
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.sse_closed: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if path.startswith("/echo") or (path == "/" and scope["method"] != "GET"):
            await self._echo(scope, receive, send)
        elif path == "/":
            await _plain(send, 200, f"hello from {self.name}\n".encode())
        elif path == "/bytes":
            await self._bytes(send, int(query["n"]), chunked="chunked" in query)
        elif path == "/sse":
            await self._sse(receive, send, query["key"])
        elif path == "/release":
            self.gates[query["key"]].set()
            await _plain(send, 200, b"released")
        elif path == "/redirect":
            await send(
                {
                    "type": "http.response.start",
                    "status": 302,
                    "headers": [
                        (b"location", query["to"].encode()),
                        (b"set-cookie", b"session=abc; Path=/; HttpOnly"),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        elif path == "/status":
            await _plain(send, int(query["code"]), f"upstream says {query['code']}".encode())
        elif path == "/hop":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"connection", b"x-secret"),
                        (b"x-secret", b"hop"),
                        (b"keep-alive", b"timeout=5"),
                        (b"x-request-id", b"upstream-id"),
                        (b"x-kept", b"yes"),
                        (b"content-length", b"2"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await _plain(send, 404, b"tenant has no such page")

    async def _websocket(self, receive: Receive, send: Send) -> None:
        """Echo every message (prefixed with the tenant's name) until the client closes."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": f"{self.name}:{message['text']}"})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})

    async def _echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        body = json.dumps(
            {
                "tenant": self.name,
                "client_port": scope["client"][1] if scope.get("client") else None,
                "method": scope["method"],
                "path": scope["path"],
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                ],
                "body_bytes": size,
                "body_sha256": digest.hexdigest(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _bytes(self, send: Send, n: int, *, chunked: bool) -> None:
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(n).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        left = n
        while left > 0:
            chunk = PATTERN[: min(left, len(PATTERN))]
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
        if n == 0:
            await send({"type": "http.response.body", "body": b""})

    async def _sse(self, receive: Receive, send: Send, key: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        gate = asyncio.ensure_future(self.gates[key].wait())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({gate, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                return  # the client (the dispatcher) went away
            await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gate.cancel()
            gone.cancel()
            self.sse_closed[key].set()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
