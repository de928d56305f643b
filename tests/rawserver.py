"""``RawServer``: a raw asyncio stream server in a thread on an unused 127.0.0.1 port.

The base of the test upstreams that speak HTTP by hand (``tests.misbehaving``,
``tests.recording``): a subclass writes ``_handle(reader, writer)``; this class owns the socket,
the thread and its event loop, and start and stop (as a context manager).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Self

__all__ = ["RawServer"]


class RawServer:
    """Serve ``_handle`` for every connection, in a thread; use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

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
