"""The instruction counts: reading callgrind's dumps, the counting client, their report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.instructions import GROUPS, _host, _path, get, read_dump
from bench.report import InstructionCount
from bench.report import _instructions_section as instructions_section
from bench.report import _targets_table as targets_table
from bench.targets import TARGETS

DUMP = """\
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m dispatcher serve
part: 1

events: Ir
summary: 437108000
totals: 437108000
"""


def test_a_dump_is_read_for_its_total(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(DUMP)
    assert read_dump(dump) == 437_108_000


def test_a_dump_without_a_total_is_an_error(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\nevents: Ir\n")
    with pytest.raises(ValueError, match="no summary"):
        read_dump(dump)


@pytest.mark.anyio
async def test_the_client_sends_every_request_and_reads_every_answer() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                writer.close()  # the client closed its connection
                return
            seen.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        sent = await get(port, 12, 4, b"bench.localhost", b"/small")
    assert sent == 12
    assert len(seen) == 12
    assert all(
        b"Host: bench.localhost" in head and head.startswith(b"GET /small ") for head in seen
    )


@pytest.mark.anyio
async def test_the_client_refuses_an_answer_other_than_200() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(RuntimeError, match="502"):
            await get(port, 1, 1, b"bench.localhost", b"/small")


def test_counts_are_reported_with_their_ratios_and_judge_the_custom_domain_target() -> None:
    counts = [
        InstructionCount("dispatcher", 1000, 270_000_000),
        InstructionCount("dispatcher-custom", 1000, 280_800_000),  # 1.04: within 5%
        InstructionCount("dispatcher-quiet", 1000, 250_000_000),
        InstructionCount("proxy-floor", 1000, 180_000_000),
    ]
    section = instructions_section(counts)
    assert "| dispatcher, subdomain | 270,000 | 1,000 |" in section
    assert "| custom domain / subdomain | 1.040 |" in section
    assert "| access log on / off | 1.080 |" in section
    assert "| dispatcher / bare proxy on its parts | 1.500 |" in section
    rows = targets_table([], [], counts)
    assert "| 100 B: custom-domain / subdomain, instructions per request (callgrind) |" in rows
    assert rows.rstrip().endswith("| 1.040 |  | met |")
    costly = [counts[0], InstructionCount("dispatcher-custom", 1000, 290_000_000)]
    assert targets_table([], [], costly).rstrip().endswith("| 1.074 |  | **missed** |")


def test_counted_targets_are_served_and_reached_as_in_the_timed_rounds() -> None:
    assert all(TARGETS[key].server == server for server, keys in GROUPS for key in keys)
    assert (_host("dispatcher-custom"), _path("dispatcher-custom")) == (
        b"bench.example.org",
        b"/small",
    )
    assert (_host("dispatcher-path"), _path("dispatcher-path")) == (
        b"127.0.0.1",
        b"/dispatch/bench/small",
    )
