"""Request routing: which worker does a request belong to?

Pure functions of data. No I/O, no database, no HTTP client: the custom-domain answer for a
tenant host is looked up by the caller (through the cache in ``dispatcher.domains``) and passed
in, so every routing decision is unit-testable. Order (README, "How a request is routed"):

1. control host (``localhost``, IP literals, each base domain's apex, ``control_hosts``): the
   control plane, except the path and query routes under ``/dispatch`` and ``/api/dispatch``;
2. an exact custom domain whose status routes (``active``/``verified``) -> kind ``custom_domain``;
3. exactly one label under a base domain -> kind ``subdomain``;
4. anything else -> ``domain_not_found`` (or ``registry_unavailable`` when the lookup failed).

On a tenant host the tenant owns every path, ``/health`` included.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Final
from urllib.parse import unquote, unquote_to_bytes

from dispatcher.errors import (
    DomainNotFound,
    InvalidRequest,
    InvalidWorkerName,
    MissingWorker,
    RegistryUnavailable,
    RoutingError,
    WorkerNotFound,
)
from dispatcher.hosts import is_ip_literal, validate_worker_name
from dispatcher.memo import Memo
from workers_registry.entries import WorkerEntry
from workers_registry.models import CustomDomain

__all__ = [
    "CONTROL",
    "UNAVAILABLE",
    "Control",
    "DomainAnswer",
    "Route",
    "RouteKind",
    "RoutingTable",
    "resolve",
    "resolve_control",
    "resolve_tenant",
]


class RouteKind(StrEnum):
    SUBDOMAIN = "subdomain"
    CUSTOM_DOMAIN = "custom_domain"
    PATH = "path"
    QUERY = "query"


@dataclass(slots=True)
class Route:
    """Where a request goes: the worker and what the upstream receives.

    ``upstream_path`` is the raw path (bytes as the client sent them, starting with ``/``),
    ``query`` the raw query string without ``?``, and ``prefix`` the part of the client's path
    that the route consumed (``X-Forwarded-Prefix``; empty for host routes). Treat it as
    immutable; it is not frozen only because a frozen dataclass is slower to make, and one is
    made per request.
    """

    worker: WorkerEntry
    kind: RouteKind
    upstream_path: bytes
    query: bytes
    prefix: str = ""


class Control(Enum):
    """The request is for the dispatcher's own control plane."""

    PLANE = "control"


CONTROL: Final = Control.PLANE


class _Unavailable(Enum):
    VALUE = "unavailable"


#: Passed as the custom-domain answer when the registry could not be asked.
UNAVAILABLE: Final = _Unavailable.VALUE

#: What the caller learned about the host from the custom-domain registry.
DomainAnswer = CustomDomain | None | _Unavailable

#: Hosts whose subdomain answer a routing table remembers at most.
_MEMO_SIZE: Final = 10_000

_PREFIXES: Final = ((b"/dispatch", "/dispatch"), (b"/api/dispatch", "/api/dispatch"))
_INFO_METHODS: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The data routing needs: configuration plus every worker.

    Built whole at a full load of the registry; after that, ``put_worker`` changes one worker
    at a time (the registry's change log). Nothing remembered depends on a worker: the memo
    holds what a host's label says (a worker name or a refusal), and the worker is looked up
    at each request, so a change to one worker touches no other entry.
    """

    base_domains: tuple[str, ...]
    control_hosts: frozenset[str]
    reserved: frozenset[str]
    workers: dict[str, WorkerEntry]
    # What a host's label names: a valid worker name, None (no subdomain), or the error.
    _subdomains: Memo[str, str | RoutingError | None] = field(init=False, compare=False, repr=False)
    # What ``is_control_host`` answered per host (asked on every request; a dict hit is
    # cheaper than the set lookup and the IP-literal check).
    _control: Memo[str, bool] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_subdomains", Memo(self._subdomain_name, _MEMO_SIZE))
        object.__setattr__(self, "_control", Memo(self._is_control_host, _MEMO_SIZE))

    @classmethod
    def build(
        cls,
        *,
        base_domains: Iterable[str],
        control_hosts: Iterable[str] = (),
        reserved: Iterable[str] = (),
        workers: Iterable[WorkerEntry] = (),
    ) -> RoutingTable:
        # Longest base first, so a worker under ``apps.example.com`` is not mistaken for a
        # two-label name under ``example.com``.
        bases = tuple(sorted(set(base_domains), key=len, reverse=True))
        return cls(
            base_domains=bases,
            control_hosts=frozenset(control_hosts) | frozenset(bases) | {"localhost"},
            reserved=frozenset(reserved),
            workers={worker.name: worker for worker in workers},
        )

    def is_control_host(self, host: str) -> bool:
        """True for hosts that serve the control plane (never a tenant)."""
        return self._control[host]

    def _is_control_host(self, host: str) -> bool:
        return host in self.control_hosts or is_ip_literal(host)

    def subdomain_label(self, host: str) -> str | None:
        """The single label of ``host`` under a base domain, or ``None``."""
        for base in self.base_domains:
            if host.endswith(base) and host[-len(base) - 1 : -len(base)] == ".":
                label = host[: -len(base) - 1]
                return label if label and "." not in label else None
        return None

    def subdomain_worker(self, host: str) -> WorkerEntry | None:
        """The worker that ``host``, one label under a base domain, names.

        ``None`` when ``host`` is not such a subdomain; raises ``InvalidWorkerName``,
        ``ReservedWorkerName`` or ``WorkerNotFound`` for a label that names no worker. What
        the label names is a function of the host and the configuration, so it is remembered:
        hosts repeat, and this is on every subdomain request.
        """
        name = self._subdomains[host]
        if name is None:
            return None
        if isinstance(name, RoutingError):
            raise type(name)(name.message)  # a fresh one: a raised error keeps its traceback
        worker = self.workers.get(name)
        if worker is None or not worker.enabled:
            raise WorkerNotFound(f"Worker '{name}' does not exist")
        return worker

    def _subdomain_name(self, host: str) -> str | RoutingError | None:
        try:
            label = self.subdomain_label(host)
            return None if label is None else validate_worker_name(label, self.reserved)
        except RoutingError as exc:
            return exc

    def put_worker(self, name: str, worker: WorkerEntry | None) -> None:
        """Replace worker ``name`` (``None``: remove it); nothing else changes."""
        if worker is None:
            self.workers.pop(name, None)
        else:
            self.workers[name] = worker

    def worker(self, name: str) -> WorkerEntry:
        """The enabled worker called ``name``, or ``WorkerNotFound``."""
        worker = self.workers.get(name)
        if worker is None or not worker.enabled:
            raise WorkerNotFound(f"Worker '{name}' does not exist")
        return worker


def resolve(
    host: str,
    raw_path: bytes,
    query: bytes,
    table: RoutingTable,
    domain: DomainAnswer = None,
    *,
    method: str = "GET",
) -> Route | Control:
    """Route a request to a worker or to the control plane.

    ``host`` is already normalised (``dispatcher.hosts.normalize_host``). ``domain`` is the
    custom-domain registry's answer for ``host`` (ignored for control hosts). Raises only
    ``RoutingError`` subclasses, ``RegistryUnavailable`` and ``InvalidRequest``.
    """
    if table.is_control_host(host):
        return resolve_control(raw_path, query, table, method=method)
    return resolve_tenant(host, raw_path, query, table, domain)


def resolve_tenant(
    host: str, raw_path: bytes, query: bytes, table: RoutingTable, domain: DomainAnswer
) -> Route:
    """Route a request on a tenant host (custom domain, then wildcard subdomain)."""
    path = raw_path or b"/"
    _reject_dot_segments(path)
    if isinstance(domain, CustomDomain) and domain.routable:
        return Route(table.worker(domain.worker), RouteKind.CUSTOM_DOMAIN, path, query)
    worker = table.subdomain_worker(host)
    if worker is not None:
        # A registry outage must not take subdomain routing down: the snapshot answers.
        return Route(worker, RouteKind.SUBDOMAIN, path, query)
    if domain is UNAVAILABLE:
        raise RegistryUnavailable("The worker registry is unavailable; try again shortly")
    raise DomainNotFound(f"No worker is registered for '{host}'")


def resolve_control(
    raw_path: bytes, query: bytes, table: RoutingTable, *, method: str = "GET"
) -> Route | Control:
    """Route a request on a control host: a path or query route, or the control plane."""
    for raw_prefix, prefix in _PREFIXES:
        if not raw_path.startswith(raw_prefix):
            continue
        rest = raw_path[len(raw_prefix) :]
        if rest in (b"", b"/"):
            return _query_route(query, table, prefix, method)
        if rest.startswith(b"/"):
            return _path_route(rest, query, table, prefix)
    return CONTROL


def _path_route(rest: bytes, query: bytes, table: RoutingTable, prefix: str) -> Route:
    # ``rest`` is ``/<name>[/<upstream path>]``; only the name segment is decoded.
    end = rest.find(b"/", 1)
    segment, upstream_path = (rest[1:], b"/") if end == -1 else (rest[1:end], rest[end:])
    name = validate_worker_name(_decode_segment(segment), table.reserved)
    _reject_dot_segments(upstream_path)
    return Route(table.worker(name), RouteKind.PATH, upstream_path, query, f"{prefix}/{name}")


def _query_route(query: bytes, table: RoutingTable, prefix: str, method: str) -> Route | Control:
    worker: str | None = None
    kept: list[bytes] = []
    for part in query.split(b"&") if query else ():
        key, _, value = part.partition(b"=")
        if _decode_param(key) == "worker":
            if worker is None:
                worker = _decode_param(value)
            continue
        kept.append(part)
    if worker is None:
        if method in _INFO_METHODS:
            return CONTROL
        raise MissingWorker("Name the worker: /dispatch?worker=<name> or /dispatch/<name>/")
    if not worker:
        raise MissingWorker("The 'worker' query parameter is empty")
    name = validate_worker_name(worker, table.reserved)
    return Route(table.worker(name), RouteKind.QUERY, b"/", b"&".join(kept), prefix)


def _decode_segment(segment: bytes) -> str:
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWorkerName("Invalid worker name in path") from None


def _decode_param(value: bytes) -> str:
    try:
        return unquote(value.replace(b"+", b" ").decode("ascii"), errors="strict")
    except UnicodeError:
        return "\ufffd"  # never equal to "worker", never a valid worker name


_DOT_SEGMENTS: Final = frozenset({".", ".."})
# What some upstream decodes, splits on or cuts at: ``\`` is a separator on Windows servers
# (IIS, some Java and Node ones), ``;`` starts path parameters (``..;`` is ``..`` to Tomcat).
_SEPARATORS: Final = re.compile(r"[/\\]")
_DECODE_ROUNDS: Final = 3  # ``%252e`` is ``.`` to an upstream that decodes twice
# Other spellings of ``.``, ``/`` and ``\\`` some upstream reads: ``%u002e`` (IIS, .NET's
# UrlDecode), overlong UTF-8 (``%c0%ae``: old Java and Tomcat decoders) and compatibility
# characters (fullwidth ``%ef%bc%8e``, which NFKC folds to ``.``).
_PERCENT_U: Final = re.compile(r"%u([0-9a-f]{4})", re.IGNORECASE)
_OVERLONG: Final = re.compile(
    rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]|\xf0[\x80-\x8f][\x80-\xbf]{2}"
)


def _reject_dot_segments(path: bytes) -> None:
    """Refuse a path that any upstream could read as containing a dot segment.

    The upstream resolves ``..`` against its own base path (RFC 3986 section 5.2.4), so a
    client's ``/../../secret`` would walk out of a worker's ``http://10.0.0.5/app/v1`` or out of
    a path route's ``/dispatch/<name>``. Normalising would have to guess how each upstream
    reads a path; refusing does not: a segment that, once percent-decoded (repeatedly), cut
    at ``;`` and split on ``/`` or ``\\`` too, is ``.`` or ``..`` (trailing blanks and NULs
    ignored) is 400 on every route kind, and so is one that is ``.`` or ``..`` once ``%uXXXX``
    escapes, overlong UTF-8 and compatibility characters are read as well (``_unicode_reading``).
    Browsers never send one (they resolve dot segments before sending), so only hand-made
    requests meet this. An ASCII path without a ``%``, ``/.`` or ``\\.`` cannot hold a dot
    segment in any of these readings, so most paths are only looked at, never decoded further
    (the look is on ``str``: on bytes, ``in`` raises and clears an exception in CPython 3.11).
    """
    text = path.decode("latin-1")
    if "%" not in text and "/." not in text and "\\." not in text and text.isascii():
        return
    for _ in range(_DECODE_ROUNDS):
        if "%" not in text:
            break
        text = unquote(text, encoding="latin-1")
    _reject_dot_segment_in(text)
    if not text.isascii() or "%u" in text or "%U" in text:
        _reject_dot_segment_in(_unicode_reading(text))


def _reject_dot_segment_in(text: str) -> None:
    for segment in _SEPARATORS.split(text):
        if segment.partition(";")[0].rstrip(" \t\x00") in _DOT_SEGMENTS:
            raise InvalidRequest("Dot segments ('.' or '..') are not allowed in request paths")


def _unicode_reading(text: str) -> str:
    """The percent-decoded path ``text`` (latin-1) as the most lenient upstream reads it."""
    raw = _OVERLONG.sub(_shortest_form, text.encode("latin-1"))
    decoded = _PERCENT_U.sub(lambda match: chr(int(match[1], 16)), raw.decode("utf-8", "replace"))
    return unicodedata.normalize("NFKC", decoded)


def _shortest_form(match: re.Match[bytes]) -> bytes:
    """An overlong UTF-8 sequence (``c0 ae``) rewritten as the character it spells (``.``)."""
    sequence = match[0]
    code = sequence[0] & (0x1F, 0x0F, 0x07)[len(sequence) - 2]
    for byte in sequence[1:]:
        code = code << 6 | byte & 0x3F
    return chr(code).encode("utf-8", "surrogatepass")
