"""An upstream that records, byte for byte, every request the dispatcher sends it.

A raw asyncio server in a thread. Each connection is parsed strictly with ``httptools``
(llhttp, no leniencies): a complete, well-framed request is recorded in ``requests``; the bytes
of a connection that closed in the middle of a request, or that did not parse, go to
``fragments``. The hostile-input tests use both to say what reached a tenant: "nothing"
means no request and no fragment.

Answers, by the request path (the query is ignored):

- ``/script/<name>`` or a ``script=<name>`` query parameter: the raw bytes in
  ``scripts[name]``, then the connection is closed;
- anything else: ``200`` with ``ok``, keep-alive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httptools

from tests.rawserver import RawServer

__all__ = ["Received", "RecordingUpstream"]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclass
class Received:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lowercased, in order
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def value(self, name: bytes) -> bytes | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name!r} sent {len(found)} times"
        return found[0] if found else None


@dataclass
class _Parse:
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    done: list[Received] = field(default_factory=list)
    in_request: bool = False
    parser: Any = None

    def on_message_begin(self) -> None:
        self.in_request = True
        self.target, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        method = self.parser.get_method()
        self.done.append(Received(method, self.target, self.headers, b"".join(self.body)))


def _script_name(target: bytes) -> str | None:
    path, _, query = target.partition(b"?")
    if path.startswith(b"/script/"):
        return path[8:].decode()
    for pair in query.split(b"&"):
        if pair.startswith(b"script="):
            return pair[7:].decode()
    return None


class RecordingUpstream(RawServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Received] = []
        self.fragments: list[bytes] = []
        self.scripts: dict[str, bytes] = {}
        self.connections = 0

    def seen(self) -> int:
        """How many things reached the upstream so far (requests and fragments)."""
        return len(self.requests) + len(self.fragments)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        state = _Parse()
        state.parser = httptools.HttpRequestParser(state)
        pending = bytearray()  # bytes of the request being parsed
        try:
            while data := await reader.read(65536):
                pending += data
                try:
                    state.parser.feed_data(data)
                except httptools.HttpParserError:
                    self.fragments.append(bytes(pending))
                    return
                while state.done:
                    request = state.done.pop(0)
                    self.requests.append(request)
                    pending.clear()
                    script = _script_name(request.target)
                    if script is not None:
                        writer.write(self.scripts[script])
                        await writer.drain()
                        return
                    writer.write(OK)
                    await writer.drain()
            if state.in_request or pending:
                self.fragments.append(bytes(pending))
        except ConnectionError:
            if pending:
                self.fragments.append(bytes(pending))
        finally:
            writer.close()
