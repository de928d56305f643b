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

__all__ = ["MisbehavingServer"]


class MisbehavingServer:
    def __init__(self) -> None:
        self.closed: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.requests: defaultdict[str, int] = defaultdict(int)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MisbehavingServer:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock)
        self._started.set()
        async with server:
            await self._stop.wait()

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
