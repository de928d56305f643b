"""Header policy (``dispatcher.proxy.headers``): README, "Forwarding rules".

ASGI gives request header names as lowercase bytes; upstream response names come in any case.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dispatcher.asgi import RequestIds
from dispatcher.errors import HeadersTooLarge, InvalidHost, InvalidRequest, LoopDetected
from dispatcher.proxy.headers import (
    HOP_BY_HOP,
    PROXY_INFO,
    ForwardContext,
    HeaderPolicy,
    RequestHeaders,
    TrustPolicy,
    filter_response_headers,
    scope_cookie,
)

Headers = list[tuple[bytes, bytes]]

NETWORKS = [
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "127.0.0.1/32", "::1/128", "fd00::/8")
]
UNTRUSTED_PEER = "203.0.113.7"
TRUSTED_PEER = "10.0.0.5"
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def prepare(
    incoming: Headers,
    *,
    peer: str | None = UNTRUSTED_PEER,
    scheme: str = "https",
    prefix: str = "",
    worker: str = "shop",
    route_kind: str = "subdomain",
    via_name: bytes = b"dispatcher",
    max_hops: int = 3,
    max_header_bytes: int = 32_768,
    ids: RequestIds | None = None,
) -> RequestHeaders:
    context = ForwardContext(
        peer=peer,
        scheme=scheme,
        host_header=b"10.0.0.9:8080",
        worker=worker,
        route_kind=route_kind,
        prefix=prefix,
    )
    policy = HeaderPolicy(
        ids or RequestIds(),
        trust=TrustPolicy(NETWORKS),
        via_name=via_name.decode("ascii"),
        max_hops=max_hops,
        max_header_bytes=max_header_bytes,
    )
    return policy.prepare(incoming, context)


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def names(headers: Headers) -> list[bytes]:
    return [key.lower() for key, _ in headers]


def header(headers: Headers, name: bytes) -> bytes:
    (value,) = values(headers, name)
    return value


BASE: Headers = [(b"host", b"shop.example.com"), (b"accept", b"*/*")]


# --- hop-by-hop -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"connection", id="connection"),
        pytest.param(b"keep-alive", id="keep-alive"),
        pytest.param(b"proxy-connection", id="proxy-connection"),
        pytest.param(b"te", id="te"),
        pytest.param(b"upgrade", id="upgrade"),
        pytest.param(b"trailer", id="trailer"),
        pytest.param(b"proxy-authorization", id="proxy-authorization"),
        pytest.param(b"proxy-authenticate", id="proxy-authenticate"),
    ],
)
def test_request_hop_by_hop_headers_are_removed(name: bytes) -> None:
    result = prepare([*BASE, (name, b"x-whatever"), (b"x-end", b"1")])
    assert name not in names(result.headers)
    assert header(result.headers, b"accept") == b"*/*"
    assert header(result.headers, b"x-end") == b"1"


def test_hop_by_hop_set_names_every_header_of_design() -> None:
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
        b"proxy-authenticate",
    } <= HOP_BY_HOP


@pytest.mark.parametrize(
    ("connection", "removed"),
    [
        pytest.param([b"x-secret"], [b"x-secret"], id="one-token"),
        pytest.param([b"close, X-Secret , keep-alive"], [b"x-secret"], id="list-mixed-case"),
        pytest.param([b"x-a", b"x-b"], [b"x-a", b"x-b"], id="two-connection-headers"),
        pytest.param([b"cookie,x-a"], [b"cookie", b"x-a"], id="end-to-end-header-named"),
    ],
)
def test_headers_named_by_connection_are_removed(
    connection: list[bytes], removed: list[bytes]
) -> None:
    incoming = [
        *BASE,
        *((b"connection", value) for value in connection),
        (b"x-secret", b"1"),
        (b"x-a", b"2"),
        (b"x-b", b"3"),
        (b"cookie", b"c=1"),
        (b"x-other", b"4"),
    ]
    result = prepare(incoming)
    for name in removed:
        assert name not in names(result.headers)
    assert header(result.headers, b"x-other") == b"4"


def test_connection_cannot_remove_host_or_content_length() -> None:
    incoming = [*BASE, (b"connection", b"host, content-length"), (b"content-length", b"5")]
    result = prepare(incoming)
    assert header(result.headers, b"host") == b"10.0.0.9:8080"
    assert header(result.headers, b"content-length") == b"5"
    assert result.content_length == 5


def test_connection_cannot_remove_the_headers_the_dispatcher_adds() -> None:
    named = b"x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-forwarded-prefix, via, "
    named += b"x-request-id, x-dispatch-worker, x-dispatch-route"
    result = prepare([*BASE, (b"connection", named)], prefix="/dispatch/shop")
    for name in (
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"via",
        b"x-request-id",
        b"x-dispatch-worker",
        b"x-dispatch-route",
    ):
        assert len(values(result.headers, name)) == 1, name


def test_end_to_end_headers_are_kept_in_order_with_duplicates() -> None:
    incoming = [
        (b"host", b"shop.example.com"),
        (b"cookie", b"a=1"),
        (b"accept", b"text/html"),
        (b"cookie", b"b=2"),
        (b"authorization", b"Bearer t"),
        (b"x-custom", b"v"),
    ]
    result = prepare(incoming)
    kept = [
        (k, v)
        for k, v in result.headers
        if k in {b"cookie", b"accept", b"authorization", b"x-custom"}
    ]
    assert kept == incoming[1:]


# --- X-Dispatch-* ---------------------------------------------------------------------------


@pytest.mark.parametrize("peer", [UNTRUSTED_PEER, TRUSTED_PEER])
def test_incoming_x_dispatch_headers_are_replaced_by_ours(peer: str) -> None:
    incoming = [
        *BASE,
        (b"x-dispatch-worker", b"admin"),
        (b"x-dispatch-route", b"path"),
        (b"x-dispatch-secret", b"s3cret"),
        (b"x-dispatch-", b"empty-suffix"),
    ]
    result = prepare(incoming, peer=peer, worker="shop", route_kind="custom_domain")
    dispatch = [(k, v) for k, v in result.headers if k.startswith(b"x-dispatch-")]
    assert sorted(dispatch) == [
        (b"x-dispatch-route", b"custom_domain"),
        (b"x-dispatch-worker", b"shop"),
    ]


@pytest.mark.parametrize("kind", ["subdomain", "custom_domain", "path", "query"])
def test_x_dispatch_route_names_the_route_kind(kind: str) -> None:
    result = prepare(BASE, route_kind=kind, worker="blog")
    assert header(result.headers, b"x-dispatch-route") == kind.encode()
    assert header(result.headers, b"x-dispatch-worker") == b"blog"


# --- X-Forwarded-* --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "incoming", "expected"),
    [
        pytest.param(UNTRUSTED_PEER, [], b"203.0.113.7", id="untrusted-no-chain"),
        pytest.param(UNTRUSTED_PEER, [b"1.2.3.4"], b"203.0.113.7", id="untrusted-chain-replaced"),
        pytest.param(
            UNTRUSTED_PEER, [b"1.2.3.4", b"5.6.7.8"], b"203.0.113.7", id="untrusted-two-headers"
        ),
        pytest.param(TRUSTED_PEER, [], b"10.0.0.5", id="trusted-no-chain"),
        pytest.param(TRUSTED_PEER, [b"1.2.3.4"], b"1.2.3.4, 10.0.0.5", id="trusted-appended"),
        pytest.param(
            TRUSTED_PEER,
            [b"1.2.3.4, 9.9.9.9", b"5.6.7.8"],
            b"1.2.3.4, 9.9.9.9, 5.6.7.8, 10.0.0.5",
            id="trusted-two-headers-joined",
        ),
        pytest.param("10.255.255.255", [b"1.1.1.1"], b"1.1.1.1, 10.255.255.255", id="cidr-edge"),
        pytest.param("11.0.0.1", [b"1.1.1.1"], b"11.0.0.1", id="just-outside-cidr"),
        pytest.param("127.0.0.1", [b"1.1.1.1"], b"1.1.1.1, 127.0.0.1", id="trusted-single-ip"),
        pytest.param("127.0.0.2", [b"1.1.1.1"], b"127.0.0.2", id="untrusted-neighbour"),
        pytest.param("::1", [b"2001:db8::1"], b"2001:db8::1, ::1", id="trusted-ipv6"),
        pytest.param("fd12::1", [b"1.1.1.1"], b"1.1.1.1, fd12::1", id="trusted-ipv6-cidr"),
        pytest.param("2001:db8::2", [b"1.1.1.1"], b"2001:db8::2", id="untrusted-ipv6"),
    ],
)
def test_x_forwarded_for_is_appended_for_trusted_peers_and_replaced_otherwise(
    peer: str, incoming: list[bytes], expected: bytes
) -> None:
    result = prepare([*BASE, *((b"x-forwarded-for", chain) for chain in incoming)], peer=peer)
    assert header(result.headers, b"x-forwarded-for") == expected


def test_peer_that_is_not_an_ip_is_untrusted() -> None:
    result = prepare([*BASE, (b"x-forwarded-for", b"1.2.3.4")], peer="/run/dispatcher.sock")
    assert b"1.2.3.4" not in header(result.headers, b"x-forwarded-for")


def test_unknown_peer_does_not_pass_a_forged_chain() -> None:
    # No peer address (a unix socket, say): there is nothing true to say, so no header at all.
    result = prepare([*BASE, (b"x-forwarded-for", b"1.2.3.4")], peer=None)
    assert values(result.headers, b"x-forwarded-for") == []


@pytest.mark.parametrize(
    ("peer", "proto", "fhost", "expected_proto", "expected_host"),
    [
        pytest.param(UNTRUSTED_PEER, None, None, b"https", b"shop.example.com", id="untrusted"),
        pytest.param(
            UNTRUSTED_PEER,
            b"http",
            b"evil.test",
            b"https",
            b"shop.example.com",
            id="untrusted-lies",
        ),
        pytest.param(TRUSTED_PEER, None, None, b"https", b"shop.example.com", id="trusted-silent"),
        pytest.param(
            TRUSTED_PEER, b"http", b"front.example", b"http", b"front.example", id="trusted-told"
        ),
    ],
)
def test_x_forwarded_proto_and_host_are_believed_only_from_trusted_peers(
    peer: str,
    proto: bytes | None,
    fhost: bytes | None,
    expected_proto: bytes,
    expected_host: bytes,
) -> None:
    incoming = list(BASE)
    if proto is not None:
        incoming.append((b"x-forwarded-proto", proto))
    if fhost is not None:
        incoming.append((b"x-forwarded-host", fhost))
    result = prepare(incoming, peer=peer, scheme="https")
    assert header(result.headers, b"x-forwarded-proto") == expected_proto
    assert header(result.headers, b"x-forwarded-host") == expected_host


def test_x_forwarded_proto_is_the_scheme_the_client_used() -> None:
    result = prepare(BASE, scheme="http")
    assert header(result.headers, b"x-forwarded-proto") == b"http"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param("/dispatch/shop", [b"/dispatch/shop"], id="path-route"),
        pytest.param("/api/dispatch", [b"/api/dispatch"], id="query-route"),
        pytest.param("", [], id="host-route-has-none"),
    ],
)
@pytest.mark.parametrize("peer", [UNTRUSTED_PEER, TRUSTED_PEER])
def test_x_forwarded_prefix_is_sent_only_for_prefixed_routes(
    prefix: str, expected: list[bytes], peer: str
) -> None:
    result = prepare([*BASE, (b"x-forwarded-prefix", b"/forged")], prefix=prefix, peer=peer)
    assert values(result.headers, b"x-forwarded-prefix") == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        pytest.param(UNTRUSTED_PEER, [], id="untrusted-dropped"),
        pytest.param(TRUSTED_PEER, [b"for=1.2.3.4;proto=https"], id="trusted-kept"),
    ],
)
def test_forwarded_header_is_kept_only_from_trusted_peers(peer: str, expected: list[bytes]) -> None:
    result = prepare([*BASE, (b"forwarded", b"for=1.2.3.4;proto=https")], peer=peer)
    assert values(result.headers, b"forwarded") == expected


def test_upstream_host_replaces_the_client_host() -> None:
    result = prepare([(b"host", b"shop.example.com")])
    assert values(result.headers, b"host") == [b"10.0.0.9:8080"]


def test_a_second_host_header_is_invalid_host() -> None:
    # RFC 9112 section 3.2: routing would take one, the tenant might read the other.
    with pytest.raises(InvalidHost):
        prepare([(b"host", b"shop.example.com"), (b"host", b"evil.test")])


# --- X-Request-ID ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(b"abc", id="letters"),
        pytest.param(b"A", id="one-char"),
        pytest.param(b"req-1.2_3", id="all-allowed-punctuation"),
        pytest.param(b"0123456789abcdef" * 8, id="128-chars"),
    ],
)
def test_valid_incoming_request_id_is_kept(incoming: bytes) -> None:
    result = prepare([*BASE, (b"x-request-id", incoming)])
    assert result.request_id == incoming.decode()
    assert values(result.headers, b"x-request-id") == [incoming]


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(None, id="absent"),
        pytest.param(b"", id="empty"),
        pytest.param(b"a" * 129, id="129-chars"),
        pytest.param(b"has space", id="space"),
        pytest.param(b"a/b", id="slash"),
        pytest.param(b"id\n", id="trailing-newline"),
        pytest.param(b"id\r\nx-evil: 1", id="header-injection"),
        pytest.param(b"caf\xc3\xa9", id="non-ascii"),
        pytest.param(b"<script>", id="markup"),
    ],
)
def test_invalid_or_missing_request_id_is_replaced_by_a_generated_one(
    incoming: bytes | None,
) -> None:
    headers = list(BASE) if incoming is None else [*BASE, (b"x-request-id", incoming)]
    result = prepare(headers)
    (sent,) = values(result.headers, b"x-request-id")
    assert sent != incoming
    assert REQUEST_ID.fullmatch(sent)
    assert result.request_id == sent.decode()


@given(st.binary(max_size=140) | st.from_regex(rb"[A-Za-z0-9._-]{1,130}", fullmatch=True))
@example(b"x" * 128)
@example(b"x" * 129)
def test_request_id_is_kept_exactly_when_valid(incoming: bytes) -> None:
    picked = RequestIds().pick(incoming)
    if REQUEST_ID.fullmatch(incoming):
        assert picked == incoming.decode()
    else:
        assert picked.encode() != incoming
        assert REQUEST_ID.fullmatch(picked.encode())


def test_generated_request_ids_are_unique() -> None:
    first, second = RequestIds(), RequestIds()
    ids = {first.new() for _ in range(1000)} | {second.new() for _ in range(1000)}
    assert len(ids) == 2000
    assert all(REQUEST_ID.fullmatch(rid.encode()) for rid in ids)


# --- Via and loops --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        pytest.param([], b"1.1 dispatcher", id="first-hop"),
        pytest.param([b"1.0 fred"], b"1.0 fred, 1.1 dispatcher", id="appended"),
        pytest.param(
            [b"1.0 fred", b"1.1 p.example.net"],
            b"1.0 fred, 1.1 p.example.net, 1.1 dispatcher",
            id="two-headers-joined",
        ),
        pytest.param(
            [b"1.1 dispatcher, 1.1 dispatcher"],
            b"1.1 dispatcher, 1.1 dispatcher, 1.1 dispatcher",
            id="below-max-hops",
        ),
    ],
)
def test_via_is_appended(incoming: list[bytes], expected: bytes) -> None:
    result = prepare([*BASE, *((b"via", value) for value in incoming)])
    assert values(result.headers, b"via") == [expected]


@pytest.mark.parametrize(
    ("incoming", "max_hops"),
    [
        pytest.param([b"1.1 dispatcher, 1.1 dispatcher, 1.1 dispatcher"], 3, id="one-header"),
        pytest.param(
            [b"1.1 dispatcher", b"1.0 other, 1.1 dispatcher", b"1.1 dispatcher"],
            3,
            id="across-headers",
        ),
        pytest.param([b"1.1 dispatcher"], 1, id="max-hops-1"),
        pytest.param([b"1.1 dispatcher,1.1 dispatcher , 1.1 dispatcher"], 3, id="odd-spacing"),
        pytest.param([b"1.1 dispatcher"] * 4, 3, id="over-max-hops"),
    ],
)
def test_request_carrying_our_via_token_max_hops_times_is_a_loop(
    incoming: list[bytes], max_hops: int
) -> None:
    with pytest.raises(LoopDetected) as caught:
        prepare([*BASE, *((b"via", value) for value in incoming)], max_hops=max_hops)
    assert caught.value.status == 508
    assert caught.value.code == "loop_detected"


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param([b"1.1 dispatcher, 1.1 dispatcher"], id="one-below-max"),
        pytest.param([b"1.1 dispatcher-2"] * 3, id="other-instance-name"),
        pytest.param([b"1.1 other"] * 5, id="other-proxy"),
        pytest.param([b"1.0 dispatcher"] * 3, id="other-protocol-version"),
    ],
)
def test_via_tokens_of_others_or_below_max_hops_are_not_a_loop(incoming: list[bytes]) -> None:
    result = prepare([*BASE, *((b"via", value) for value in incoming)], max_hops=3)
    assert header(result.headers, b"via").endswith(b"1.1 dispatcher")


def test_via_uses_the_configured_instance_name() -> None:
    result = prepare([*BASE, (b"via", b"1.1 edge-a")], via_name=b"edge-b")
    assert header(result.headers, b"via") == b"1.1 edge-a, 1.1 edge-b"
    with pytest.raises(LoopDetected):
        prepare([*BASE, (b"via", b"1.1 edge-b")], via_name=b"edge-b", max_hops=1)


# --- size limit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param([*BASE, (b"cookie", b"x" * 2048)], id="one-big-header"),
        pytest.param([*BASE, *((b"x-h%d" % i, b"v" * 30) for i in range(60))], id="many-small"),
        pytest.param([*BASE, (b"connection", b"x" * 2048)], id="hop-by-hop-counts-too"),
        pytest.param([*BASE, (b"x-dispatch-junk", b"x" * 2048)], id="stripped-headers-count-too"),
    ],
)
def test_request_headers_over_max_header_bytes_are_431(incoming: Headers) -> None:
    with pytest.raises(HeadersTooLarge) as caught:
        prepare(incoming, max_header_bytes=2048)
    assert caught.value.status == 431
    assert caught.value.code == "headers_too_large"


def test_request_headers_under_max_header_bytes_pass() -> None:
    incoming = [*BASE, (b"cookie", b"x" * 1500)]
    result = prepare(incoming, max_header_bytes=2048)
    assert header(result.headers, b"cookie") == b"x" * 1500


# --- framing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        pytest.param([b"42"], 42, id="one"),
        pytest.param([b"0"], 0, id="zero"),
        pytest.param([b"42", b"42"], 42, id="identical-duplicates"),
        pytest.param([b"42, 42"], 42, id="identical-list"),
        pytest.param([b" 42 "], 42, id="whitespace"),
    ],
)
def test_content_length_is_read_and_kept(lengths: list[bytes], expected: int) -> None:
    result = prepare([*BASE, *((b"content-length", value) for value in lengths)])
    assert result.content_length == expected
    assert result.chunked is False
    assert values(result.headers, b"content-length")
    assert b"transfer-encoding" not in names(result.headers)


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param([b"42", b"43"], id="conflicting-headers"),
        pytest.param([b"42, 43"], id="conflicting-list"),
        pytest.param([b"abc"], id="not-a-number"),
        pytest.param([b"-1"], id="negative"),
        pytest.param([b"+5"], id="signed"),
        pytest.param([b""], id="empty"),
        pytest.param([b"1e3"], id="exponent"),
        pytest.param([b"9" * 40], id="absurdly-long"),
    ],
)
def test_conflicting_or_malformed_content_length_is_invalid_request(lengths: list[bytes]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        prepare([*BASE, *((b"content-length", value) for value in lengths)])
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param(b"chunked", id="chunked"),
        pytest.param(b"Chunked", id="mixed-case"),
        pytest.param(b" chunked ", id="padded"),
    ],
)
def test_content_length_with_chunked_is_forwarded_chunked_without_content_length(
    encoding: bytes,
) -> None:
    incoming = [*BASE, (b"content-length", b"10"), (b"transfer-encoding", encoding)]
    result = prepare(incoming)
    assert result.chunked is True
    assert result.content_length is None
    assert b"content-length" not in names(result.headers)
    assert values(result.headers, b"transfer-encoding") == [b"chunked"]


def test_chunked_body_is_forwarded_chunked() -> None:
    result = prepare([*BASE, (b"transfer-encoding", b"chunked")])
    assert result.chunked is True
    assert result.content_length is None
    assert values(result.headers, b"transfer-encoding") == [b"chunked"]


def test_body_without_framing_headers_has_no_length_and_is_not_chunked() -> None:
    result = prepare(BASE)
    assert result.content_length is None
    assert result.chunked is False
    assert b"content-length" not in names(result.headers)
    assert b"transfer-encoding" not in names(result.headers)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"host",
                    b"connection",
                    b"via",
                    b"x-request-id",
                    b"x-forwarded-for",
                    b"x-dispatch-worker",
                    b"content-length",
                    b"transfer-encoding",
                    b"cookie",
                    b"upgrade",
                ]
            )
            | st.from_regex(rb"[a-z][a-z0-9-]{0,15}", fullmatch=True),
            st.binary(max_size=40),
        ),
        max_size=12,
    ),
    st.sampled_from([UNTRUSTED_PEER, TRUSTED_PEER, None]),
)
def test_prepared_headers_always_carry_exactly_one_of_each_header_we_own(
    incoming: Headers, peer: str | None
) -> None:
    try:
        result = prepare(incoming, peer=peer, prefix="/dispatch/shop")
    except (InvalidRequest, InvalidHost, LoopDetected, HeadersTooLarge):
        return
    out = names(result.headers)
    for name in (
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"via",
        b"x-request-id",
        b"x-dispatch-worker",
        b"x-dispatch-route",
    ):
        expected = 0 if name == b"x-forwarded-for" and peer is None else 1
        assert out.count(name) == expected, name
    assert not set(out) & (HOP_BY_HOP - {b"transfer-encoding"})
    assert not (b"content-length" in out and b"transfer-encoding" in out)


# --- TrustPolicy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        pytest.param("10.0.0.1", True, id="in-cidr"),
        pytest.param("10.255.255.255", True, id="cidr-last-address"),
        pytest.param("127.0.0.1", True, id="single-address"),
        pytest.param("::1", True, id="ipv6-single"),
        pytest.param("fd00::1234", True, id="ipv6-cidr"),
        pytest.param("9.255.255.255", False, id="below-cidr"),
        pytest.param("192.168.0.1", False, id="other-private"),
        pytest.param("2001:db8::1", False, id="other-ipv6"),
        pytest.param(None, False, id="no-peer"),
        pytest.param("", False, id="empty"),
        pytest.param("/tmp/dispatcher.sock", False, id="unix-socket"),
        pytest.param("localhost", False, id="name-not-address"),
    ],
)
def test_trust_policy_trusts_only_peers_inside_its_networks(
    peer: str | None, expected: bool
) -> None:
    trust = TrustPolicy(NETWORKS)
    assert trust.trusts(peer) is expected
    assert trust.trusts(peer) is expected  # the memoised answer is the same


def test_empty_trust_policy_trusts_nobody() -> None:
    policy = TrustPolicy([])
    assert not policy.trusts("127.0.0.1")


# --- response headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"Connection", id="connection"),
        pytest.param(b"Keep-Alive", id="keep-alive"),
        pytest.param(b"Proxy-Connection", id="proxy-connection"),
        pytest.param(b"Transfer-Encoding", id="transfer-encoding"),
        pytest.param(b"TE", id="te"),
        pytest.param(b"Trailer", id="trailer"),
        pytest.param(b"Upgrade", id="upgrade"),
        pytest.param(b"Proxy-Authenticate", id="proxy-authenticate"),
        pytest.param(b"proxy-authorization", id="proxy-authorization-lowercase"),
    ],
)
def test_response_hop_by_hop_headers_are_removed(name: bytes) -> None:
    out = filter_response_headers([(name, b"x"), (b"Content-Type", b"text/plain")], b"rid")
    assert name.lower() not in names(out)
    assert header(out, b"content-type") == b"text/plain"


def test_response_headers_named_by_connection_are_removed() -> None:
    upstream = [
        (b"Connection", b"X-Internal, close"),
        (b"X-Internal", b"secret"),
        (b"x-internal", b"secret2"),
        (b"X-Public", b"ok"),
    ]
    out = filter_response_headers(upstream, b"rid")
    assert b"x-internal" not in names(out)
    assert header(out, b"x-public") == b"ok"


def test_response_connection_cannot_remove_content_length() -> None:
    out = filter_response_headers(
        [(b"Connection", b"content-length"), (b"Content-Length", b"12")], b"rid"
    )
    assert header(out, b"content-length") == b"12"


@pytest.mark.parametrize(
    "upstream_ids",
    [
        pytest.param([], id="upstream-sent-none"),
        pytest.param([(b"X-Request-ID", b"theirs")], id="upstream-sent-one"),
        pytest.param([(b"x-request-id", b"a"), (b"X-Request-Id", b"b")], id="upstream-sent-two"),
    ],
)
def test_response_carries_exactly_one_request_id_ours(upstream_ids: Headers) -> None:
    out = filter_response_headers([(b"Content-Type", b"text/plain"), *upstream_ids], b"ours-1")
    assert values(out, b"x-request-id") == [b"ours-1"]


def test_response_end_to_end_headers_pass_as_received() -> None:
    upstream = [
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"Content-Encoding", b"gzip"),
        (b"Content-Length", b"123"),
        (b"Set-Cookie", b"b=2; HttpOnly"),
        (b"Cache-Control", b"no-store"),
    ]
    out = filter_response_headers(upstream, b"rid")
    assert [(k.lower(), v) for k, v in upstream] == [(k, v) for k, v in out if k != b"x-request-id"]


@pytest.mark.parametrize(
    ("location", "prefix", "expected"),
    [
        pytest.param(b"/login", b"/dispatch/shop", b"/dispatch/shop/login", id="absolute-path"),
        pytest.param(b"/", b"/dispatch/shop", b"/dispatch/shop/", id="root"),
        pytest.param(b"/a?b=1#c", b"/api/dispatch/x", b"/api/dispatch/x/a?b=1#c", id="with-query"),
        pytest.param(b"//evil.test/x", b"/dispatch/shop", b"//evil.test/x", id="scheme-relative"),
        pytest.param(b"http://a.test/x", b"/dispatch/shop", b"http://a.test/x", id="absolute-url"),
        pytest.param(b"https://a.test/", b"/dispatch/shop", b"https://a.test/", id="https-url"),
        pytest.param(b"next/page", b"/dispatch/shop", b"next/page", id="relative-path"),
        pytest.param(b"?page=2", b"/dispatch/shop", b"?page=2", id="query-only"),
        pytest.param(b"", b"/dispatch/shop", b"", id="empty"),
        pytest.param(b"/login", b"", b"/login", id="no-prefix-host-route"),
    ],
)
def test_location_is_prefixed_only_when_it_is_an_absolute_path(
    location: bytes, prefix: bytes, expected: bytes
) -> None:
    out = filter_response_headers([(b"Location", location)], b"rid", prefix)
    assert header(out, b"location") == expected


# --- Transfer-Encoding other than exactly "chunked" -------------------------------------------


@pytest.mark.parametrize(
    "encodings",
    [
        pytest.param([b"gzip, chunked"], id="coding-list"),
        pytest.param([b"chunked;q=1"], id="parameter"),
        pytest.param([b"identity"], id="identity"),
        pytest.param([b"gzip"], id="gzip-alone"),
        pytest.param([b"chunked, chunked"], id="chunked-twice-in-one"),
        pytest.param([b"chunked", b"chunked"], id="two-headers"),
        pytest.param([b"xchunked"], id="suffix-match"),
        pytest.param([b""], id="empty"),
    ],
)
def test_transfer_encoding_other_than_exactly_chunked_is_invalid_request(
    encodings: list[bytes],
) -> None:
    with pytest.raises(InvalidRequest):
        prepare([*BASE, *((b"transfer-encoding", value) for value in encodings)])


# --- what clients claim about earlier hops, beyond X-Forwarded-* ------------------------------


@pytest.mark.parametrize("name", sorted(PROXY_INFO))
def test_proxy_information_from_an_untrusted_peer_is_dropped(name: bytes) -> None:
    result = prepare([*BASE, (name, b"10.0.0.1")], peer=UNTRUSTED_PEER)
    assert name not in names(result.headers)


@pytest.mark.parametrize("name", sorted(PROXY_INFO))
def test_proxy_information_from_a_trusted_peer_is_passed_on(name: bytes) -> None:
    result = prepare([*BASE, (name, b"10.0.0.1")], peer=TRUSTED_PEER)
    assert values(result.headers, name) == [b"10.0.0.1"]


# --- Set-Cookie kept to its tenant ------------------------------------------------------------

BASES = (b"example.com", b"apps.example.net")


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        pytest.param(b"a=1; Domain=example.com", b"a=1", id="base-domain"),
        pytest.param(b"a=1; Domain=.example.com; Secure", b"a=1; Secure", id="leading-dot"),
        pytest.param(b"a=1; domain=EXAMPLE.COM", b"a=1", id="case"),
        pytest.param(b"a=1; Domain = example.com ", b"a=1", id="blanks"),
        pytest.param(b"a=1; Domain=com", b"a=1", id="parent-of-a-base"),
        pytest.param(b"a=1; Domain=example.net", b"a=1", id="parent-of-a-nested-base"),
        pytest.param(b"a=1; Domain=", b"a=1", id="empty"),
        pytest.param(b"a=1; Domain=x; Domain=example.com", b"a=1; Domain=x", id="two-domains"),
        pytest.param(
            b"a=1; Domain=shop.example.com", b"a=1; Domain=shop.example.com", id="own-subdomain"
        ),
        pytest.param(b"a=1; Domain=other.org", b"a=1; Domain=other.org", id="unrelated"),
        pytest.param(b"a=1; Path=/; HttpOnly", b"a=1; Path=/; HttpOnly", id="host-route-path"),
    ],
)
def test_a_cookie_domain_covering_other_tenants_is_dropped(cookie: bytes, expected: bytes) -> None:
    assert scope_cookie(cookie, b"", BASES) == expected


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        pytest.param(b"a=1; Path=/", b"a=1; Path=/dispatch/shop", id="root"),
        pytest.param(b"a=1; Path=/cart", b"a=1; Path=/dispatch/shop/cart", id="below"),
        pytest.param(b"a=1; path=/cart; Secure", b"a=1; Path=/dispatch/shop/cart; Secure", id="lc"),
        pytest.param(b"a=1", b"a=1; Path=/dispatch/shop", id="no-path"),
        pytest.param(b"a=1; Path=cart", b"a=1; Path=/dispatch/shop", id="not-absolute"),
        pytest.param(b"a=1; Path=", b"a=1; Path=/dispatch/shop", id="empty"),
        pytest.param(
            b"a=1; Domain=example.com; Path=/x",
            b"a=1; Path=/dispatch/shop/x",
            id="domain-and-path",
        ),
    ],
)
def test_a_cookie_path_goes_under_the_route_prefix(cookie: bytes, expected: bytes) -> None:
    assert scope_cookie(cookie, b"/dispatch/shop", BASES) == expected


def test_set_cookie_headers_are_scoped_in_the_response() -> None:
    upstream = [(b"Set-Cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Domain=example.com")]
    out = filter_response_headers(upstream, b"rid", b"/dispatch/shop", b"/dispatch/shop", BASES)
    assert values(out, b"set-cookie") == [b"a=1; Path=/dispatch/shop", b"b=2; Path=/dispatch/shop"]
