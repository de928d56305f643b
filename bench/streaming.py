"""Memory of the dispatcher while a large body streams through it, each way.

The client is a raw socket, so it never holds more than one 1 MiB buffer: the upload sends
the same zero-filled buffer again and again under a ``Content-Length`` of the full size (to
``bench.sink``, which discards it and reports how many bytes it got); the download reads the
upstream nginx's sparse ``/huge`` file into one reused buffer. Meanwhile the dispatcher's RSS
is sampled every 20 ms, and its peak (VmHWM, reset just before the transfer) is read after.
Growth = peak - RSS just before the transfer, after a warm-up request on the same route.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.procs import Server

__all__ = ["StreamResult", "measure_download", "measure_upload"]

_BUFFER = 1024 * 1024
_TIMEOUT = 120.0


class StreamError(RuntimeError):
    """The transfer did not complete as expected."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    direction: str  # "upload" or "download"
    size: int  # bytes moved through the dispatcher
    seconds: float
    rss_before_kib: int
    rss_peak_kib: int

    @property
    def growth_kib(self) -> int:
        return max(0, self.rss_peak_kib - self.rss_before_kib)

    @property
    def mib_per_second(self) -> float:
        return self.size / (1024 * 1024) / self.seconds if self.seconds else 0.0


class _RssSampler:
    """Samples a server's RSS in a thread while a transfer runs."""

    def __init__(self, server: Server, interval: float = 0.02) -> None:
        self._server = server
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kib = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, self._server.rss_kib())
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lowercased names) and whatever body bytes came with the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise StreamError("connection closed before the response head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _read_exactly(sock: socket.socket, already: int, length: int) -> int:
    """Read the rest of a ``length``-byte body into one reused buffer; return bytes read."""
    buffer = bytearray(_BUFFER)
    got = already
    while got < length:
        count = sock.recv_into(buffer, min(_BUFFER, length - got))
        if not count:
            break
        got += count
    return got


def _measure(
    server: Server, direction: str, size: int, transfer: Callable[[], None]
) -> StreamResult:
    before = server.rss_kib()
    reset = server.reset_peak_rss()
    started = time.perf_counter()
    with _RssSampler(server) as sampler:
        transfer()
    seconds = time.perf_counter() - started
    peak = max(sampler.peak_kib, server.peak_rss_kib() if reset else 0)
    return StreamResult(direction, size, seconds, before, peak)


def _upload(sock: socket.socket, size: int) -> None:
    chunk = memoryview(bytes(_BUFFER))
    remaining = size
    while remaining:
        count = min(remaining, _BUFFER)
        sock.sendall(chunk[:count])
        remaining -= count
    status, headers, rest = _read_head(sock)
    length = int(headers.get("content-length", "0"))
    body = rest
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    if status != 200:
        raise StreamError(f"upload answered {status}: {body[:200]!r}")
    received = json.loads(body)["received"]
    if received != size:
        raise StreamError(f"the upstream received {received} of {size} bytes")


def _download(sock: socket.socket, size: int) -> None:
    status, headers, rest = _read_head(sock)
    length = int(headers.get("content-length", "-1"))
    if status != 200 or length != size:
        raise StreamError(f"download answered {status} with content-length {length}")
    got = _read_exactly(sock, len(rest), length)
    if got != size:
        raise StreamError(f"download ended after {got} of {size} bytes")


def _warm_up(port: int, host: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as sock:
        sock.sendall(f"GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while sock.recv(65536):
            pass


def measure_upload(server: Server, port: int, host: str, size: int) -> StreamResult:
    """PUT ``size`` bytes through the dispatcher (``host`` routes to the sink)."""
    _warm_up(port, host)
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as sock:
        sock.sendall(
            f"PUT /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        return _measure(server, "upload", size, lambda: _upload(sock, size))


def measure_download(server: Server, port: int, host: str, size: int) -> StreamResult:
    """GET the upstream's ``/huge`` (``size`` bytes) through the dispatcher."""
    _warm_up(port, host)
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as sock:
        sock.sendall(f"GET /huge HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return _measure(server, "download", size, lambda: _download(sock, size))
