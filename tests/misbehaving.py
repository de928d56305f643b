"""An upstream that misbehaves on purpose: a raw asyncio HTTP/1.1 server in a thread.

Paths (the request line is all it reads, plus a Content-Length body):

- ``/hang``: reads the request and never answers;
- ``/reset``: announces 1000 bytes, sends 100, then resets the connection;
- ``/stall``: announces 1000 bytes, sends 100, then goes quiet;
- anything else: ``200`` with ``ok``, keep-alive.

``closed[path]`` is a ``threading.Event`` set when a connection that asked for ``path`` is
closed by the peer (the dispatcher), so tests can see an upstream exchange being cancelled.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import defaultdict

from tests.rawserver import RawServer

__all__ = ["MisbehavingServer"]


class MisbehavingServer(RawServer):
    def __init__(self) -> None:
        super().__init__()
        self.closed: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.requests: defaultdict[str, int] = defaultdict(int)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = ""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode().split("?")[0]
                self.requests[path] += 1
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if path == "/hang":
                    await reader.read()  # until the dispatcher gives up on us
                    return
                if path in ("/reset", "/stall"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
                    await writer.drain()
                    if path == "/reset":
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        writer.transport.abort()
                        return
                    await reader.read()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if path:
                self.closed[path].set()
