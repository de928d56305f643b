"""Launcher for the servers the benchmark runs that ``dispatcher serve`` cannot start itself.

``python -m bench.serve dispatcher --port P --transport aiohttp``: the dispatcher with the
aiohttp upstream client (``bench.aiohttp_transport``) instead of its own pool.
``python -m bench.serve floor --port P``: uvicorn serving the hello-world app (``bench.floor``)
with uvicorn's own protocol; ``floor-h1``: the same app on the dispatcher's server protocol.
``python -m bench.serve proxy-floor --port P --upstream-port U``: the proxy floor.

All run uvicorn with the options ``dispatcher serve`` uses (``dispatcher.cli.server_options``),
so the only difference from the dispatcher under test is the one being measured.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

__all__ = ["main"]


def _options(server: str) -> dict[str, Any]:
    """The uvicorn options of ``dispatcher serve`` (one process), with ``server``'s protocol."""
    from dispatcher.cli import server_options
    from dispatcher.settings import load_settings

    options = server_options(load_settings(http_server=server))
    return {**options, "loop": "uvloop", "timeout_graceful_shutdown": 10}


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
    parser.add_argument("app", choices=["dispatcher", "floor", "floor-h1", "proxy-floor"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, default=0)
    parser.add_argument("--transport", choices=["h1", "aiohttp"], default="h1")
    args = parser.parse_args(argv)
    server = "uvicorn" if args.app == "floor" else "dispatcher"
    app: Any
    if args.app in ("floor", "floor-h1"):
        from bench.floor import app
    elif args.app == "proxy-floor":
        from bench.floor import proxy_app

        app = proxy_app(args.upstream_port)
    else:
        app = _dispatcher(args.port, args.transport)
    uvicorn.run(app, host="127.0.0.1", port=args.port, **_options(server))


if __name__ == "__main__":
    main()
