"""The verifier's DNS questions, asked with dnspython's asyncio resolver.

Two questions, each answered as a ``Finding`` (``yes``, ``no``, ``nxdomain`` or ``unknown``
with a reason a customer can act on):

- ``txt_matches``: does the TXT record set at the challenge name hold the token?
- ``points_at``: does the domain reach the platform: a CNAME chain through the target or a
  base domain, or A/AAAA records that are all addresses of the target?

Every answer is hostile input. dnspython parses a message of at most 65535 bytes (so a huge
TXT set is bounded by the wire), retries a truncated UDP answer over TCP, and refuses CNAME
chains longer than 16 links (loops included) with ``ChainTooLong``; every exception it or the
socket layer raises becomes ``unknown`` here (the mapping boundary), never a crash, and each
question is bounded by ``timeout`` seconds in total. No caching: each check asks again.

The choice of client is written down in bench/dns_client.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

__all__ = ["DnsProbe", "Finding"]

Verdict = Literal["yes", "no", "nxdomain", "unknown"]

#: The CNAME targets looked at (the resolver itself refuses chains over 16 links).
_MAX_CHAIN = 16


@dataclass(frozen=True, slots=True)
class Finding:
    """The answer to one question: ``verdict`` and, unless ``yes``, why: ``reason`` for
    people, ``cause`` for metrics (``txt_missing``, ``txt_mismatch``, ``nxdomain``,
    ``not_pointed``, ``cname_loop``; for ``unknown``: ``timeout``, ``servfail``, ``truncated``,
    ``error``)."""

    verdict: Verdict
    reason: str = ""
    cause: str = ""


class DnsProbe:
    """Asks the configured DNS servers (``(address, port)`` pairs; none: the system's)."""

    def __init__(self, resolvers: Iterable[tuple[str, int]], *, timeout: float) -> None:
        servers = list(resolvers)
        resolver = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in servers
            ]
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)  # per server attempt; the lifetime bounds all
        resolver.use_search_by_default = False
        resolver.cache = None
        self._resolver = resolver
        self._timeout = timeout

    async def txt_matches(self, name: str, token: str | None) -> Finding:
        """Does a TXT record at ``name`` hold exactly ``token``?"""
        answer = await self._ask(name, "TXT")
        if isinstance(answer, Finding):
            if answer.verdict == "nxdomain":
                return Finding("no", f"No TXT record at {name}", "txt_missing")
            return answer
        wanted = (token or "").encode("ascii")
        values = [b"".join(rdata.strings) for rdata in answer.rrset or ()]
        if not values:
            return Finding("no", f"No TXT record at {name}", "txt_missing")
        if token and wanted in values:
            return Finding("yes")
        return Finding(
            "no", f"The TXT record at {name} does not hold this domain's token", "txt_mismatch"
        )

    async def points_at(self, domain: str, target: str, base_domains: Iterable[str]) -> Finding:
        """Does ``domain`` reach the platform (``target``, or any base domain)?"""
        bases = tuple(base_domains)
        answers = await asyncio.gather(self._ask(domain, "A"), self._ask(domain, "AAAA"))
        chain: list[str] = []
        addresses: set[str] = set()
        for answer in answers:
            if isinstance(answer, Finding):
                if answer.verdict == "nxdomain":
                    return Finding(
                        "nxdomain", f"{domain} does not exist in DNS (NXDOMAIN)", "nxdomain"
                    )
                return answer
            chain = chain or _cname_chain(answer)
            addresses.update(rdata.to_text() for rdata in answer.rrset or ())
        for name in chain:
            if name == target or _under(name, bases):
                return Finding("yes")
        if chain:
            return Finding(
                "no", f"{domain} is a CNAME to {chain[0]}, not to {target}", "not_pointed"
            )
        if not addresses:
            return Finding("no", f"{domain} has no CNAME, A or AAAA record", "not_pointed")
        target_addresses = await self._addresses(target)
        if isinstance(target_addresses, Finding):
            return target_addresses
        if addresses <= target_addresses:
            return Finding("yes")
        stray = ", ".join(sorted(addresses - target_addresses)[:4])
        return Finding(
            "no", f"{domain} resolves to {stray}, not to an address of {target}", "not_pointed"
        )

    async def _addresses(self, name: str) -> set[str] | Finding:
        found: set[str] = set()
        for answer in await asyncio.gather(self._ask(name, "A"), self._ask(name, "AAAA")):
            if isinstance(answer, Finding):
                if answer.verdict == "unknown":
                    return answer
                continue
            found.update(rdata.to_text() for rdata in answer.rrset or ())
        return found

    async def _ask(self, name: str, rdtype: str) -> dns.resolver.Answer | Finding:
        """The answer (possibly empty), or a ``Finding`` for NXDOMAIN and every failure."""
        try:
            qname = dns.name.from_text(name)
            async with asyncio.timeout(self._timeout + 1.0):
                answer = await self._resolver.resolve(
                    qname, rdtype, raise_on_no_answer=False, search=False
                )
        except dns.resolver.NXDOMAIN:
            return Finding("nxdomain", f"{name} does not exist in DNS (NXDOMAIN)", "nxdomain")
        except (dns.exception.Timeout, TimeoutError):
            return Finding(
                "unknown", f"The DNS servers did not answer for {name} in time", "timeout"
            )
        except dns.resolver.NoNameservers as exc:
            # dnspython reports an answer it could not use as that server's failure: a CNAME
            # chain that loops or is too long is the answer, not an outage.
            if any(
                isinstance(error[3], dns.message.ChainTooLong)
                for error in exc.kwargs.get("errors", ())
            ):
                return _loop(name)
            return Finding(
                "unknown", f"No DNS server could answer for {name} (SERVFAIL)", "servfail"
            )
        except dns.message.ChainTooLong:
            return _loop(name)
        except Exception:  # a hostile or broken answer must never stop the verifier
            return Finding("unknown", f"The DNS answer for {name} could not be used", "error")
        if answer.response.flags & dns.flags.TC:
            # Truncated even over TCP (more than 64 KiB): what is missing cannot be judged.
            return Finding("unknown", f"The DNS answer for {name} is truncated", "truncated")
        return answer


def _loop(name: str) -> Finding:
    return Finding("no", f"{name} has a CNAME chain that loops or is too long", "cname_loop")


def _cname_chain(answer: dns.resolver.Answer) -> list[str]:
    """The CNAME targets from the question's name on, in order."""
    chain: list[str] = []
    name = answer.qname
    response = answer.response
    for _ in range(_MAX_CHAIN):
        rrset = next(
            (
                candidate
                for candidate in response.answer
                if candidate.rdtype == dns.rdatatype.CNAME and candidate.name == name
            ),
            None,
        )
        if rrset is None or not len(rrset):
            break
        name = next(iter(rrset)).target
        chain.append(name.to_text(omit_final_dot=True).lower())
    return chain


def _under(name: str, bases: tuple[str, ...]) -> bool:
    return any(name == base or name.endswith("." + base) for base in bases)
