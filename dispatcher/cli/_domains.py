"""The ``domains`` commands."""

from __future__ import annotations

import argparse
import json

from dispatcher.cli._common import CommandError, _import_lines, _print_table, _validate
from dispatcher.errors import DispatcherError
from dispatcher.hosts import normalize_domain
from dispatcher.onboarding import (
    DomainVerifier,
    check_placement,
    domain_records,
    log_operator_status,
)
from dispatcher.settings import Settings
from workers_registry.bulk import parse_domains
from workers_registry.models import (
    CheckedDomain,
    CustomDomain,
    CustomDomainCreate,
    DomainRecord,
    DomainStatus,
)
from workers_registry.store import RegistryStore


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
    """A domain named on the command line, read as the admin API reads one (no port)."""
    try:
        return normalize_domain(value.strip())
    except DispatcherError as exc:
        raise CommandError(f"invalid domain {value!r}: {exc.message}") from None
