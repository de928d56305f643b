"""Which async DNS client the verifier uses: dnspython's asyncio resolver vs aiodns (c-ares).

Runs the tests' DNS server (tests/dnsserver.py) on 127.0.0.1 and asks it the verifier's
questions with each client: throughput of TXT lookups (``--concurrency`` at a time), and what
each does with hostile answers (CNAME loop, a TXT set too large even for TCP, a truncated UDP
answer, no answer). ``python -m bench.dns_client``; aiodns is optional (``pip install aiodns``).
The results and the choice are in bench/dns_client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from dispatcher.onboarding.dns import DnsProbe
from tests.dnsserver import DnsServer

ZONE: dict[str, dict[str, Any]] = {
    "_c.ok.test": {"TXT": ["token"]},
    "loop.test": {"CNAME": "loop2.test"},
    "loop2.test": {"CNAME": "loop.test"},
    "_c.huge.test": {"TXT": [f"v{i:05d}-" + "x" * 60 for i in range(3000)]},
    "_c.trunc.test": {"TXT": ["token"]},
}
BEHAVIOUR = {"_c.trunc.test": "truncate", "silent.test": "timeout"}


async def dnspython_rate(port: int, total: int, concurrency: int) -> float:
    probe = DnsProbe([("127.0.0.1", port)], timeout=2.0)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            finding = await probe.txt_matches("_c.ok.test", "token")
            assert finding.verdict == "yes", finding

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.perf_counter() - started)


async def aiodns_rate(port: int, total: int, concurrency: int) -> float:
    import aiodns

    resolver = aiodns.DNSResolver(nameservers=[f"127.0.0.1:{port}"], timeout=2.0, tries=1)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await resolver.query_dns("_c.ok.test", "TXT")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.perf_counter() - started)


async def hostile(port: int) -> list[str]:
    lines = []
    probe = DnsProbe([("127.0.0.1", port)], timeout=1.0)
    cases = {
        "cname loop": probe.points_at("loop.test", "t.example.com", ()),
        "TXT set > 64 KiB": probe.txt_matches("_c.huge.test", "token"),
        "truncated UDP": probe.txt_matches("_c.trunc.test", "token"),
        "no answer": probe.txt_matches("silent.test", "token"),
    }
    for name, question in cases.items():
        started = time.perf_counter()
        finding = await question
        took = time.perf_counter() - started
        lines.append(f"dnspython  {name:18} {finding.verdict:8} {finding.cause:10} {took:.3f} s")
    try:
        import aiodns
    except ImportError:
        return lines
    resolver = aiodns.DNSResolver(nameservers=[f"127.0.0.1:{port}"], timeout=1.0, tries=1)
    for name, (qname, qtype) in {
        "cname loop": ("loop.test", "A"),
        "TXT set > 64 KiB": ("_c.huge.test", "TXT"),
        "truncated UDP": ("_c.trunc.test", "TXT"),
        "no answer": ("silent.test", "TXT"),
    }.items():
        started = time.perf_counter()
        try:
            result: Any = await resolver.query_dns(qname, qtype)
            outcome = f"answer ({len(getattr(result, 'answer', []) or [])} records)"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:40]}"
        took = time.perf_counter() - started
        lines.append(f"aiodns     {name:18} {outcome:40} {took:.3f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with DnsServer() as server:
        server.set(ZONE, BEHAVIOUR)
        rate = asyncio.run(dnspython_rate(server.port, args.total, args.concurrency))
        print(f"dnspython: {rate:,.0f} TXT checks/s ({args.concurrency} concurrent)")
        try:
            rate = asyncio.run(aiodns_rate(server.port, args.total, args.concurrency))
            print(f"aiodns:    {rate:,.0f} TXT lookups/s ({args.concurrency} concurrent)")
        except ImportError:
            print("aiodns:    not installed")
        for line in asyncio.run(hostile(server.port)):
            print(line)


if __name__ == "__main__":
    main()
