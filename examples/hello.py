"""A tiny tenant app: what a worker's upstream looks like to the dispatcher.

Run it on its own with ``uvicorn examples.hello:app --port 8081``. It answers ``/`` with a
greeting naming the worker the dispatcher routed to, and ``/echo/...`` with what it received
(method, path, query, headers), which shows the forwarding rules at work.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def hello(request: Request) -> Response:
    worker = request.headers.get("x-dispatch-worker", "nobody")
    route = request.headers.get("x-dispatch-route", "direct")
    return PlainTextResponse(f"Hello from worker {worker}! (routed by {route})\n")


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
            "body_bytes": len(body),
        }
    )


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/echo", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/echo/{rest:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
)
