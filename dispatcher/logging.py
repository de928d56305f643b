"""Logging: structlog to stdout, one JSON object per line (or ``console`` for humans).

The access line has exactly the DESIGN.md fields and never the query string, cookies or
``Authorization``. Standard-library loggers (uvicorn's, alembic's) are routed through the
same renderer so stdout carries one format.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

__all__ = ["access_logger", "configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the standard library once per process."""
    numeric = _LEVELS[level]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() writes the line and its newline separately, two
        # system calls when stdout is unbuffered, as in the container image).
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # We write our own access line; uvicorn's would repeat it without the routing facts.
    logging.getLogger("uvicorn.access").disabled = True


_second = -1
_second_text = ""


def _timestamp(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """ISO 8601 UTC timestamp with microseconds; the date part is formatted once a second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event_dict["timestamp"] = f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"
    return event_dict


def access_logger() -> Any:
    """The logger the gateway writes its one line per request to."""
    return structlog.get_logger("dispatcher.access")
