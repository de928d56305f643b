"""The Python floors: what the dispatcher costs before its own logic.

- ``app``: a hello-world ASGI app that uvicorn serves directly, no proxying. It answers
  ``/large`` with 1 MiB and every other path with the same 100 bytes as the upstream's
  ``/small``, from memory: the cost of uvicorn (httptools + uvloop) alone.
- ``proxy_app(upstream_port)``: the least an ASGI proxy on the dispatcher's own parts can do:
  its server protocol and upstream pool, every request sent to one upstream with the client's
  headers and the upstream's answer passed back, with no routing, header policy, limits,
  metrics or access log. The gap between it and the dispatcher is the dispatcher's logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from bench.configs import LARGE_SIZE, SMALL_BODY
from dispatcher.proxy._h1pool import H1Pool
from dispatcher.proxy.transport import Origin

__all__ = ["app", "proxy_app"]

Message = MutableMapping[str, Any]


def _answer(body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    return headers, body


_SMALL = _answer(SMALL_BODY)
_LARGE = _answer(b"y" * LARGE_SIZE)


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    headers, body = _LARGE if scope["path"] == "/large" else _SMALL
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Coroutine[Any, Any, None]]


def proxy_app(upstream_port: int) -> App:
    """The proxy floor (see the module docstring), forwarding to ``127.0.0.1:upstream_port``."""
    pool = H1Pool()
    origin = Origin("http", "127.0.0.1", upstream_port)

    async def proxy(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return
        response = await pool.request(
            origin,
            b"GET",
            scope["raw_path"],
            scope["headers"],
            None,
            connect_timeout=5,
            response_timeout=60,
            idle_timeout=60,
        )
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response.headers}
        )
        async for chunk in response.body():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await response.aclose()

    return proxy
