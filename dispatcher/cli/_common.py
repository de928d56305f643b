"""What every command shares: the error an operator can fix, the registry runner, output helpers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from pydantic import ValidationError

from dispatcher.settings import Settings
from workers_registry.bulk import ImportFormat
from workers_registry.store import RegistryStore


class _StderrLogger:
    """A structlog logger writing each line to whatever ``sys.stderr`` is at the time."""

    def __init__(self, *args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = msg


class CommandError(Exception):
    """A command failed in a way the operator can fix; the message is printed as is."""


RegistryCommand = Callable[[RegistryStore, Settings, argparse.Namespace], Awaitable[int]]


def _registry(command: RegistryCommand) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        # Log lines (a status change found by `domains verify`, say) go to stderr: stdout is
        # the command's answer, JSON with --json.
        structlog.configure(logger_factory=_StderrLogger)

        async def go() -> int:
            from workers_registry.migrate import upgrade  # alembic: only when it runs

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


def _import_lines(args: argparse.Namespace) -> tuple[list[str], ImportFormat]:
    fmt: ImportFormat = args.format or ("csv" if args.file.lower().endswith(".csv") else "jsonl")
    if args.file == "-":
        return sys.stdin.readlines(), fmt
    try:
        with open(args.file, encoding="utf-8", newline="") as file:
            return file.readlines(), fmt
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from None


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
