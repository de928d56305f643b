"""The command line: every command, its arguments and its handler."""

from __future__ import annotations

import argparse
from typing import Any

from dispatcher import __version__
from dispatcher.cli._common import _registry
from dispatcher.cli._domains import (
    _domains_add,
    _domains_import,
    _domains_list,
    _domains_remove,
    _domains_set_status,
    _domains_show,
    _domains_verify,
)
from dispatcher.cli._resolve import _resolve
from dispatcher.cli._serve import _db_upgrade, _serve
from dispatcher.cli._workers import (
    _workers_add,
    _workers_import,
    _workers_list,
    _workers_remove,
    _workers_show,
)
from workers_registry.models import DomainStatus


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
