"""The ``resolve`` command: how a request to a URL would route."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from dispatcher.errors import DispatcherError
from dispatcher.hosts import normalize_host
from dispatcher.routing import UNAVAILABLE, DomainAnswer, Route, RoutingTable, resolve
from dispatcher.settings import Settings
from workers_registry.store import RegistryStore


async def _resolve(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    parts = urlsplit(args.url if "://" in args.url else f"http://{args.url}")
    path = parts.path or "/"
    query = parts.query
    _, workers = await store.load_workers()
    table = RoutingTable.build(
        base_domains=settings.base_domains,
        control_hosts=settings.control_hosts,
        reserved=settings.reserved,
        workers=workers,
    )
    try:
        host = normalize_host(parts.netloc)
        answer: DomainAnswer = None
        if not table.is_control_host(host):
            try:
                answer = await store.lookup_domain(host)
            except DispatcherError:
                answer = UNAVAILABLE
        decision = resolve(host, path.encode(), query.encode(), table, answer)
    except DispatcherError as exc:
        body = exc.to_body(request_id="")["error"]
        del body["request_id"]
        if args.json:
            print(json.dumps({"error": body}))
        else:
            print(f"error: {exc.code} ({exc.status}): {exc.message}", file=sys.stderr)
        return 1
    if isinstance(decision, Route):
        result: dict[str, Any] = {
            "kind": decision.kind.value,
            "worker": decision.worker.name,
            "upstream_path": decision.upstream_path.decode("latin-1"),
            "query": decision.query.decode("latin-1"),
        }
        upstreams = decision.worker.upstreams
    else:
        result = {"kind": "control", "worker": None, "upstream_path": path, "query": query}
        upstreams = ()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {'' if value is None else value}")
        if upstreams:
            print(f"upstreams: {', '.join(upstreams)}")
    return 0
