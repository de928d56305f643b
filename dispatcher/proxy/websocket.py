"""The WebSocket forwarder (placeholder until it lands: every handshake is refused)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dispatcher.errors import UpstreamUnavailable
from dispatcher.proxy.headers import RequestIds
from dispatcher.proxy.http import Exchange
from dispatcher.routing import Route
from dispatcher.settings import Settings

__all__ = ["WebSocketForwarder"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class WebSocketForwarder:
    def __init__(self, settings: Settings, ids: RequestIds) -> None:
        self._settings = settings
        self._ids = ids

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, route: Route, exchange: Exchange
    ) -> None:
        raise UpstreamUnavailable("WebSocket forwarding is not available yet")
