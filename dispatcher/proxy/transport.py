"""The seam between the forwarder and the upstream HTTP client.

The forwarder speaks only these types; the client behind them can be swapped (the default is
the purpose-built HTTP/1.1 pool in ``_h1pool``). A transport never follows redirects, keeps no
cookies, reads no proxy environment variables and never decompresses: bytes pass raw.

Transport failures are raised as the ``UpstreamUnavailable`` / ``UpstreamTimeout`` errors of
``dispatcher.errors`` (mapped inside the transport, chained ``from`` the socket error), and
failures after the response started as ``UpstreamBodyError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = [
    "Origin",
    "RequestBody",
    "UpstreamBodyError",
    "UpstreamResponse",
    "UpstreamTransport",
]

Headers = list[tuple[bytes, bytes]]


class Origin(NamedTuple):
    """Where a connection goes: the pool key (a tuple: hashed in C, twice per request)."""

    scheme: str  # "http" or "https"
    host: str  # IPv6 literals without brackets
    port: int


@dataclass(slots=True)
class RequestBody:
    """A request body to stream upstream.

    ``chunks`` yields the body bytes (empty chunks are allowed and skipped). ``length`` is the
    exact byte count when the client sent ``Content-Length`` (the body is then sent with that
    ``Content-Length``), or ``None`` to send it ``Transfer-Encoding: chunked``. The caller puts
    the matching framing header into the request headers; the transport only frames the bytes.
    """

    chunks: AsyncIterator[bytes]
    length: int | None = None
    sent: int = field(default=0)


class UpstreamBodyError(Exception):
    """The upstream failed after its response had started (reset or timeout mid-body)."""


class UpstreamResponse(Protocol):
    """A response whose head has arrived and whose body is read as a stream."""

    status: int
    headers: Headers  # as received, hop-by-hop included; names in their received case

    @property
    def complete(self) -> bool:
        """Whether the exchange is over: the body received and handed out in full (no chunk
        will follow) and nothing left to release (``aclose()`` would do nothing).

        Lets the caller send the last chunk as the end of the response at once, and skip
        ``aclose()``. ``False`` is always a correct answer: the end is then learnt from
        ``body()`` finishing, and ``aclose()`` releases what is left.
        """
        ...

    def body(self) -> AsyncIterator[bytes]:
        """Yield the body chunk by chunk as it arrives (de-chunked, never decompressed).

        Raises ``UpstreamBodyError`` if the body is cut short or no byte arrives within the
        idle timeout. After the last chunk the connection goes back to the pool.
        """
        ...

    async def aclose(self) -> None:
        """Release the response; an unfinished exchange closes its connection for good."""
        ...


class UpstreamTransport(Protocol):
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
        """Send a request and return once the response head arrived.

        ``target`` is the request-target (path and query, raw bytes). ``headers`` are final:
        they include ``Host`` and any framing header. Raises ``UpstreamUnavailable`` when the
        connection cannot be made or breaks before a response head, ``UpstreamTimeout`` when
        no head arrives within ``response_timeout`` seconds of the request being sent. If the
        caller is cancelled the exchange is abandoned and its connection closed.
        """
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...
