"""The streaming HTTP forwarder: one routed request to its worker's upstream and back.

Pure ASGI (no Starlette objects). Bodies stream both ways with backpressure: the request body
is read from ``receive`` only as fast as the upstream takes it, and the response body is
read from the upstream only as fast as the client takes it; nothing is buffered whole.

Failures before the response starts raise the dispatcher's errors (the gateway answers them
as JSON); a failure after the response started closes the client connection, so the client
can tell the body is incomplete, and is never followed by a second status line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import structlog

from dispatcher.asgi import Exchange, Receive, Scope, Send, header_value
from dispatcher.errors import PayloadTooLarge, WorkerOverloaded
from dispatcher.logging import bind_request_id
from dispatcher.proxy.coarse import CoarseTimers
from dispatcher.proxy.headers import (
    HeaderPolicy,
    RequestHeaders,
    filter_response_headers,
    forward_context,
)
from dispatcher.proxy.transport import (
    RequestBody,
    UpstreamBodyError,
    UpstreamResponse,
    UpstreamTransport,
)
from dispatcher.proxy.upstreams import Target, UpstreamSelector
from dispatcher.routing import Route, RouteKind
from dispatcher.settings import Settings

__all__ = ["ClientDisconnected", "Forwarder", "route_prefixes"]

_log = structlog.get_logger("dispatcher.proxy")

# How long an exchange runs (plus up to one coarse tick) before it starts watching for the
# client's disconnect. Slow ones (long polls, server-sent events, slow upstreams) are then
# cancelled as soon as the client goes; fast ones finish first and cost no extra task.
_ARM_DELAY = 0.05


class ClientDisconnected(Exception):
    """The client went away before the exchange finished."""


class Forwarder:
    """Forwards routed requests; owns nothing but per-worker counters (the transport is lent)."""

    def __init__(
        self,
        settings: Settings,
        transport: UpstreamTransport,
        policy: HeaderPolicy,
        selector: UpstreamSelector,
    ) -> None:
        self._transport = transport
        self._policy = policy
        self._selector = selector
        self._max_body_bytes = settings.max_body_bytes
        self._max_concurrency = settings.max_concurrency
        self._upstream_timeout = settings.upstream_timeout
        self._connect_timeout = settings.connect_timeout
        self._idle_timeout = settings.stream_idle_timeout
        self._inflight: dict[str, int] = {}
        self._cookie_domains = tuple(domain.encode("ascii") for domain in settings.base_domains)
        self._timers: CoarseTimers | None = None  # when watchers start

    def _watch(self, receive: Receive) -> _DisconnectWatcher:
        timers = self._timers
        if timers is None:
            timers = self._timers = CoarseTimers(asyncio.get_running_loop())
        # current_task() given the loop: without it Python 3.11 makes a getpid() system call.
        return _DisconnectWatcher(receive, asyncio.current_task(timers.loop), timers)

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, route: Route, exchange: Exchange
    ) -> None:
        targets = self._selector.candidates(route.worker)
        prepared, limit = self._admit(scope, route, targets[0], exchange)
        body: RequestBody | None = None
        watcher: _DisconnectWatcher | None = None
        if prepared.chunked or prepared.content_length:
            exchange.body_done = False
            body = RequestBody(_read_body(receive, limit, exchange), prepared.content_length)
        else:
            watcher = self._watch(receive)
        name = exchange.worker
        self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            response = await self._selector.first_accepting(
                targets, self._attempt, body, scope, route, prepared, body, exchange
            )
            try:
                prefix = cookie_path = b""
                if route.prefix:  # path and query routes: tenants share one origin
                    prefix, cookie_path = route_prefixes(route)
                headers = filter_response_headers(
                    response.headers,
                    prepared.request_id_bytes,
                    prefix,
                    cookie_path,
                    self._cookie_domains,
                )
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": headers}
                )
                exchange.status = response.status
                exchange.response_started = True
                if watcher is None and exchange.body_done:
                    watcher = self._watch(receive)
                await self._stream_response(send, response, exchange, watcher)
            finally:
                if not response.complete:  # else there is nothing to release
                    await response.aclose()
        except ClientDisconnected:
            exchange.status = 499  # nobody left to answer; the upstream exchange is closed
        except asyncio.CancelledError:
            if watcher is None or not watcher.fired:
                raise
            # The client went away: the upstream exchange is abandoned (its connection closed
            # by ``aclose`` above) and there is nobody left to answer.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            exchange.status = 499
        finally:
            if watcher is not None:
                if watcher.task is not None:
                    await watcher.aclose()
                elif watcher.active:
                    watcher.stop()  # never started: nothing to wait for
            left = self._inflight[name] - 1
            if left:
                self._inflight[name] = left
            else:
                del self._inflight[name]

    def _admit(
        self, scope: Scope, route: Route, target: Target, exchange: Exchange
    ) -> tuple[RequestHeaders, int]:
        """The upstream request headers and the body limit. Raises what refuses a request
        before anything is sent (413, 431, 503 overloaded, 508...)."""
        worker = route.worker
        exchange.worker = worker.name
        exchange.route = route.kind
        exchange.upstream = target.url
        host = (
            header_value(scope["headers"], b"host") or b""
            if worker.preserve_host
            else target.authority
        )
        context = forward_context(scope, route, host)
        prepared = self._policy.prepare(scope["headers"], context)
        exchange.request_id = prepared.request_id
        # Every log line emitted while handling this request (ours, uvicorn's) carries the id.
        bind_request_id(prepared.request_id)
        limit = worker.max_body_bytes
        limit = self._max_body_bytes if limit is None else limit
        if prepared.content_length is not None and prepared.content_length > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
        if self._inflight.get(worker.name, 0) >= (worker.max_concurrency or self._max_concurrency):
            raise WorkerOverloaded(
                f"Worker '{worker.name}' has too many requests in flight",
                headers={"Retry-After": "1"},
            )
        return prepared, limit

    def _attempt(
        self,
        target: Target,
        position: int,
        scope: Scope,
        route: Route,
        prepared: RequestHeaders,
        body: RequestBody | None,
        exchange: Exchange,
    ) -> Awaitable[UpstreamResponse]:
        """Send the request to one target (for ``UpstreamSelector.first_accepting``)."""
        worker = route.worker
        headers = prepared.headers
        if position:
            exchange.upstream = target.url
            if not worker.preserve_host:
                headers = prepared.headers = [
                    (b"host", target.authority) if name == b"host" else (name, value)
                    for name, value in headers
                ]
        path = target.base_path + route.upstream_path
        return self._transport.request(
            target.origin,
            scope["method"].encode("ascii"),
            path + b"?" + route.query if route.query else path,
            headers,
            body,
            connect_timeout=self._connect_timeout,
            response_timeout=worker.upstream_timeout or self._upstream_timeout,
            idle_timeout=self._idle_timeout,
        )

    async def _stream_response(
        self,
        send: Send,
        response: UpstreamResponse,
        exchange: Exchange,
        watcher: _DisconnectWatcher | None,
    ) -> None:
        last = b""
        try:
            async for chunk in response.body():
                exchange.bytes_out += len(chunk)
                if response.complete:
                    last = chunk  # nothing follows: send it as the end of the response
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBodyError:
            exchange.upstream_error = "body"
            # Headers are out: the only honest signal left is to close the connection, which
            # the server does when we return without finishing the body.
            _log.warning(
                "upstream_failed_mid_body", request_id=exchange.request_id, worker=exchange.worker
            )
            return
        if watcher is not None:
            watcher.stop()
        await send({"type": "http.response.body", "body": last, "more_body": False})


class _DisconnectWatcher:
    """Cancels the forwarding task as soon as the client disconnects.

    Armed only while nothing else reads ``receive`` (no request body, or the body has been
    read), so it is the sole reader. It starts lazily, when its coarse timer expires: quick
    exchanges (most of them) finish first and never pay for a task. ``stop()`` before the
    final send keeps a late disconnect from cancelling an exchange that already finished.
    """

    __slots__ = ("_receive", "_target", "_timers", "active", "fired", "task")

    def __init__(
        self, receive: Receive, target: asyncio.Task[Any] | None, timers: CoarseTimers
    ) -> None:
        self._receive = receive
        self._target = target
        self._timers = timers
        self.task: asyncio.Task[None] | None = None  # the watching task, once started
        self.active = True  # not stopped yet
        self.fired = False  # the client went away and the target was cancelled
        timers.add(self, _ARM_DELAY)

    def expire(self) -> None:
        """Still running after ``_ARM_DELAY``: start watching."""
        if self.active:
            self.task = self._timers.loop.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if self.active and self._target is not None:
            self.fired = True
            self._target.cancel()

    def stop(self) -> None:
        self.active = False
        self._timers.discard(self)

    async def aclose(self) -> None:
        self.stop()
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def route_prefixes(route: Route) -> tuple[bytes, bytes]:
    """The ``Location`` prefix and the cookie ``Path`` of a path or query route."""
    prefix = route.prefix.encode("ascii")
    if route.kind is RouteKind.PATH:
        return prefix, prefix
    # Query routes share their prefix with every worker: cookies go under /dispatch/<name>.
    return b"", prefix + b"/" + route.worker.name.encode("ascii")


async def _read_body(receive: Receive, limit: int, exchange: Exchange) -> AsyncIterator[bytes]:
    """The client's request body, chunk by chunk, counted against ``limit``."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        exchange.bytes_in += len(chunk)
        if exchange.bytes_in > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            exchange.body_done = True
            return
