"""Log output: JSON lines on stdout, batched while the server runs, never lost at shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from dispatcher import logging as dispatcher_logging
from dispatcher.logging import (
    LineBatcher,
    access_logger,
    batched_logs,
    bind_request_id,
    configure_logging,
)

Configure = Callable[[str], io.StringIO]


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """``configure_logging(level info, format)`` writing to a fresh stdout, which it returns;
    logging is put back afterwards. (Patched when called: pytest swaps stdout per phase.)"""

    def configure_into(fmt: str) -> io.StringIO:
        captured = io.StringIO()
        monkeypatch.setattr("sys.stdout", captured)
        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", list(root.handlers))
        monkeypatch.setattr(root, "level", root.level)
        monkeypatch.setattr(logging.getLogger("uvicorn.access"), "disabled", False)
        configure_logging("info", fmt)
        return captured

    yield configure_into
    structlog.reset_defaults()
    dispatcher_logging._batcher = None
    dispatcher_logging._json_output = False


def test_line_batcher_writes_at_once_unless_batching() -> None:
    stream = io.StringIO()
    batcher = LineBatcher(stream)
    batcher.write_line("one")
    assert stream.getvalue() == "one\n"
    batcher.batching = True
    batcher.write_line("two")
    batcher.write_line("three")
    assert stream.getvalue() == "one\n"
    batcher.flush()
    assert stream.getvalue() == "one\ntwo\nthree\n"


def test_a_full_batch_is_written_without_waiting() -> None:
    stream = io.StringIO()
    batcher = LineBatcher(stream)
    batcher.batching = True
    for index in range(512):
        batcher.write_line(str(index))
    assert stream.getvalue().count("\n") == 512


def test_json_lines_are_flushed_periodically_and_at_the_end(
    configure: Configure,
) -> None:
    stream = configure("json")

    async def serve() -> tuple[str, str]:
        async with batched_logs():
            access_logger().write({"path": "/x", "status": 200})
            held = stream.getvalue()
            await asyncio.wait_for(_until(lambda: bool(stream.getvalue())), 5)
            access_logger().write({"path": "/y", "status": 404})
        return held, stream.getvalue()

    held, final = asyncio.run(serve())
    assert held == ""  # batched: nothing written the moment it was logged
    lines = [json.loads(line) for line in final.splitlines()]
    assert [line["path"] for line in lines] == ["/x", "/y"]  # the last one flushed at exit
    assert lines[0]["event"] == "request" and lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")


async def _until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.005)


def test_the_fast_access_line_has_the_same_shape_as_structlogs(
    configure: Configure,
) -> None:
    stream = configure("json")
    fields = {"request_id": "r1", "path": "/p", "status": 200, "worker": None}
    access_logger().write(dict(fields))  # the fast path
    structlog.get_logger("x").info("request", **fields)  # the general path
    fast, general = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(fast) == set(general)
    assert {k: v for k, v in fast.items() if k != "timestamp"} == {
        k: v for k, v in general.items() if k != "timestamp"
    }


def test_console_format_is_for_humans(configure: Configure) -> None:
    stream = configure("console")
    access_logger().write({"path": "/p", "status": 200})
    (line,) = stream.getvalue().splitlines()
    assert not line.startswith("{")
    assert "request" in line and "path=/p" in line and "status=200" in line


def test_bound_request_id_is_in_every_line_of_its_task_only(
    configure: Configure,
) -> None:
    stream = configure("json")

    async def request(request_id: str) -> None:
        bind_request_id(request_id)
        await asyncio.sleep(0)  # another request runs in between
        structlog.get_logger("dispatcher").warning("upstream_failed_mid_body")
        logging.getLogger("uvicorn.error").warning("from the standard library")

    async def main() -> None:
        await asyncio.gather(request("r-one"), request("r-two"))
        structlog.get_logger("dispatcher").info("outside")

    asyncio.run(main())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ids = [(line["event"], line.get("request_id")) for line in lines]
    assert sorted(ids) == sorted(
        [
            ("upstream_failed_mid_body", "r-one"),
            ("from the standard library", "r-one"),
            ("upstream_failed_mid_body", "r-two"),
            ("from the standard library", "r-two"),
            ("outside", None),
        ]
    )


def test_timestamps_are_iso_8601_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    stamps = [dispatcher_logging._now() for _ in range(1000)]
    after = datetime.now(UTC)
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - timedelta(milliseconds=1) <= moment <= after + timedelta(milliseconds=1)
    assert stamps == sorted(stamps)
