"""The ``dispatcher`` command: a thin shell over the registry store, routing and uvicorn.

Every command reads the same settings (``--config`` / ``DISPATCHER_CONFIG`` /
``config/dispatcher.toml`` and ``DISPATCHER_*``). Errors print one line to stderr and exit 1;
usage errors exit 2. Registry commands apply pending migrations first (idempotent), so a
fresh SQLite file works at once; every write is one transaction.

This module is the entry point (``main``); the rest is split by job into private modules:
``_parser`` (the command line), ``_common`` (the registry runner, errors, output helpers),
``_serve`` (``serve``, the uvicorn app factory, ``db upgrade``), ``_workers``, ``_domains``
and ``_resolve`` (the commands of each noun).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dispatcher.cli._common import CommandError
from dispatcher.cli._parser import _flag_overrides, _parser
from dispatcher.cli._serve import app_factory, server_options
from dispatcher.errors import DispatcherError
from dispatcher.settings import ConfigError, load_settings

__all__ = ["CommandError", "app_factory", "main", "server_options"]


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
