"""Which networks a worker's upstream may be in (``upstream_allowed_networks``,
``upstream_denied_networks``). Pure: no I/O.

Tenants name their upstreams, so an upstream URL is input from a tenant: without a rule, a
worker registered at ``http://169.254.169.254/`` turns the dispatcher into a way to read the
cloud metadata service. An address is allowed when the allow list is empty or contains it, and
the deny list does not. By default the deny list holds the link-local ranges (the metadata
services live there), the other clouds' metadata addresses, "this network" and multicast;
loopback and private ranges stay allowed, since upstreams usually are private.

The rule is applied twice: when a worker is registered (admin API and CLI), to the URL's host
if it is an address, and when a connection is made, to every address a name resolved to (a
name can resolve anywhere, and change after registration).

IPv4 addresses hide in other spellings, and both checks see through them:

- numeric host names the C resolver reads as IPv4 (``2130706433``, ``127.1``, ``0x7f.1``,
  ``0177.0.0.1``): refused at registration, where only the dotted-quad spelling is accepted;
- the unspecified address (``0.0.0.0``, ``::``, ``0``): a connect to it reaches the local host,
  so it is refused whatever the lists say (a deny list naming loopback would miss it);
- IPv6 forms that carry an IPv4 address (``::ffff:a.b.c.d`` mapped, ``::a.b.c.d`` compatible,
  ``64:ff9b::a.b.c.d`` NAT64, ``2002:AABB:CCDD::`` 6to4): judged as the IPv4 address too.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Final

from dispatcher.memo import memo

__all__ = [
    "DEFAULT_DENIED_NETWORKS",
    "IPAddress",
    "UpstreamNetworks",
    "numeric_ipv4",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENIED_NETWORKS: Final = (
    "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata (169.254.169.254)
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "192.0.0.192/32",  # Oracle Cloud metadata (legacy)
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host on Linux
    "::/128",  # the unspecified IPv6 address, likewise
    "224.0.0.0/4",  # multicast
    "ff00::/8",  # IPv6 multicast
    "255.255.255.255/32",  # broadcast
)

# connect() to the unspecified address reaches the local host: never an upstream, whatever the
# lists say (a deny list naming loopback would not name it).
_THIS_HOST: Final = (ipaddress.IPv4Network("0.0.0.0/8"), ipaddress.IPv6Network("::/128"))
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
# What the C resolver would read as an IPv4 address: digits, hex and dots only.
_NUMERIC: Final = re.compile(r"[0-9a-fA-FxX.]+")


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``inet_aton`` (so ``getaddrinfo``) reads in ``host``, if any.

    ``"2130706433"``, ``"127.1"``, ``"0x7f.0.0.1"`` and ``"0177.0.0.1"`` are all 127.0.0.1.
    """
    if not _NUMERIC.fullmatch(host) or not any(char.isdigit() for char in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class UpstreamNetworks:
    """The allow and deny lists, and the decision for one address."""

    def __init__(self, allowed: Iterable[str] = (), denied: Iterable[str] = ()) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in allowed
        )
        self.denied: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in denied
        )
        # Remembered: the same few upstream addresses recur at every new connection.
        self.allows_text = memo(4096)(self._allows_text)

    def allows(self, address: IPAddress) -> bool:
        """Whether an upstream connection to ``address`` may be made."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
            inner = _embedded_ipv4(address)
            if inner is not None and not self.allows(inner):
                return False
        if any(address in network for network in _THIS_HOST):
            return False
        if self.allowed and not any(address in network for network in self.allowed):
            return False
        return not any(address in network for network in self.denied)

    def _allows_text(self, address: str) -> bool:
        """``allows`` for an address as text (``allows_text``, remembered)."""
        return self.allows(ipaddress.ip_address(address))

    def check_host(self, host: str) -> None:
        """Refuse an upstream URL host (registration): raises ``ValueError`` with the reason.

        A name is left to the connect-time check; an address, in any spelling, is judged now.
        """
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            address: IPAddress = ipaddress.ip_address(bare.split("%", 1)[0])
        except ValueError:
            spelled = numeric_ipv4(bare)
            if spelled is None:
                return
            raise ValueError(
                f"{host!r} is the IPv4 address {spelled} spelled another way: "
                "write it as four decimal numbers"
            ) from None
        if not self.allows(address):
            raise ValueError(f"{host!r} is in a network upstreams may not be in")
