"""Host normalisation and worker-name validation (``dispatcher.hosts``).

The contract (README, "How a request is routed"): a host is lowercased, loses
its port and one trailing dot, and is converted to IDNA ASCII; anything else is ``invalid_host``.
Worker names are RFC 1123 labels (1-63 of ``[a-z0-9-]``, no hyphen at either end), compared
lowercased, minus the reserved names.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dispatcher.errors import InvalidHost, InvalidWorkerName, ReservedWorkerName, RoutingError
from dispatcher.hosts import (
    DEFAULT_RESERVED_NAMES,
    MAX_HOST_LENGTH,
    is_ip_literal,
    is_valid_worker_name,
    normalize_domain,
    normalize_host,
    normalize_wire_host,
    validate_worker_name,
)

RESERVED = frozenset(DEFAULT_RESERVED_NAMES)

# The oracle: an RFC 1123 label, case-insensitive, ASCII only (``re`` ranges are code points).
RFC1123_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=5).map(".".join)


def _random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def host_headers(draw: st.DrawFn) -> tuple[str, str]:
    """A Host header built from a valid host name, and the name it must normalise to."""
    host = draw(hostnames)
    value = _random_case(draw, host)
    if draw(st.booleans()):
        value += "."
    port = draw(st.none() | st.integers(min_value=0, max_value=65535))
    if port is not None:
        value += f":{port}"
    return value, host


# --- normalize_host -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("example.com", "example.com", id="plain-name-unchanged"),
        pytest.param("Shop.EXAMPLE.Com", "shop.example.com", id="lowercased"),
        pytest.param("shop.example.com:8080", "shop.example.com", id="port-stripped"),
        pytest.param("shop.example.com:", "shop.example.com", id="empty-port-stripped"),
        pytest.param("shop.example.com.", "shop.example.com", id="trailing-dot-stripped"),
        pytest.param("shop.example.com.:443", "shop.example.com", id="trailing-dot-and-port"),
        pytest.param("  shop.example.com ", "shop.example.com", id="surrounding-whitespace"),
        pytest.param("localhost:8080", "localhost", id="localhost-with-port"),
        pytest.param("127.0.0.1:8080", "127.0.0.1", id="ipv4-port-stripped"),
        pytest.param("[::1]", "[::1]", id="ipv6-keeps-brackets"),
        pytest.param("[::1]:8080", "[::1]", id="ipv6-port-stripped"),
        pytest.param("[2001:DB8::1]", "[2001:db8::1]", id="ipv6-lowercased"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="idn-to-ascii"),
        pytest.param("BÜCHER.example:80", "xn--bcher-kva.example", id="idn-uppercase-port"),
        pytest.param("xn--bcher-kva.example", "xn--bcher-kva.example", id="punycode-unchanged"),
        pytest.param("例え.テスト", "xn--r8jz45g.xn--zckzah", id="idn-japanese"),
        pytest.param("_acme-challenge.example.com", "_acme-challenge.example.com", id="service"),
        pytest.param("a" * 63 + ".example", "a" * 63 + ".example", id="63-char-label"),
        pytest.param("a--b.example", "a--b.example", id="inner-double-hyphen"),
        pytest.param("123.example", "123.example", id="numeric-label"),
    ],
)
def test_normalize_host_lowercases_strips_port_and_dot_and_encodes_idna(
    raw: str, expected: str
) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(".", id="only-dot"),
        pytest.param(":8080", id="only-port"),
        pytest.param("example.com:http", id="port-not-numeric"),
        pytest.param("example.com:65536", id="port-out-of-range"),
        pytest.param("example.com:123456", id="port-too-long"),
        pytest.param("example.com:-1", id="port-negative"),
        pytest.param("example.com:80:80", id="two-ports"),
        pytest.param("[::1", id="ipv6-unclosed"),
        pytest.param("[::1]x", id="ipv6-junk-after"),
        pytest.param("[::1]:port", id="ipv6-bad-port"),
        pytest.param("[::1]:65536", id="ipv6-port-out-of-range"),
        pytest.param("[example.com]", id="brackets-around-name"),
        pytest.param("::1", id="ipv6-without-brackets"),
        pytest.param("a..example", id="empty-label"),
        pytest.param("example.com..", id="two-trailing-dots"),
        pytest.param(".example.com", id="leading-dot"),
        pytest.param("-shop.example.com", id="label-leading-hyphen"),
        pytest.param("shop-.example.com", id="label-trailing-hyphen"),
        pytest.param("sh op.example.com", id="space-inside"),
        pytest.param("sh_op.example.com", id="underscore-inside-label"),
        pytest.param("shop.example.com/path", id="path-in-host"),
        pytest.param("user@shop.example.com", id="userinfo-in-host"),
        pytest.param("shop%2Eexample.com", id="percent-encoded"),
        pytest.param("shop\x00.example.com", id="nul-byte"),
        pytest.param("a" * 64 + ".example", id="label-64-chars"),
        pytest.param(".".join(["a" * 63] * 4), id="longer-than-253"),
        pytest.param("☃.example", id="idna-disallowed-symbol"),
    ],
)
def test_normalize_host_rejects_malformed_hosts_with_invalid_host(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(raw)


def test_normalize_host_accepts_exactly_253_characters() -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(host) == MAX_HOST_LENGTH
    assert normalize_host(host + ".:80") == host
    with pytest.raises(InvalidHost):
        normalize_host("e" + host)


def test_invalid_host_is_a_routing_error_with_status_400() -> None:
    with pytest.raises(RoutingError) as caught:
        normalize_host("bad host")
    assert caught.value.status == 400
    assert caught.value.code == "invalid_host"


@given(st.text())
@example("İ.example")  # lowercases to two code points
@example("K.example")  # KELVIN SIGN lowercases to ASCII "k"
@example("example.com:٣")  # Arabic-Indic digit
@example("[::1%eth0]")
def test_normalize_host_raises_only_invalid_host_and_is_idempotent(raw: str) -> None:
    try:
        host = normalize_host(raw)
    except InvalidHost:
        return
    assert normalize_host(host) == host
    assert host.isascii()
    assert host == host.lower()
    assert not host.endswith(".")
    if not host.startswith("["):
        assert ":" not in host
        assert len(host) <= MAX_HOST_LENGTH


@given(host_headers())
def test_normalize_host_of_any_valid_name_is_the_lowercase_name(case: tuple[str, str]) -> None:
    raw, expected = case
    assert normalize_host(raw) == expected


@given(st.ip_addresses(v=4), st.none() | st.integers(min_value=1, max_value=65535))
def test_normalize_host_keeps_ipv4_literals(
    address: ipaddress.IPv4Address, port: int | None
) -> None:
    raw = str(address) if port is None else f"{address}:{port}"
    assert normalize_host(raw) == str(address)


@given(st.ip_addresses(v=6), st.none() | st.integers(min_value=1, max_value=65535))
def test_normalize_host_keeps_bracketed_ipv6_literals(
    address: ipaddress.IPv6Address, port: int | None
) -> None:
    raw = f"[{address.exploded.upper()}]" + ("" if port is None else f":{port}")
    host = normalize_host(raw)
    assert host.startswith("[")
    assert host.endswith("]")
    assert ipaddress.ip_address(host[1:-1]) == address


# --- normalize_domain -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("Example.COM", "example.com", id="lowercased"),
        pytest.param("example.com.", "example.com", id="trailing-dot"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="idn"),
        pytest.param("localhost", "localhost", id="single-label"),
    ],
)
def test_normalize_domain_lowercases_strips_dot_and_encodes_idna(name: str, expected: str) -> None:
    assert normalize_domain(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="only-dot"),
        pytest.param("example.com:8080", id="port-is-not-part-of-a-domain"),
        pytest.param("exa mple.com", id="space"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("[::1]", id="ip-literal"),
        pytest.param("x" * 254, id="too-long"),
    ],
)
def test_normalize_domain_rejects_non_domains(name: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_domain(name)


# --- is_ip_literal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("127.0.0.1", True, id="ipv4"),
        pytest.param("10.1.2.3", True, id="private-ipv4"),
        pytest.param("[::1]", True, id="bracketed-ipv6"),
        pytest.param("::1", True, id="bare-ipv6"),
        pytest.param("[2001:db8::1]", True, id="bracketed-ipv6-global"),
        pytest.param("localhost", False, id="name"),
        pytest.param("1.2.3", False, id="three-octets"),
        pytest.param("256.1.1.1", False, id="octet-out-of-range"),
        pytest.param("1.2.3.4.example", False, id="ip-like-name"),
        pytest.param("[::1", False, id="unclosed-bracket"),
        pytest.param("[]", False, id="empty-brackets"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_ip_literal_recognises_ipv4_and_ipv6(host: str, expected: bool) -> None:
    assert is_ip_literal(host) is expected


@given(st.ip_addresses())
def test_is_ip_literal_accepts_every_address_in_host_form(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    host = str(address) if address.version == 4 else f"[{address}]"
    assert is_ip_literal(host)


@given(hostnames.filter(lambda h: not re.fullmatch(r"[0-9.]+", h)))
def test_is_ip_literal_rejects_host_names(host: str) -> None:
    assert not is_ip_literal(host)


# --- validate_worker_name -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("shop", "shop", id="lowercase"),
        pytest.param("Shop", "shop", id="compared-lowercased"),
        pytest.param("SHOP-2", "shop-2", id="uppercase-with-digit"),
        pytest.param("a", "a", id="one-char"),
        pytest.param("7", "7", id="one-digit"),
        pytest.param("123", "123", id="all-digits"),
        pytest.param("1shop", "1shop", id="leading-digit"),
        pytest.param("my-shop", "my-shop", id="inner-hyphen"),
        pytest.param("a--b", "a--b", id="double-hyphen"),
        pytest.param("a" * 63, "a" * 63, id="63-chars"),
    ],
)
def test_validate_worker_name_accepts_rfc1123_labels(name: str, expected: str) -> None:
    assert validate_worker_name(name, RESERVED) == expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("-", id="only-hyphen"),
        pytest.param("-shop", id="leading-hyphen"),
        pytest.param("shop-", id="trailing-hyphen"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("my_shop", id="underscore"),
        pytest.param("my.shop", id="dot"),
        pytest.param("my shop", id="space"),
        pytest.param(" shop", id="leading-space"),
        pytest.param("shop\n", id="trailing-newline"),
        pytest.param("shop/", id="slash"),
        pytest.param("%73hop", id="percent-encoded"),
        pytest.param("bücher", id="non-ascii-letter"),
        pytest.param("xn--bcher-kva\u200d", id="zero-width-joiner"),
        pytest.param("shop\u0131", id="dotless-i"),
        pytest.param("\u212a", id="kelvin-sign-is-not-k"),
        pytest.param("\u212aiosk", id="kelvin-sign-inside-name"),
        pytest.param("\uff11\uff12\uff13", id="fullwidth-digits"),
    ],
)
def test_validate_worker_name_rejects_anything_outside_rfc1123(name: str) -> None:
    with pytest.raises(InvalidWorkerName):
        validate_worker_name(name, RESERVED)


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in DEFAULT_RESERVED_NAMES])
def test_validate_worker_name_rejects_every_default_reserved_name(name: str) -> None:
    with pytest.raises(ReservedWorkerName):
        validate_worker_name(name, RESERVED)


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        pytest.param("WWW", RESERVED, id="reserved-compared-lowercased"),
        pytest.param("Admin", RESERVED, id="reserved-mixed-case"),
        pytest.param("internal", frozenset({"internal"}), id="configured-reserved-name"),
        pytest.param("internal", ("internal", "ops"), id="reserved-as-tuple"),
    ],
)
def test_validate_worker_name_rejects_reserved_names(
    name: str, reserved: frozenset[str] | tuple[str, ...]
) -> None:
    with pytest.raises(ReservedWorkerName):
        validate_worker_name(name, reserved)


def test_validate_worker_name_uses_only_the_given_reserved_list() -> None:
    assert validate_worker_name("www", frozenset({"internal"})) == "www"
    assert validate_worker_name("admin", ()) == "admin"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(InvalidWorkerName, "invalid_worker_name", id="invalid"),
        pytest.param(ReservedWorkerName, "reserved_worker_name", id="reserved"),
    ],
)
def test_worker_name_errors_are_400_routing_errors(error: type[RoutingError], code: str) -> None:
    assert issubclass(error, RoutingError)
    assert error.status == 400
    assert error.code == code


@given(st.text(max_size=70) | st.from_regex(RFC1123_LABEL, fullmatch=True))
@example("\u212a")  # KELVIN SIGN: str.lower() turns it into ASCII "k"
@example("\u017fhop")  # LATIN SMALL LETTER LONG S
@example("İ")
def test_validate_worker_name_accepts_exactly_rfc1123_labels_minus_reserved(name: str) -> None:
    is_label = RFC1123_LABEL.fullmatch(name) is not None
    if is_label and name.lower() not in RESERVED:
        assert validate_worker_name(name, RESERVED) == name.lower()
    elif is_label:
        with pytest.raises(ReservedWorkerName):
            validate_worker_name(name, RESERVED)
    else:
        with pytest.raises(InvalidWorkerName):
            validate_worker_name(name, RESERVED)


@given(st.from_regex(RFC1123_LABEL, fullmatch=True))
def test_validate_worker_name_is_idempotent_on_its_output(name: str) -> None:
    try:
        canonical = validate_worker_name(name, RESERVED)
    except ReservedWorkerName:
        return
    assert validate_worker_name(canonical, RESERVED) == canonical
    assert is_valid_worker_name(canonical)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("shop", True, id="valid"),
        pytest.param("www", True, id="reserved-is-still-syntactically-valid"),
        pytest.param("Shop", False, id="expects-lowercased-input"),
        pytest.param("", False, id="empty"),
        pytest.param("-shop", False, id="leading-hyphen"),
        pytest.param("a" * 64, False, id="too-long"),
    ],
)
def test_is_valid_worker_name_checks_syntax_only(name: str, expected: bool) -> None:
    assert is_valid_worker_name(name) is expected


# --- a Host as it arrived on the wire (issue 13) ----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("\xaalpha.example.com", id="feminine-ordinal-folds-to-a"),
        pytest.param("alph\xe1.example.com", id="latin-1-letter"),
        pytest.param("alpha.example.com\x85", id="next-line"),
        pytest.param("b\xc3\xbccher.example.com", id="utf-8-bytes-as-latin-1"),
    ],
)
def test_a_wire_host_with_a_non_ascii_byte_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_wire_host(raw)


def test_a_wire_host_in_ascii_is_normalised_as_any_host() -> None:
    assert normalize_wire_host("Shop.Example.COM.:8080") == normalize_host("shop.example.com")
    assert normalize_wire_host("xn--bcher-kva.example.com") == "xn--bcher-kva.example.com"
