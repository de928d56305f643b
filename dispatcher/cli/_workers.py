"""The ``workers`` commands."""

from __future__ import annotations

import argparse
import json

from dispatcher.cli._common import CommandError, _import_lines, _print_table, _validate
from dispatcher.settings import Settings
from workers_registry.bulk import parse_workers
from workers_registry.models import WorkerCreate
from workers_registry.store import RegistryStore


async def _workers_add(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    tags: dict[str, str] = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--tag expects KEY=VALUE, got {item!r}")
        tags[key] = value
    spec = _validate(
        WorkerCreate,
        {
            "name": args.name,
            "upstreams": args.upstream,
            "enabled": not args.disabled,
            "preserve_host": args.preserve_host,
            "max_body_bytes": args.max_body_bytes,
            "upstream_timeout": args.upstream_timeout,
            "max_concurrency": args.max_concurrency,
            "rate_limit": args.rate_limit,
            "rate_burst": args.rate_burst,
            "client_rate_limit": args.client_rate_limit,
            "tags": tags,
        },
        settings,
    )
    worker = await store.add_worker(spec)
    print(f"added worker {worker.name} -> {', '.join(worker.upstreams)}")
    return 0


async def _workers_list(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    workers = await store.list_workers()
    if args.json:
        print(json.dumps([w.model_dump(mode="json") for w in workers], indent=2))
        return 0
    rows = [(w.name, "yes" if w.enabled else "no", ", ".join(w.upstreams)) for w in workers]
    _print_table(("NAME", "ENABLED", "UPSTREAMS"), rows)
    return 0


async def _workers_show(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    name = settings.validate_worker_name(args.name)
    worker = await store.get_worker(name)
    if worker is None:
        raise CommandError(f"worker {name!r} does not exist")
    data = worker.model_dump(mode="json")
    data["domains"] = [d.domain for d in await store.list_domains(worker=name)]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key}: {json.dumps(shown) if isinstance(shown, dict) else shown}")
    return 0


async def _workers_remove(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    name = settings.validate_worker_name(args.name)
    await store.remove_worker(name)
    print(f"removed worker {name}")
    return 0


async def _workers_import(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    lines, fmt = _import_lines(args)
    parsed = parse_workers(lines, fmt, context=settings.registration_context)
    count = await store.import_workers(parsed.records, parsed.labels)
    print(f"imported {count} workers")
    return 0
