"""Bulk import files: JSON lines or CSV, parsed whole before anything is written.

Pure parsing, no I/O: ``parse_workers`` / ``parse_domains`` turn the lines of a file into the
registry's create models, each labelled with its line number, and reject the whole file if
any line is bad (up to ``MAX_REPORTED`` lines are named, each with its number). The store's
``import_workers`` / ``import_domains`` then write everything in one transaction.

Formats (one record per line; blank lines are skipped but counted):

- ``jsonl``: one JSON object per line, the body ``POST /admin/workers`` or
  ``POST /admin/domains`` takes.
- ``csv``: a header line naming the columns, then one record per line. Workers: ``name``,
  ``upstreams`` (space-separated URLs), optional ``enabled``, ``preserve_host``
  (``true``/``false``), ``max_body_bytes``, ``upstream_timeout``, ``max_concurrency``; an
  empty cell means the default; tags need JSON lines. Domains: ``domain``, ``worker``,
  optional ``status`` (default ``pending``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from dispatcher.errors import DispatcherError, InvalidRequest
from workers_registry.models import CustomDomainCreate, WorkerCreate

__all__ = [
    "MAX_IMPORT_ROWS",
    "MAX_REPORTED",
    "ImportFormat",
    "Parsed",
    "parse_domains",
    "parse_workers",
]

ImportFormat = Literal["jsonl", "csv"]

#: Records one import may hold: one transaction, validated in memory first (~1 KB a record).
MAX_IMPORT_ROWS = 1_000_000
#: Bad lines named in one rejection.
MAX_REPORTED = 20
#: Longest line accepted (a worker with 64 upstreams and 64 tags fits easily).
MAX_LINE_CHARS = 256 * 1024

_WORKER_CSV_COLUMNS = frozenset(
    {
        "name",
        "upstreams",
        "enabled",
        "preserve_host",
        "max_body_bytes",
        "upstream_timeout",
        "max_concurrency",
    }
)
_DOMAIN_CSV_COLUMNS = frozenset({"domain", "worker", "status"})
_BOOLEANS = {"true": True, "false": False}

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Parsed(Generic[ModelT]):
    """The records of a file, and the label (``line N``) of each, in file order."""

    records: list[ModelT]
    labels: list[str]


def parse_workers(
    lines: Iterable[str],
    fmt: ImportFormat,
    *,
    context: Mapping[str, Any] | None = None,
    check: Callable[[WorkerCreate], None] | None = None,
) -> Parsed[WorkerCreate]:
    """Every worker of an import file, or ``InvalidRequest`` naming the bad lines.

    ``context`` is the models' validation context (the configured reserved names); ``check``
    may refuse a valid record (raising ``DispatcherError``), as the single-record entry
    points do.
    """
    parsed = _parse(lines, fmt, WorkerCreate, _WORKER_CSV_COLUMNS, _worker_row, context, check)
    _reject_duplicates(parsed, [worker.name for worker in parsed.records], "worker")
    return parsed


def parse_domains(
    lines: Iterable[str],
    fmt: ImportFormat,
    *,
    context: Mapping[str, Any] | None = None,
    check: Callable[[CustomDomainCreate], None] | None = None,
) -> Parsed[CustomDomainCreate]:
    """Every custom domain of an import file, or ``InvalidRequest`` naming the bad lines
    (``context`` and ``check`` as for ``parse_workers``: where a domain may be placed)."""
    parsed = _parse(
        lines, fmt, CustomDomainCreate, _DOMAIN_CSV_COLUMNS, _domain_row, context, check
    )
    _reject_duplicates(parsed, [domain.domain for domain in parsed.records], "domain")
    return parsed


def _parse(
    lines: Iterable[str],
    fmt: ImportFormat,
    model: type[ModelT],
    columns: frozenset[str],
    row: Any,
    context: Mapping[str, Any] | None,
    check: Callable[[ModelT], None] | None,
) -> Parsed[ModelT]:
    context = dict(context) if context is not None else None
    records: list[ModelT] = []
    labels: list[str] = []
    errors: list[dict[str, str]] = []
    header: list[str] | None = None
    for number, line in enumerate(lines, start=1):
        label = f"line {number}"
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            if len(text) > MAX_LINE_CHARS:
                raise ValueError(f"longer than {MAX_LINE_CHARS} characters")
            if fmt == "csv" and header is None:
                try:
                    header = _csv_header(text, columns)
                except ValueError as exc:  # no row can be read without it
                    errors.append({"field": label, "message": str(exc)})
                    break
                continue
            if fmt == "jsonl":  # JSON's own types, as the admin API takes them
                data = json.dumps(_json_object(text))
                record = model.model_validate_json(data, strict=True, context=context)
            else:
                record = model.model_validate(row(_csv_cells(text, header)), context=context)
            if check is not None:
                check(record)
            records.append(record)
            labels.append(label)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_context=False, include_input=False):
                field = ".".join(str(part) for part in error["loc"]) or "record"
                message = error["msg"].removeprefix("Value error, ")
                errors.append({"field": label, "message": f"{field}: {message}"})
        except ValueError as exc:
            errors.append({"field": label, "message": str(exc)})
        except DispatcherError as exc:
            errors.append({"field": label, "message": exc.message})
        if len(errors) >= MAX_REPORTED:
            break
        if len(records) > MAX_IMPORT_ROWS:
            errors.append({"field": label, "message": f"more than {MAX_IMPORT_ROWS} records"})
            break
    if not errors and not records:
        errors.append({"field": "file", "message": "no records"})
    if errors:
        raise InvalidRequest(
            f"The import was rejected, nothing was written: {errors[0]['field']}: "
            f"{errors[0]['message']}",
            details=errors,
        )
    return Parsed(records, labels)


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise ValueError("not a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _csv_header(text: str, columns: frozenset[str]) -> list[str]:
    header = [cell.strip().lower() for cell in next(csv.reader([text]))]
    unknown = [name for name in header if name not in columns]
    if unknown or len(set(header)) != len(header):
        raise ValueError(
            f"the CSV header must name distinct columns among {', '.join(sorted(columns))}"
        )
    return header


def _csv_cells(text: str, header: list[str] | None) -> dict[str, str]:
    assert header is not None
    cells = next(csv.reader([text]))
    if len(cells) != len(header):
        raise ValueError(f"{len(cells)} cells, the header names {len(header)}")
    return {name: cell.strip() for name, cell in zip(header, cells, strict=True) if cell.strip()}


def _worker_row(cells: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = dict(cells)
    if "upstreams" in data:
        data["upstreams"] = data["upstreams"].split()
    for name in ("enabled", "preserve_host"):
        if name in data:
            value = _BOOLEANS.get(data[name].lower())
            if value is None:
                raise ValueError(f"{name}: write true or false")
            data[name] = value
    return data


def _domain_row(cells: dict[str, str]) -> dict[str, Any]:
    return dict(cells)


def _reject_duplicates(parsed: Parsed[Any], keys: list[str], what: str) -> None:
    first: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    for key, label in zip(keys, parsed.labels, strict=True):
        if key in first:
            message = f"{what} '{key}' is already on {first[key]}"
            errors.append({"field": label, "message": message})
            if len(errors) >= MAX_REPORTED:
                break
        else:
            first[key] = label
    if errors:
        raise InvalidRequest(
            f"The import was rejected, nothing was written: {errors[0]['field']}: "
            f"{errors[0]['message']}",
            details=errors,
        )
