"""Request-level plumbing shared by the server, the gateway and both forwarders.

The one home of: the ASGI types, the generic header helpers, the request ids and the
per-request record (``Exchange``). It depends on nothing else in the dispatcher, so the inbound
server (``dispatcher.h1server``) can use it without reaching into the outbound proxy.

ASGI header names are lowercase bytes (the server lowercases them).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

__all__ = [
    "DEFAULT_LIMITS",
    "LIMITS_STATE_KEY",
    "REQUEST_IDS",
    "ASGIApp",
    "Exchange",
    "Headers",
    "Message",
    "Receive",
    "RequestIds",
    "Scope",
    "Send",
    "ServerLimits",
    "header_lines",
    "header_value",
    "request_id_of",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class ServerLimits(NamedTuple):
    """The deadlines the HTTP server holds clients to (DESIGN.md, "Settings").

    The application puts them in the lifespan state under ``LIMITS_STATE_KEY``; the server
    (``dispatcher.h1server``) reads them from the state it hands every connection.
    """

    #: The whole request head must arrive within this many seconds of its first byte.
    request_head_timeout: float = 10.0
    #: A request body still due may go this many seconds without a byte.
    request_body_timeout: float = 30.0


DEFAULT_LIMITS: Final = ServerLimits()
LIMITS_STATE_KEY: Final = "dispatcher.server_limits"

_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._-]{1,128}")

#: ``name: value`` of one header (a bound method: mapped, it runs no Python code per header).
_NAME_VALUE: Final = b": ".join


def header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The header lines of an HTTP/1.1 head, CRLF between them (none after the last)."""
    return b"\r\n".join(map(_NAME_VALUE, headers))


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lowercase) in ASGI ``headers``, or ``None``."""
    for key, value in headers:
        if key == name:
            return value if type(value) is bytes else bytes(value)
    return None


class RequestIds:
    """Request ids: a client's valid ``X-Request-ID`` is kept, otherwise one is made.

    Generated ids are a random per-process prefix and a counter: unique across processes and
    restarts without a syscall per request.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"

    def pick(self, incoming: bytes | None) -> str:
        """The client's id if it is 1-128 characters of ``[A-Za-z0-9._-]``, else a new one."""
        if incoming is not None and _REQUEST_ID.fullmatch(incoming):
            return incoming.decode("ascii")
        return self.new()


#: The process's request ids (the server's own error answers, the gateway, the forwarders).
REQUEST_IDS: Final = RequestIds()


def request_id_of(headers: Iterable[tuple[bytes, bytes]], ids: RequestIds = REQUEST_IDS) -> str:
    """The id of a request with ASGI ``headers`` (for answers the dispatcher writes itself;
    the forwarders take it from the header policy's one pass over the headers)."""
    return ids.pick(header_value(headers, b"x-request-id"))


@dataclass(slots=True)
class Exchange:
    """What happened to one request: filled in as it goes, logged once at the end."""

    request_id: str = ""
    status: int = 0
    worker: str = ""
    route: str = ""
    upstream: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    response_started: bool = False
    upstream_error: str = ""  # set when the upstream failed after the response started
    body_done: bool = True  # the client's request body has been read to the end
