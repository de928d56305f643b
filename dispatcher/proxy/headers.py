"""Header policy: what goes upstream and what comes back (README, "Forwarding rules").

Everything a client sends about the path a request took (``X-Forwarded-*``, ``Forwarded``,
``Via``) is hostile unless the peer is one of ``trusted_proxies``; ``X-Dispatch-*`` and
``X-Request-ID`` are always ours. Trust is decided here alone (uvicorn runs with
``proxy_headers=False``), once per request, walking the headers a single time.

ASGI header names are lowercase bytes (uvicorn lowercases them); upstream response header
names arrive in any case and are compared lowercased.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dispatcher.asgi import Headers, RequestIds, Scope
from dispatcher.errors import HeadersTooLarge, InvalidHost, InvalidRequest, LoopDetected
from dispatcher.memo import Memo

if TYPE_CHECKING:
    from dispatcher.routing import Route

__all__ = [
    "HOP_BY_HOP",
    "PROXY_INFO",
    "ForwardContext",
    "HeaderPolicy",
    "RequestHeaders",
    "TrustPolicy",
    "filter_response_headers",
    "forward_context",
    "scope_cookie",
]

#: RFC 9110 section 7.6.1 plus the legacy ones every proxy strips.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Headers a ``Connection`` token may not remove: they frame or route the message, and letting a
# client strip them would desynchronise us from the upstream (request smuggling).
_CONNECTION_PROTECTED: Final = frozenset({b"host", b"content-length"})

# Tokens of a ``Connection`` header that leave nothing more to remove.
_NOT_NAMEABLE: Final = HOP_BY_HOP | _CONNECTION_PROTECTED

# What else a client may claim about the hops before it, in the spellings proxies and
# frameworks read (nginx's X-Real-IP, Akamai/Cloudflare's True-Client-IP, IIS's
# X-Original-URL / X-Rewrite-URL, which some frameworks route by). Like ``Forwarded``: passed
# on from a trusted peer, dropped from anyone else.
PROXY_INFO: Final = frozenset(
    {
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"x-forwarded-protocol",
        b"x-url-scheme",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-host",
        b"x-host",
        b"forwarded",
    }
)

# Headers we set ourselves on the upstream request, or pass on only from a trusted peer.
_OURS: Final = (
    frozenset(
        {
            b"host",
            b"x-request-id",
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"x-forwarded-prefix",
            b"via",
        }
    )
    | PROXY_INFO
)


class TrustPolicy:
    """Which peers may tell us about the hops before them (``trusted_proxies``)."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self._trusted: Memo[str | None, bool] = Memo(self._trusts, 4096)

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an address, or ``None`` when unknown) is a trusted proxy."""
        return self._trusted[peer]

    def _trusts(self, peer: str | None) -> bool:
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # a unix socket path, for instance
            return False
        return any(address in network for network in self._networks)


@dataclass(slots=True)
class RequestHeaders:
    """The upstream request head, plus what the forwarder needs to know about the body."""

    headers: Headers
    content_length: int | None  # the client's Content-Length, when it sent exactly one
    chunked: bool  # the client sent a chunked body (forwarded chunked)
    request_id: str
    request_id_bytes: bytes  # the same, as sent in X-Request-ID
    upgrade: bytes | None = None  # the Upgrade header of a WebSocket handshake


@dataclass(slots=True)
class ForwardContext:
    """The per-request facts the header policy needs (built by the forwarder)."""

    peer: str | None
    scheme: str
    host_header: bytes  # what the upstream gets as Host
    worker: str
    route_kind: str
    prefix: str


#: The scheme a WebSocket scope's client used, as ``X-Forwarded-Proto`` names it.
_HTTP_SCHEMES: Final = {"ws": "http", "wss": "https"}


def forward_context(scope: Scope, route: Route, host_header: bytes) -> ForwardContext:
    """The ``ForwardContext`` of a routed ``http`` or ``websocket`` scope (both forwarders)."""
    client = scope.get("client")
    scheme: str = scope.get("scheme", "http")
    return ForwardContext(
        peer=client[0] if client else None,
        scheme=_HTTP_SCHEMES.get(scheme, scheme),
        host_header=host_header,
        worker=route.worker.name,
        route_kind=route.kind,
        prefix=route.prefix,
    )


class HeaderPolicy:
    """Builds the upstream request headers from the client's (README, "Forwarding rules")
    with the dispatcher's settings; shared by both forwarders (HTTP and WebSocket), so they
    apply the same rules from the same trust cache."""

    def __init__(
        self,
        ids: RequestIds,
        *,
        trust: TrustPolicy,
        via_name: str,
        max_hops: int,
        max_header_bytes: int,
    ) -> None:
        self.ids = ids
        self._trust = trust
        self._via_token = b"1.1 " + via_name.encode("ascii")
        self._max_hops = max_hops
        self._max_header_bytes = max_header_bytes

    def prepare(
        self, incoming: Iterable[tuple[bytes, bytes]], context: ForwardContext
    ) -> RequestHeaders:
        """Raises ``HeadersTooLarge`` (431), ``InvalidRequest`` (bad framing headers) and
        ``LoopDetected`` (508)."""
        trusted = self._trust.trusts(context.peer)
        kept: Headers = []
        named: set[bytes] | None = None
        forwarded_for: list[bytes] = []
        forwarded_proto: bytes | None = None
        forwarded_host: bytes | None = None
        via: list[bytes] = []
        client_host: bytes | None = None
        request_id: bytes | None = None
        lengths: list[bytes] = []
        chunked = False
        size = 0
        for name, value in incoming:
            size += len(name) + len(value) + 4
            if name in HOP_BY_HOP:
                if name == b"connection":
                    if named is None:
                        named = set()
                    named.update(token.strip().lower() for token in value.split(b","))
                elif name == b"transfer-encoding":
                    # Exactly one "chunked" and nothing else: a coding we would not undo
                    # (gzip, identity, parameters) could frame the body differently upstream.
                    if chunked or value.strip().lower() != b"chunked":
                        raise _framing_error("Unsupported Transfer-Encoding")
                    chunked = True
                continue
            if name in _OURS:
                if name == b"host":
                    if client_host is not None:  # RFC 9112 section 3.2
                        raise InvalidHost("More than one Host header")
                    client_host = value
                elif name == b"x-request-id":
                    request_id = value if request_id is None else request_id
                elif name == b"via":
                    via.append(value)
                elif trusted:
                    if name == b"x-forwarded-for":
                        forwarded_for.append(value)
                    elif name == b"x-forwarded-proto":
                        forwarded_proto = value
                    elif name == b"x-forwarded-host":
                        forwarded_host = value
                    elif name in PROXY_INFO:
                        kept.append((name, value))
                continue
            if name.startswith(b"x-dispatch-"):
                continue
            if name == b"content-length":
                lengths.append(value)
                if len(lengths) > 1:
                    continue  # identical duplicates are folded into one (checked below)
            kept.append((name, value))
        if size > self._max_header_bytes:
            raise HeadersTooLarge(f"Request headers exceed {self._max_header_bytes} bytes")
        if named:
            named -= _CONNECTION_PROTECTED
            kept = [(name, value) for name, value in kept if name not in named]

        content_length = None
        if lengths:
            content_length = _content_length(lengths)
            if len(lengths) > 1 or lengths[0].strip() != lengths[0]:
                kept = [(n, v) for n, v in kept if n != b"content-length"]
                kept.append((b"content-length", str(content_length).encode("ascii")))
            if chunked:
                # RFC 9112 section 6.3: Transfer-Encoding wins; never forward both.
                kept = [(name, value) for name, value in kept if name != b"content-length"]
                content_length = None
        if chunked:
            kept.append((b"transfer-encoding", b"chunked"))

        token = self._via_token
        if via:
            hops = sum(1 for value in via for entry in value.split(b",") if entry.strip() == token)
            if hops >= self._max_hops:
                raise LoopDetected("This request has passed through the dispatcher too many times")
            via.append(token)
            token = b", ".join(via)

        rid = self.ids.pick(request_id)
        rid_bytes = rid.encode("ascii")
        peer = (context.peer or "").encode("ascii", "replace")
        chain = b", ".join(forwarded_for) + b", " + peer if forwarded_for else peer
        kept.append((b"host", context.host_header))
        if chain:
            kept.append((b"x-forwarded-for", chain))
        if context.prefix:
            kept.append((b"x-forwarded-prefix", context.prefix.encode("ascii")))
        kept += (
            (b"x-forwarded-proto", forwarded_proto or context.scheme.encode("ascii")),
            (b"x-forwarded-host", forwarded_host or client_host or b""),
            (b"via", token),
            (b"x-request-id", rid_bytes),
            (b"x-dispatch-worker", context.worker.encode("ascii")),
            (b"x-dispatch-route", context.route_kind.encode("ascii")),
        )
        return RequestHeaders(kept, content_length, chunked, rid, rid_bytes)


def scope_cookie(value: bytes, path_prefix: bytes, base_domains: tuple[bytes, ...]) -> bytes:
    """A ``Set-Cookie`` value kept to the tenant that set it (like nginx's
    ``proxy_cookie_domain`` and ``proxy_cookie_path``).

    - A ``Domain`` attribute naming a base domain or a parent of one (``example.com``, ``com``,
      quoted or with a trailing dot too), or one that is not ASCII, would hand the cookie to
      every tenant's subdomain: it is dropped, which leaves a host-only cookie.
    - On path and query routes (``path_prefix`` given) every tenant shares one origin: the
      cookie's ``Path`` is put under the route's prefix (``Path=/`` becomes
      ``Path=/dispatch/<worker>``, ``Path=/x`` becomes ``Path=/dispatch/<worker>/x``; no
      ``Path`` gets the prefix). This keeps cookies from being *sent* to another tenant's
      paths; it cannot keep another tenant's script on the same origin from reading them.
    """
    parts = value.split(b";")
    kept = [parts[0]]
    has_path = False
    for attribute in parts[1:]:
        key, _, argument = attribute.partition(b"=")
        key = key.strip().lower()
        if key == b"domain":
            # Read the way the most lenient browser does: quotes and dots at either end off
            # (``example.com.`` covers every tenant's ``x.example.com.``), and a name that is
            # not ASCII could be IDNA-mapped onto a base domain (fullwidth letters, ``。``).
            domain = argument.strip(b' \t"').strip(b".").lower()
            if (
                not domain
                or not domain.isascii()
                or any(base == domain or base.endswith(b"." + domain) for base in base_domains)
            ):
                continue
        elif key == b"path" and path_prefix:
            has_path = True
            path = argument.strip()
            below = path if path.startswith(b"/") and path != b"/" else b""
            attribute = b" Path=" + path_prefix + below
        kept.append(attribute)
    if path_prefix and not has_path:
        kept.append(b" Path=" + path_prefix)
    return b";".join(kept)


def _framing_error(message: str) -> InvalidRequest:
    """A request whose body framing we refuse: where it ends is unknown, so the answer
    closes the connection (whatever follows cannot be trusted to be a next request)."""
    return InvalidRequest(message, headers={"Connection": "close"})


def _content_length(values: list[bytes]) -> int | None:
    if not values:
        return None
    # RFC 9110 section 8.6: identical duplicates may be folded; anything else is an error.
    distinct = {value.strip() for value in b",".join(values).split(b",")}
    if len(distinct) != 1:
        raise _framing_error("Conflicting Content-Length headers")
    (value,) = distinct
    if not value.isdigit() or len(value) > 18:
        raise _framing_error("Malformed Content-Length header")
    return int(value)


# Response headers that need a look: one set lookup tells the rest (most headers) apart.
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"x-request-id", b"location", b"set-cookie"}


def filter_response_headers(
    headers: Iterable[tuple[bytes, bytes]],
    request_id: bytes,
    location_prefix: bytes = b"",
    cookie_path: bytes = b"",
    cookie_domains: tuple[bytes, ...] = (),
) -> Headers:
    """The upstream's response headers as the client gets them.

    Hop-by-hop headers (and those ``Connection`` names) go, the upstream's ``X-Request-ID`` is
    replaced by ours, on path routes an absolute-path ``Location`` gets the route prefix, and
    every ``Set-Cookie`` is kept to its tenant (``scope_cookie``).
    """
    out: Headers = []
    named: set[bytes] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_SPECIAL:
            if lower in HOP_BY_HOP:
                if lower == b"connection":
                    # Usually "keep-alive" or "close": nothing to remove beyond the hop-by-hop
                    # set.
                    for token in value.lower().split(b","):
                        token = token.strip()
                        if token not in _NOT_NAMEABLE:
                            if named is None:
                                named = set()
                            named.add(token)
                continue
            if lower == b"x-request-id":
                continue
            if lower == b"set-cookie":
                value = scope_cookie(value, cookie_path, cookie_domains)
            elif location_prefix and value.startswith(b"/") and not value.startswith(b"//"):
                value = location_prefix + value
        out.append((lower, value))
    if named:
        out = [(name, value) for name, value in out if name not in named]
    out.append((b"x-request-id", request_id))
    return out
