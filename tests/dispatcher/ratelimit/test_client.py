"""Whose bucket a request counts in: the trusted X-Forwarded-For chain, walked from the right."""

from __future__ import annotations

import ipaddress

import pytest

from dispatcher.proxy.headers import TrustPolicy
from dispatcher.ratelimit.client import client_key

TRUST = TrustPolicy([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode()) for value in values]


@pytest.mark.parametrize(
    ("headers", "peer", "expected"),
    [
        pytest.param([], "203.0.113.9", "203.0.113.9", id="direct-client"),
        pytest.param(xff("198.51.100.1"), "203.0.113.9", "203.0.113.9", id="untrusted-claims"),
        pytest.param(xff("198.51.100.1"), "10.1.2.3", "198.51.100.1", id="trusted-proxy"),
        pytest.param(
            xff("6.6.6.6, 198.51.100.1"), "10.1.2.3", "198.51.100.1", id="spoofed-left-entry"
        ),
        pytest.param(
            xff("198.51.100.1, 10.9.9.9"), "127.0.0.1", "198.51.100.1", id="two-trusted-hops"
        ),
        pytest.param(xff("6.6.6.6", "198.51.100.1"), "10.1.2.3", "198.51.100.1", id="two-fields"),
        pytest.param(xff("10.2.2.2, 10.3.3.3"), "10.1.2.3", "10.2.2.2", id="all-trusted"),
        pytest.param(xff(" , "), "10.1.2.3", "10.1.2.3", id="empty-entries"),
        pytest.param([], None, "", id="no-peer"),
        pytest.param(
            xff("2001:db8:1:2:3:4:5:6"), "10.1.2.3", "2001:db8:1:2::/64", id="ipv6-per-64"
        ),
        pytest.param([], "2001:db8:1:2::99", "2001:db8:1:2::/64", id="ipv6-peer-per-64"),
        pytest.param([], "::ffff:192.0.2.7", "192.0.2.7", id="ipv4-mapped"),
        pytest.param(xff("x" * 500), "10.1.2.3", "x" * 64, id="long-garbage-is-capped"),
    ],
)
def test_client_key(headers: list[tuple[bytes, bytes]], peer: str | None, expected: str) -> None:
    assert client_key(headers, peer, TRUST) == expected
