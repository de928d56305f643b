"""Where an upstream connection may go: the connect-time half of the upstream network rule.

A worker's upstream host is resolved here, before connecting, and only the addresses that
``UpstreamNetworks`` allows are used: a name registered harmlessly can later resolve into the
metadata service's network (or be made to, by whoever controls its DNS). An address literal
is judged without a lookup. Only new connections pay for this; pooled ones were checked when
they were opened.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from dispatcher.errors import UpstreamConnectFailed
from dispatcher.networks import UpstreamNetworks

__all__ = ["allowed_addresses"]


async def allowed_addresses(
    networks: UpstreamNetworks, host: str, port: int, loop: asyncio.AbstractEventLoop
) -> list[str]:
    """The addresses of ``host`` a connection may go to, in resolver order (never empty).

    Raises ``UpstreamConnectFailed`` when the name does not resolve or every address it
    resolves to is refused (nothing has been sent: the caller may try another target).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamConnectFailed("The worker's upstream host does not resolve") from exc
        candidates = list(dict.fromkeys(str(info[4][0]) for info in infos))
    else:
        candidates = [host]
    allowed = [address for address in candidates if networks.allows_text(address)]
    if not allowed:
        raise UpstreamConnectFailed(
            "The worker's upstream is in a network the dispatcher may not connect to"
        )
    return allowed
