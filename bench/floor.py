"""The Python floor: a hello-world ASGI app that uvicorn serves directly, no proxying.

It answers ``/large`` with 1 MiB and every other path with the same 100 bytes as the
upstream's ``/small``, from memory: the cost of uvicorn (httptools + uvloop) alone, which is
what the dispatcher pays before it does any proxying of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.configs import LARGE_SIZE, SMALL_BODY

__all__ = ["app"]

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
