"""``serve`` and ``db upgrade``: the server process (uvicorn options, app factory), migrations."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
from typing import Any

from dispatcher.cli._common import CommandError
from dispatcher.settings import Settings, load_settings


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that decide how the dispatcher speaks HTTP (tests serve with these)."""
    return {
        "http": "dispatcher.h1server:H1Protocol"
        if settings.http_server == "dispatcher"
        else "httptools",
        # The largest request head the server accepts (431 above it): above the dispatcher's
        # own max_header_bytes (which counts header lines only), so the dispatcher answers 431
        # itself first, and small enough that unfinished heads hold little memory: each
        # connection keeps at most this much until request_head_timeout closes it.
        "h11_max_incomplete_event_size": 2 * settings.max_header_bytes + 16 * 1024,
        # Said, not guessed: the gateway's __call__ is a plain function returning a coroutine.
        "interface": "asgi3",
        "ws": "websockets-sansio",  # supports the websocket.http.response denial extension
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,  # trust is the dispatcher's decision (README, "Forwarding rules")
        "server_header": False,  # the upstream's Server and Date headers pass through
        "date_header": False,
        # Longer than the keep-alive of the proxy in front (Caddy: 60 s), so the proxy always
        # closes an idle connection first and never reuses one we are closing.
        "timeout_keep_alive": round(settings.keepalive_timeout),
    }


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from dispatcher.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    if not args.no_migrate:
        _upgrade(settings)
    if args.config:
        # Worker processes rebuild the settings from the environment and this file.
        os.environ["DISPATCHER_CONFIG"] = str(args.config)
    uvicorn.run(
        "dispatcher.cli:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop" if _has_uvloop() else "asyncio",
        timeout_graceful_shutdown=10,
        **server_options(settings),
    )
    return 0


def app_factory() -> Any:
    """Entry point for uvicorn worker processes (``--workers N``)."""
    from dispatcher.app import create_app
    from dispatcher.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: move it out of the
    # cyclic collector's view, so full collections under load do not walk it again and again
    # (they were the p99 of the benchmark). Only here, in the server process, never in tests
    # or embedding applications.
    gc.collect()
    gc.freeze()
    # The requests in flight keep thousands of young objects alive, so at the default
    # threshold (700 allocations) the collector ran every few requests, walked them and
    # promoted them to older generations only for reference counting to free them later:
    # a large share of the CPU per request (bench/RESULTS.md). Nearly all garbage here is
    # freed by reference counting: collect the young generation rarely.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 20, 100)
    app.state.freeze_loaded = True  # and the workers loaded at start, and at each resync
    return app


#: Allocations (net of frees) between collections of the youngest generation.
_GC_YOUNG_THRESHOLD = 50_000


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _upgrade(settings: Settings) -> None:
    # alembic and its templates cost a third of a second to import: only when migrations
    # run, never for `serve --no-migrate` (a fleet that migrates once, before rolling out).
    from workers_registry.migrate import upgrade

    asyncio.run(upgrade(settings.async_database_url))


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    _upgrade(settings)
    print("database is up to date")
    return 0
