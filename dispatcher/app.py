"""``create_app(settings)``: the one place the dispatcher's parts are wired together.

- ``DispatcherState`` (``dispatcher.state``): lifecycle, the registry snapshot, the route
  decision, and what the control plane reads;
- ``Gateway`` (``dispatcher.gateway``): the data plane, one pure-ASGI callable;
- the forwarders (``dispatcher.proxy``) share one header policy and one upstream selector, so
  they apply the same rules and a target that refused a connection is skipped by both;
- the control plane (``dispatcher.control``) reads the state through ``ControlState``.
"""

from __future__ import annotations

from dispatcher.asgi import REQUEST_IDS
from dispatcher.control.app import create_control_app
from dispatcher.gateway import Gateway
from dispatcher.proxy._h1pool import H1Pool
from dispatcher.proxy.headers import HeaderPolicy, TrustPolicy
from dispatcher.proxy.http import Forwarder
from dispatcher.proxy.transport import UpstreamTransport
from dispatcher.proxy.upstreams import UpstreamSelector
from dispatcher.proxy.websocket import WebSocketForwarder
from dispatcher.settings import Settings
from dispatcher.state import DispatcherState

__all__ = ["Gateway", "create_app"]


def create_app(settings: Settings, *, transport: UpstreamTransport | None = None) -> Gateway:
    """The dispatcher ASGI app for ``settings`` (run it with uvicorn, lifespan on)."""
    transport = transport or H1Pool(
        max_response_head=settings.max_response_header_bytes,
        networks=settings.upstream_networks,
    )
    selector = UpstreamSelector()
    # One judgement of which peers are proxies, for the forwarding headers and the rate
    # limiter's client address alike.
    trust = TrustPolicy(settings.trusted_networks)
    state = DispatcherState(settings, transport, selector, trust)
    policy = HeaderPolicy(
        REQUEST_IDS,
        trust=trust,
        via_name=settings.via_name,
        max_hops=settings.max_hops,
        max_header_bytes=settings.max_header_bytes,
    )
    return Gateway(
        settings,
        state,
        Forwarder(settings, transport, policy, selector),
        WebSocketForwarder(settings, policy, selector),
        create_control_app(settings, state),
    )
