"""Host normalisation and worker-name validation.

Pure functions: no I/O, no settings object. This module is the single place where a host
or a worker name is judged, whatever the entry point (subdomain, path, query, admin API, CLI).
"""

from __future__ import annotations

import ipaddress
import re

import idna

from dispatcher.errors import InvalidHost, InvalidWorkerName, ReservedWorkerName
from dispatcher.memo import Memo, memo

__all__ = [
    "DEFAULT_RESERVED_NAMES",
    "MAX_HOST_LENGTH",
    "is_ip_literal",
    "is_valid_worker_name",
    "normalize_domain",
    "normalize_host",
    "normalize_wire_host",
    "validate_worker_name",
]

DEFAULT_RESERVED_NAMES: tuple[str, ...] = (
    "dispatcher",
    "api",
    "health",
    "admin",
    "system",
    "www",
    "mail",
    "ftp",
    "cdn",
    "assets",
    "static",
)

#: RFC 1035 section 2.3.4: 253 characters in text form (255 octets on the wire).
MAX_HOST_LENGTH = 253

# RFC 1123 section 2.1 label: letters, digits, hyphens; no hyphen at either end; 1-63 chars.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_WORKER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{0,5}")


def is_valid_worker_name(name: str) -> bool:
    """True if ``name`` (already lowercased) is a syntactically valid worker name."""
    return _WORKER_NAME.fullmatch(name) is not None


def validate_worker_name(name: str, reserved: frozenset[str] | tuple[str, ...]) -> str:
    """Return the canonical (lowercased) worker name or raise a routing error.

    Raises ``InvalidWorkerName`` for anything outside RFC 1123 label syntax (1-63 characters of
    ``[a-z0-9-]``, no leading or trailing hyphen) and ``ReservedWorkerName`` for reserved names.
    Valid names are remembered (path and query routes name their worker on every request).
    """
    return _CANONICAL_NAMES[name, reserved]


def _canonical_name(key: tuple[str, frozenset[str] | tuple[str, ...]]) -> str:
    name, reserved = key
    # ASCII first: str.lower() maps some non-ASCII letters onto ASCII (U+212A KELVIN SIGN -> "k").
    canonical = name.lower() if name.isascii() else ""
    if _WORKER_NAME.fullmatch(canonical) is None:
        raise InvalidWorkerName(
            f"Invalid worker name {_quote(name)}: use 1-63 characters a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        )
    if canonical in reserved:
        raise ReservedWorkerName(f"Worker name {_quote(canonical)} is reserved")
    return canonical


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 address or a bracketed (or bare) IPv6 address."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    # Names (the common case) end in a letter and have no colon: answer without parsing.
    if not candidate or (":" not in candidate and not candidate[-1].isdigit()):
        return False
    return _parses_as_ip(candidate)


@memo(1024)
def _parses_as_ip(candidate: str) -> bool:
    # Remembered: control hosts are IP literals on every path-routed request, and parsing one
    # costs more than routing the request.
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


@memo(8192)
def normalize_wire_host(raw: str) -> str:
    """``normalize_host`` for a Host as it arrived on the wire (latin-1 decoded).

    A Host on the wire is ASCII (browsers send A-labels): any other byte is ``InvalidHost``
    here, before IDNA folding could map it onto an ASCII name (``\\xaa`` onto ``a``). Cached
    like ``normalize_host``, so a known host costs one lookup.
    """
    if not raw.isascii():
        raise InvalidHost("The Host header must be ASCII")
    return normalize_host(raw)


@memo(8192)
def normalize_host(raw: str) -> str:
    """Normalise a Host header (or ``:authority``) value.

    Lowercases, strips the port and one trailing dot, and converts internationalised names to
    their IDNA ASCII form. IPv6 literals keep their brackets. Raises ``InvalidHost`` when the
    value cannot be a host name. The result is remembered: hosts repeat on the hot path.
    """
    value = raw.strip()
    if not value:
        raise InvalidHost("The Host header is missing")
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            raise InvalidHost("Malformed IPv6 host")
        host, rest = value[: end + 1], value[end + 1 :]
        if rest and not (rest.startswith(":") and _valid_port(rest[1:])):
            raise InvalidHost("Malformed port in Host header")
        if not is_ip_literal(host):
            raise InvalidHost("Malformed IPv6 host")
        return host.lower()
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    elif not _valid_port(port):
        raise InvalidHost("Malformed port in Host header")
    return normalize_domain(host)


def normalize_domain(name: str) -> str:
    """Normalise a bare domain name (no port): lowercase, one trailing dot off, IDNA ASCII.

    Raises ``InvalidHost`` when the result is not a valid host name.
    """
    host = name.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise InvalidHost("The Host header is missing")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidHost("Host is not a valid internationalised domain name") from exc
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidHost(f"Host is longer than {MAX_HOST_LENGTH} characters")
    for label in host.split("."):
        if _LABEL.fullmatch(label) is None and not _is_underscore_label(label):
            raise InvalidHost("Host contains an invalid label")
    return host


def _valid_port(port: str) -> bool:
    # RFC 3986 section 3.2.3 allows an empty port ("host:").
    return _PORT.fullmatch(port) is not None and (not port or int(port) <= 65535)


def _is_underscore_label(label: str) -> bool:
    # Service labels such as ``_acme-challenge`` are legal DNS names even though they are not
    # RFC 1123 host names; they never name a worker, but they are not malformed either.
    return (
        0 < len(label) <= 63 and label.startswith("_") and _LABEL.fullmatch(label[1:]) is not None
    )


# Remembered: path and query routes name their worker on every request (keyed by the name and
# the reserved names, the memo's one key).
_CANONICAL_NAMES: Memo[tuple[str, frozenset[str] | tuple[str, ...]], str] = Memo(
    _canonical_name, 4096
)


def _quote(value: str) -> str:
    shown = value if len(value) <= 64 else value[:61] + "..."
    return repr(shown)
