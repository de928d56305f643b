"""The upload sink: a tiny HTTP/1.1 server that reads request bodies and throws them away.

``python -m bench.sink --port P``. Each request is answered ``200`` with
``{"received": <body bytes>}`` once its body has been read to the end, so the benchmark can
check that a 512 MiB upload streamed through the dispatcher arrived whole, while the sink
itself never holds more than one read buffer. asyncio protocol + httptools, keep-alive.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools
import uvloop

__all__ = ["main"]


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._received = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._received += len(body)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        body = b'{"received": %d}' % self._received
        self._received = 0
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        if not self._parser.should_keep_alive():
            self._transport.close()


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.port))


if __name__ == "__main__":
    main()
