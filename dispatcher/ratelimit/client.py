"""The client address a per-client limit counts: the one the trusted ``X-Forwarded-For`` chain
gives, walked from the right (as uvicorn's ``_TrustedHosts`` and werkzeug's ``ProxyFix`` do).

A peer outside ``trusted_proxies`` is the client, whatever it claims in ``X-Forwarded-For``:
a client cannot pick its own bucket. From a trusted peer, the chain is read right to left
and the first address that is not itself a trusted proxy is the client (all trusted: the
leftmost). IPv6 clients are counted per /64, the smallest block a subscriber usually gets,
so a client cannot step around its limit by walking through its own prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from dispatcher.memo import memo
from dispatcher.proxy.headers import TrustPolicy

__all__ = ["client_key"]

#: Longest client identity kept as a key (an unparsable entry a trusted proxy passed on).
_MAX_KEY: Final = 64


def client_key(headers: Iterable[tuple[bytes, bytes]], peer: str | None, trust: TrustPolicy) -> str:
    """The identity of the client behind ``peer``: an IPv4 address or an IPv6 /64."""
    if not trust.trusts(peer):
        return _bucket(peer or "")
    chain: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            chain.extend(value.decode("latin-1").split(","))
    client = peer or ""
    for entry in reversed(chain):
        entry = _without_port(entry.strip())
        if not entry:
            continue
        client = entry
        if not trust.trusts(entry):
            break
    return _bucket(client)


def _without_port(entry: str) -> str:
    """The address of a chain entry that names a port too (``203.0.113.9:4711``,
    ``[2001:db8::1]:4711``: some load balancers append the client's): else a client got a new
    bucket with every connection's source port."""
    if entry.startswith("["):
        end = entry.find("]")
        return entry[1:end] if end > 0 else entry
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


@memo(4096)
def _bucket(address: str) -> str:
    if ":" not in address:
        return address[:_MAX_KEY]
    try:
        parsed = ipaddress.IPv6Address(address.strip("[]"))
    except ValueError:
        return address[:_MAX_KEY]
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False))
