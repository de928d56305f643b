"""Launcher for the servers the benchmark runs that ``dispatcher serve`` cannot start itself.

``python -m bench.serve dispatcher --port P --transport aiohttp``: the dispatcher with the
aiohttp upstream client (``bench.aiohttp_transport``) instead of its own pool.
``python -m bench.serve floor --port P``: uvicorn serving the hello-world app (``bench.floor``).

Both run uvicorn with exactly the options ``dispatcher serve`` uses (``dispatcher/cli.py``),
so the only difference from the dispatcher under test is the one being measured.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

__all__ = ["UVICORN_OPTIONS", "main"]

#: The uvicorn options of ``dispatcher serve`` (one process).
UVICORN_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    "date_header": False,
    "http": "httptools",
    "loop": "uvloop",
    "lifespan": "on",
    "timeout_graceful_shutdown": 10,
}


def _dispatcher(port: int, transport_name: str) -> Any:
    from dispatcher.app import create_app
    from dispatcher.logging import configure_logging
    from dispatcher.settings import load_settings

    settings = load_settings(port=port)
    configure_logging(settings.log_level, settings.log_format)
    if transport_name == "aiohttp":
        from bench.aiohttp_transport import AiohttpTransport

        return create_app(settings, transport=AiohttpTransport())
    return create_app(settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("app", choices=["dispatcher", "floor"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=["h1", "aiohttp"], default="h1")
    args = parser.parse_args(argv)
    if args.app == "floor":
        from bench.floor import app
    else:
        app = _dispatcher(args.port, args.transport)
    uvicorn.run(app, host="127.0.0.1", port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
