"""A real DNS server for tests, run as its own process on 127.0.0.1 (UDP and TCP, one port).

It answers like a recursive resolver would for the records it holds: CNAME chains are
followed and returned whole (loops included, up to ``_MAX_HOPS`` links, as a hostile resolver
might), unknown names are NXDOMAIN. Built on dnslib, a different DNS library from the
dispatcher's (dnspython), so neither side's parser vouches for the other.

The records live in a JSON file the test rewrites while the server runs (read again whenever
it changes)::

    {"records": {"shop.example.org": {"CNAME": "shop.example.com"},
                 "_dispatcher-challenge.shop.example.org": {"TXT": ["token"]},
                 "shop.example.com": {"A": ["127.0.0.1"]}},
     "behaviour": {"broken.example.org": "servfail"}}

Behaviours per question name: ``servfail``, ``refused``, ``timeout`` (no answer at all),
``truncate`` (UDP answers are truncated, TCP answers whole), ``truncate_always`` (TCP
connections are closed without an answer). ``DnsServer`` starts and stops it.

    python -m tests.dnsserver ZONE_FILE PORT_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["DnsServer"]

_MAX_HOPS = 24
_UDP_LIMIT = 512


class _Zone:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self.records: dict[str, dict[str, Any]] = {}
        self.behaviour: dict[str, str] = {}

    def refresh(self) -> None:
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            data = json.loads(self._path.read_text())
            self.records = {k.lower().rstrip("."): v for k, v in data.get("records", {}).items()}
            self.behaviour = {
                k.lower().rstrip("."): v for k, v in data.get("behaviour", {}).items()
            }
            self._stamp = stamp


def _answer(zone: _Zone, data: bytes, transport: str) -> bytes | None:
    from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSRecord

    try:
        request = DNSRecord.parse(data)
    except Exception:
        return None
    zone.refresh()
    qname = str(request.q.qname).lower().rstrip(".")
    qtype = QTYPE[request.q.qtype]
    behaviour = zone.behaviour.get(qname, "")
    if behaviour == "timeout":
        return None
    if behaviour == "truncate_always" and transport == "tcp":
        return None
    reply = request.reply()
    if behaviour in ("servfail", "refused"):
        reply.header.rcode = RCODE.SERVFAIL if behaviour == "servfail" else RCODE.REFUSED
        return bytes(reply.pack())
    name = qname
    for hop in range(_MAX_HOPS):
        record = zone.records.get(name)
        if record is None:
            if hop == 0:
                reply.header.rcode = RCODE.NXDOMAIN
            break
        if "CNAME" in record and qtype != "CNAME":
            reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(record["CNAME"]), ttl=30))
            name = record["CNAME"].lower().rstrip(".")
            continue
        makers = {"A": A, "AAAA": AAAA, "CNAME": CNAME}
        for value in record.get(qtype, []) if qtype != "CNAME" else [record.get("CNAME")]:
            if value is None:
                continue
            if qtype == "TXT":
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
                reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=30))
            elif qtype in makers:
                reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=makers[qtype](value)))
        break
    packed = bytes(reply.pack())
    limit = _UDP_LIMIT if transport == "udp" else 65535
    if behaviour.startswith("truncate") and transport == "udp":
        limit = 12
    if len(packed) > limit:
        truncated = request.reply()
        truncated.header.tc = 1
        return bytes(truncated.pack())
    return packed


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: _Zone) -> None:
        self.zone = zone
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = _answer(self.zone, data, "udp")
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def _tcp(zone: _Zone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(2), "big")
            answer = _answer(zone, await reader.readexactly(size), "tcp")
            if answer is None:
                break
            writer.write(len(answer).to_bytes(2, "big") + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(zone_file: Path, port_file: Path) -> None:
    zone = _Zone(zone_file)
    loop = asyncio.get_running_loop()
    for _ in range(50):  # one port for both transports: find one free for both
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        try:
            server = await asyncio.start_server(lambda r, w: _tcp(zone, r, w), "127.0.0.1", port)
        except OSError:
            udp.close()
            continue
        break
    else:
        raise RuntimeError("no free port for UDP and TCP")
    await loop.create_datagram_endpoint(lambda: _Udp(zone), sock=udp)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    async with server:
        await asyncio.Event().wait()


class DnsServer:
    """The server above in a child process; ``set`` replaces its records while it runs."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="dispatcher-dns-"))
        self.zone_file = self._dir / "zone.json"
        self._port_file = self._dir / "port"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.set({})

    @property
    def address(self) -> str:
        """The server as a ``dns_resolvers`` entry."""
        return f"127.0.0.1:{self.port}"

    def set(
        self, records: dict[str, dict[str, Any]], behaviour: dict[str, str] | None = None
    ) -> None:
        """Serve exactly these records (and behaviours) from now on."""
        tmp = self.zone_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"records": records, "behaviour": behaviour or {}}))
        os.replace(tmp, self.zone_file)
        # The server notices a change by mtime and size: make sure the next read sees one.
        now = time.time_ns()
        os.utime(self.zone_file, ns=(now, now))

    def __enter__(self) -> DnsServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.dnsserver", str(self.zone_file), str(self._port_file)],
            cwd=Path(__file__).resolve().parents[1],
        )
        deadline = time.monotonic() + 20
        while not self._port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test DNS server did not start")
            time.sleep(0.02)
        self.port = int(self._port_file.read_text())
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            for path in self._dir.iterdir():
                path.unlink()
            self._dir.rmdir()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(Path(sys.argv[1]), Path(sys.argv[2])))
