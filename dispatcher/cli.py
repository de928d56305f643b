"""The ``dispatcher`` command: a thin shell over the registry store, routing and uvicorn.

Every command reads the same settings (``--config`` / ``DISPATCHER_CONFIG`` /
``config/dispatcher.toml`` and ``DISPATCHER_*``). Errors print one line to stderr and exit 1;
usage errors exit 2. Registry commands apply pending migrations first (idempotent), so a
fresh SQLite file works at once; every write is one transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog
from pydantic import ValidationError

from dispatcher import __version__
from dispatcher.errors import DispatcherError
from dispatcher.hosts import normalize_host
from dispatcher.onboarding import (
    DomainVerifier,
    check_placement,
    domain_records,
    log_operator_status,
)
from dispatcher.routing import UNAVAILABLE, DomainAnswer, Route, RoutingTable, resolve
from dispatcher.settings import ConfigError, Settings, load_settings
from workers_registry.bulk import ImportFormat, parse_domains, parse_workers
from workers_registry.migrate import upgrade
from workers_registry.models import (
    CheckedDomain,
    CustomDomain,
    CustomDomainCreate,
    DomainRecord,
    DomainStatus,
    WorkerCreate,
)
from workers_registry.store import RegistryStore

__all__ = ["main"]


class _StderrLogger:
    """A structlog logger writing each line to whatever ``sys.stderr`` is at the time."""

    def __init__(self, *args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = msg


class CommandError(Exception):
    """A command failed in a way the operator can fix; the message is printed as is."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, **_flag_overrides(args))
        return int(args.handler(settings, args) or 0)
    except (ConfigError, CommandError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DispatcherError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for detail in exc.details or ():
            print(f"  {detail['field']}: {detail['message']}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description="Edge request dispatcher")
    parser.add_argument("--version", action="version", version=f"dispatcher {__version__}")
    parser.add_argument("--config", help="settings file (TOML); default config/dispatcher.toml")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the dispatcher (applies migrations first)")
    serve.add_argument("--host", help="listen address (default from settings: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from settings: 8080)")
    serve.add_argument("--workers", type=int, default=1, help="number of processes")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    db.add_parser("upgrade", help="apply pending migrations").set_defaults(handler=_db_upgrade)

    workers = commands.add_parser("workers", help="manage workers").add_subparsers(
        dest="workers_command", required=True, metavar="ACTION"
    )
    add = workers.add_parser("add", help="register a worker")
    add.add_argument("name")
    add.add_argument("--upstream", action="append", required=True, help="base URL (repeatable)")
    add.add_argument("--disabled", action="store_true")
    add.add_argument("--preserve-host", action="store_true")
    add.add_argument("--max-body-bytes", type=int)
    add.add_argument("--upstream-timeout", type=float)
    add.add_argument("--max-concurrency", type=int)
    add.add_argument("--rate-limit", type=float, metavar="N", help="requests per second")
    add.add_argument("--rate-burst", type=int, metavar="N", help="requests at once above it")
    add.add_argument(
        "--client-rate-limit", type=float, metavar="N", help="requests per second per client IP"
    )
    add.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    add.set_defaults(handler=_registry(_workers_add))
    listing = workers.add_parser("list", help="list workers")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_registry(_workers_list))
    show = workers.add_parser("show", help="show one worker")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_registry(_workers_show))
    remove = workers.add_parser("remove", help="remove a worker and its domains")
    remove.add_argument("name")
    remove.set_defaults(handler=_registry(_workers_remove))
    wimport = workers.add_parser("import", help="add workers from a file, in one transaction")
    _import_arguments(wimport)
    wimport.set_defaults(handler=_registry(_workers_import))

    domains = commands.add_parser("domains", help="manage custom domains").add_subparsers(
        dest="domains_command", required=True, metavar="ACTION"
    )
    dadd = domains.add_parser("add", help="map a custom domain to a worker")
    dadd.add_argument("domain")
    dadd.add_argument("--worker", required=True)
    dadd.add_argument(
        "--status",
        choices=[s.value for s in DomainStatus],
        help="default pending (verified by DNS); active vouches for the domain, no checks",
    )
    dadd.add_argument("--json", action="store_true")
    dadd.set_defaults(handler=_registry(_domains_add))
    dlist = domains.add_parser("list", help="list custom domains")
    dlist.add_argument("--json", action="store_true")
    dlist.set_defaults(handler=_registry(_domains_list))
    dshow = domains.add_parser("show", help="show a custom domain and its verification record")
    dshow.add_argument("domain")
    dshow.add_argument("--json", action="store_true")
    dshow.set_defaults(handler=_registry(_domains_show))
    dverify = domains.add_parser("verify", help="check a custom domain's DNS records now")
    dverify.add_argument("domain")
    dverify.add_argument("--json", action="store_true")
    dverify.set_defaults(handler=_registry(_domains_verify))
    dremove = domains.add_parser("remove", help="remove a custom domain")
    dremove.add_argument("domain")
    dremove.set_defaults(handler=_registry(_domains_remove))
    dstatus = domains.add_parser("set-status", help="change a custom domain's status")
    dstatus.add_argument("domain")
    dstatus.add_argument("status", choices=[s.value for s in DomainStatus])
    dstatus.set_defaults(handler=_registry(_domains_set_status))
    dimport = domains.add_parser(
        "import", help="add custom domains from a file, in one transaction"
    )
    _import_arguments(dimport)
    dimport.set_defaults(handler=_registry(_domains_import))

    resolve_cmd = commands.add_parser("resolve", help="show how a request to URL would route")
    resolve_cmd.add_argument("url")
    resolve_cmd.add_argument("--json", action="store_true")
    resolve_cmd.set_defaults(handler=_registry(_resolve))
    return parser


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="JSON lines or CSV with a header line; - for stdin")
    parser.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        help="default: csv for a .csv file, else jsonl",
    )


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if args.command != "serve":
        return {}
    return {"host": args.host, "port": args.port}


# -- serve --------------------------------------------------------------------------------------


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that decide how the dispatcher speaks HTTP (tests serve with these)."""
    return {
        "http": "dispatcher.h1server:H1Protocol"
        if settings.http_server == "dispatcher"
        else "httptools",
        # The largest request head the server accepts (431 above it): above the dispatcher's
        # own max_header_bytes (which counts header lines only), so the dispatcher answers 431
        # itself first, and small enough that unfinished heads hold little memory: each
        # connection keeps at most this much until request_head_timeout closes it.
        "h11_max_incomplete_event_size": 2 * settings.max_header_bytes + 16 * 1024,
        # Said, not guessed: the gateway's __call__ is a plain function returning a coroutine.
        "interface": "asgi3",
        "ws": "websockets-sansio",  # supports the websocket.http.response denial extension
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,  # trust is the dispatcher's decision (README, "Forwarding rules")
        "server_header": False,  # the upstream's Server and Date headers pass through
        "date_header": False,
        # Longer than the keep-alive of the proxy in front (Caddy: 60 s), so the proxy always
        # closes an idle connection first and never reuses one we are closing.
        "timeout_keep_alive": round(settings.keepalive_timeout),
    }


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from dispatcher.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    if not args.no_migrate:
        asyncio.run(upgrade(settings.async_database_url))
    if args.config:
        # Worker processes rebuild the settings from the environment and this file.
        os.environ["DISPATCHER_CONFIG"] = str(args.config)
    uvicorn.run(
        "dispatcher.cli:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop" if _has_uvloop() else "asyncio",
        timeout_graceful_shutdown=10,
        **server_options(settings),
    )
    return 0


def app_factory() -> Any:
    """Entry point for uvicorn worker processes (``--workers N``)."""
    from dispatcher.app import create_app
    from dispatcher.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: move it out of the
    # cyclic collector's view, so full collections under load do not walk it again and again
    # (they were the p99 of the benchmark). Only here, in the server process, never in tests
    # or embedding applications.
    gc.collect()
    gc.freeze()
    # The requests in flight keep thousands of young objects alive, so at the default
    # threshold (700 allocations) the collector ran every few requests, walked them and
    # promoted them to older generations only for reference counting to free them later:
    # a large share of the CPU per request (bench/RESULTS.md). Nearly all garbage here is
    # freed by reference counting: collect the young generation rarely.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 20, 100)
    app.state.freeze_loaded = True  # and the workers loaded at start, and at each resync
    return app


#: Allocations (net of frees) between collections of the youngest generation.
_GC_YOUNG_THRESHOLD = 50_000


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(upgrade(settings.async_database_url))
    print("database is up to date")
    return 0


# -- registry commands --------------------------------------------------------------------------

RegistryCommand = Callable[[RegistryStore, Settings, argparse.Namespace], Awaitable[int]]


def _registry(command: RegistryCommand) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        # Log lines (a status change found by `domains verify`, say) go to stderr: stdout is
        # the command's answer, JSON with --json.
        structlog.configure(logger_factory=_StderrLogger)

        async def go() -> int:
            await upgrade(settings.async_database_url)
            store = RegistryStore.from_url(settings.async_database_url)
            try:
                return await command(store, settings, args)
            finally:
                await store.aclose()

        return asyncio.run(go())

    return run


def _validate(model: Any, data: dict[str, Any], settings: Settings) -> Any:
    try:
        return model.model_validate(data, context=settings.registration_context)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise CommandError(problems) from None


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


async def _domains_add(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    data = {"domain": args.domain, "worker": args.worker}
    if args.status is not None:
        data["status"] = args.status  # given: the operator's word (check_placement reads it)
    spec = _validate(CustomDomainCreate, data, settings)
    check_placement(spec, settings)
    record = await _record(store, settings, await store.add_domain(spec))
    if args.json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return 0
    print(f"added domain {record.domain} -> {record.worker} ({record.status.value})")
    if record.status is DomainStatus.PENDING:
        verification = record.verification
        print(
            "\nAsk the customer to create these DNS records:\n"
            f'  {verification.txt_name}  TXT    "{verification.txt_value}"\n'
            f"  {record.domain}  CNAME  {verification.cname_target}\n"
            "(an apex domain that cannot have a CNAME: A/AAAA records with the addresses of "
            f"{verification.cname_target})\n"
            "The domain is checked within seconds, then with back-off; it routes once verified.\n"
            f"Check now: dispatcher domains verify {record.domain}"
        )
    return 0


def _import_lines(args: argparse.Namespace) -> tuple[list[str], ImportFormat]:
    fmt: ImportFormat = args.format or ("csv" if args.file.lower().endswith(".csv") else "jsonl")
    if args.file == "-":
        return sys.stdin.readlines(), fmt
    try:
        with open(args.file, encoding="utf-8", newline="") as file:
            return file.readlines(), fmt
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from None


async def _workers_import(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    lines, fmt = _import_lines(args)
    parsed = parse_workers(lines, fmt, context=settings.registration_context)
    count = await store.import_workers(parsed.records, parsed.labels)
    print(f"imported {count} workers")
    return 0


async def _domains_import(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    lines, fmt = _import_lines(args)
    parsed = parse_domains(
        lines,
        fmt,
        context=settings.registration_context,
        check=lambda spec: check_placement(spec, settings),
    )
    count = await store.import_domains(parsed.records, parsed.labels)
    print(f"imported {count} custom domains")
    return 0


async def _record(store: RegistryStore, settings: Settings, domain: CustomDomain) -> DomainRecord:
    return (await domain_records(store, settings, [domain]))[0]


async def _domains_list(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    records = await domain_records(store, settings, await store.list_domains())
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return 0
    _print_table(
        ("DOMAIN", "WORKER", "STATUS", "NOTE"),
        [(r.domain, r.worker, r.status.value, _note(r)) for r in records],
    )
    return 0


def _note(record: DomainRecord) -> str:
    if record.shadows_worker is not None:
        return f"shadows worker {record.shadows_worker}'s subdomain"
    return record.verification.failure_reason or ""


async def _domains_show(store: RegistryStore, settings: Settings, args: argparse.Namespace) -> int:
    domain = _domain_arg(args.domain)
    found = await store.get_domain(domain)
    if found is None:
        raise CommandError(f"domain {domain!r} is not registered")
    _print_record(await _record(store, settings, found), args.json)
    return 0


async def _domains_verify(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    report = await DomainVerifier(store, settings).check(_domain_arg(args.domain))
    record = await _record(store, settings, report.domain)
    checked = CheckedDomain(**dict(record), check=report.model())
    if args.json:
        print(json.dumps(checked.model_dump(mode="json"), indent=2))
        return 0
    print(f"check: {report.result}" + (f" ({report.reason})" if report.reason else ""))
    _print_record(record, False)
    return 0


def _print_record(record: DomainRecord, as_json: bool) -> None:
    data = record.model_dump(mode="json")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    verification = data.pop("verification")
    for key, value in data.items():
        print(f"{key}: {'' if value is None else value}")
    for key, value in verification.items():
        print(f"verification.{key}: {'' if value is None else value}")


async def _domains_remove(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    domain = _domain_arg(args.domain)
    await store.remove_domain(domain)
    print(f"removed domain {domain}")
    return 0


async def _domains_set_status(
    store: RegistryStore, settings: Settings, args: argparse.Namespace
) -> int:
    domain = _domain_arg(args.domain)
    updated = await store.set_domain_status(domain, DomainStatus(args.status))
    log_operator_status(updated, "CLI")
    print(f"domain {updated.domain} is now {updated.status.value}")
    return 0


def _domain_arg(value: str) -> str:
    try:
        return normalize_host(value)
    except DispatcherError as exc:
        raise CommandError(f"invalid domain {value!r}: {exc.message}") from None


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
        upstreams = []
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {'' if value is None else value}")
        if upstreams:
            print(f"upstreams: {', '.join(upstreams)}")
    return 0


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
