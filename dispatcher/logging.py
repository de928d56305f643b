"""Logging: structlog to stdout, one JSON object per line (or ``console`` for humans).

The access line has exactly the fields of the README ("Logs") and never the query string, cookies or
``Authorization``. Standard-library loggers (uvicorn's, alembic's) are routed through the
same renderer so stdout carries one format.

While the server runs, structlog's lines are batched: ``LineBatcher`` keeps them in memory and
a lifespan task writes them every ``_FLUSH_INTERVAL`` seconds with one system call (a write per
request line was a large share of the hot path). Outside the server (CLI, start-up, shutdown)
every line is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Final, TextIO

import orjson
import structlog

__all__ = [
    "AccessLog",
    "LineBatcher",
    "access_logger",
    "batched_logs",
    "bind_request_id",
    "configure_logging",
]

# The id of the request being handled, in every structlog line written while handling it:
# structlog's ``merge_contextvars`` merges each context variable named with its prefix. Set
# directly, it is much cheaper than ``bind_contextvars`` (once per request).
_REQUEST_ID: contextvars.ContextVar[Any] = contextvars.ContextVar(
    f"{structlog.contextvars.STRUCTLOG_KEY_PREFIX}request_id", default=...
)


def bind_request_id(request_id: str) -> None:
    """Put ``request_id`` into every log line of the current task (and tasks it starts)."""
    _REQUEST_ID.set(request_id)


#: Longest time a log line waits in memory while batching.
_FLUSH_INTERVAL = 0.05
#: A batch this long is written at once, whatever the time.
_MAX_BATCH = 512


class LineBatcher:
    """Log lines on their way to a stream: immediately, or in batches while ``batching``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.batching = False
        self._lines: list[str] = []

    def write_line(self, line: str) -> None:
        if not self.batching:
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        self._lines.append(line)
        if len(self._lines) >= _MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


class _BatchedLogger:
    """The structlog logger behind every bound logger: hands rendered lines to the batcher."""

    def __init__(self, batcher: LineBatcher) -> None:
        self._batcher = batcher

    def msg(self, message: str) -> None:
        self._batcher.write_line(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_batcher: LineBatcher | None = None
_json_output = False


@contextlib.asynccontextmanager
async def batched_logs() -> AsyncIterator[None]:
    """Within this context (the server's lifespan) log lines are written in batches."""
    batcher = _batcher
    if batcher is None:  # logging was not configured by us (tests, embedding): nothing to do
        yield
        return

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL)
            batcher.flush()

    batcher.batching = True
    task = asyncio.get_running_loop().create_task(flush_periodically())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        batcher.batching = False
        batcher.flush()


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the standard library once per process."""
    global _batcher, _json_output
    numeric = _LEVELS[level]
    batcher = _batcher = LineBatcher(sys.stdout)
    _json_output = fmt == "json"
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
        logger_factory=lambda *_: _BatchedLogger(batcher),
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
_milli = -1
_milli_text = ""
#: "000".."999", for the milli- and microsecond digits ("Z" after the last three).
_DIGITS: Final = tuple(f"{n:03d}" for n in range(1000))
_LAST_DIGITS: Final = tuple(f"{n:03d}Z" for n in range(1000))


def _now() -> str:
    """Now, ISO 8601 UTC with microseconds.

    Per request: the text up to the millisecond is made once a millisecond (up to the second,
    once a second), the microseconds come from a table: no big-integer formatting per line.
    """
    global _second, _second_text, _milli, _milli_text
    milli, micro = divmod(time.time_ns() // 1000, 1000)
    if milli != _milli:
        _milli = milli
        second, fraction = divmod(milli, 1000)
        if second != _second:
            _second = second
            _second_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _milli_text = _second_text + _DIGITS[fraction]
    return _milli_text + _LAST_DIGITS[micro]


def _timestamp(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the ``timestamp`` field."""
    event_dict["timestamp"] = _now()
    return event_dict


class AccessLog:
    """The one line per request.

    When ``configure_logging`` set up JSON output, the line is rendered straight to the batcher
    by orjson (the same keys as structlog's lines, compact separators; far cheaper than
    ``json.dumps`` or structlog's processor chain on the hot path). Otherwise
    (console format, tests capturing structlog output, embedding) it goes through structlog like
    every other line.
    """

    def __init__(self) -> None:
        self._structlog = structlog.get_logger("dispatcher.access")

    def write(self, fields: dict[str, Any]) -> None:
        batcher = _batcher
        if batcher is None or not _json_output:
            self._structlog.info("request", **fields)
            return
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = _now()
        batcher.write_line(orjson.dumps(fields).decode())


def access_logger() -> AccessLog:
    """The logger the gateway writes its one line per request to."""
    return AccessLog()
