"""An ``UpstreamTransport`` on aiohttp's client, used only by the benchmark.

It lets the benchmark measure the upstream client choice the README documents: the dispatcher
runs once with its own HTTP/1.1 pool (``H1Pool``) and once with this transport, everything
else equal. It keeps the transport contract: no redirects, no cookie jar, no proxy
environment, no decompression, the caller's headers sent as given (aiohttp adds none of its
own), raw response headers, and errors mapped to the dispatcher's upstream errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from dispatcher.errors import UpstreamConnectFailed, UpstreamTimeout, UpstreamUnavailable
from dispatcher.proxy.transport import (
    Headers,
    Origin,
    RequestBody,
    UpstreamBodyError,
    UpstreamResponse,
)

__all__ = ["AiohttpTransport"]

# Headers aiohttp would add to a request that lacks them; a proxy sends the client's only.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class _Response:
    """An aiohttp response behind the ``UpstreamResponse`` protocol."""

    __slots__ = ("_done", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._done = False
        self.status = response.status
        self.headers: Headers = list(response.raw_headers)

    @property
    def complete(self) -> bool:
        return False  # not known ahead: the forwarder learns the end from the iterator

    async def body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamBodyError("The upstream response body was cut short") from exc
        self._done = True

    async def aclose(self) -> None:
        if self._done:
            self._response.release()  # back to the pool
        else:
            self._response.close()  # unfinished: the connection must not be reused


class _CountedBody:
    """The request body as aiohttp reads it: counts what was sent, remembers its own error."""

    def __init__(self, body: RequestBody) -> None:
        self.body = body
        self.error: BaseException | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.body.chunks:
                if chunk:
                    self.body.sent += len(chunk)
                    yield chunk
        except Exception as exc:
            self.error = exc
            raise


class AiohttpTransport:
    """``UpstreamTransport`` implemented with one ``aiohttp.ClientSession`` (made lazily)."""

    def __init__(self, *, keepalive_timeout: float = 30.0) -> None:
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=self._keepalive_timeout
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: RequestBody | None,
        *,
        connect_timeout: float,
        response_timeout: float,
        idle_timeout: float,
    ) -> UpstreamResponse:
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        url = URL(f"{origin.scheme}://{host}:{origin.port}{target.decode('latin-1')}", encoded=True)
        chunked = body is not None and body.length is None
        # aiohttp frames a body of unknown length itself and refuses a caller's chunked header.
        sent_headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in headers
            if not (chunked and name == b"transfer-encoding")
        ]
        counted = _CountedBody(body) if body is not None else None
        options: dict[str, Any] = {
            "headers": sent_headers,
            "data": counted.chunks() if counted is not None else None,
            "allow_redirects": False,
            "timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout, sock_read=idle_timeout
            ),
        }
        try:
            async with asyncio.timeout(connect_timeout + response_timeout):
                response = await self._client().request(method.decode("ascii"), url, **options)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if counted is not None and counted.error is not None:
                raise counted.error from None
            if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
                raise UpstreamConnectFailed() from exc
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout() from exc
            raise UpstreamUnavailable() from exc
        return _Response(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
