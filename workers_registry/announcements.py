"""What the registry announces on Postgres, and the connection that hears it.

Every transaction that changed workers or custom domains is announced once, at commit, on
``REGISTRY_CHANNEL`` (migrations 0002 and 0005):

- ``{"seq": N}``: the registry reached sequence ``N``;
- ``{"seq": N, "first": F, "changes": [[table, key, op], ...]}``: the same, for a transaction
  of at most a few dozen rows, with its change-log entries ``F..N`` in order, so a follower
  that applied ``F - 1`` needs no read of the log to know which keys changed.

A payload is bytes from the database: ``read_announcement`` accepts only that exact shape
(sizes, types, tables, operations, one entry per sequence number) and otherwise keeps what is
sound (the sequence alone) or nothing. What a well-formed payload says is still a claim: the
follower confirms it against the log (``workers_registry.changes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from workers_registry.store import Change
from workers_registry.tables import REGISTRY_CHANNEL

__all__ = ["Announcement", "PostgresListener", "read_announcement"]

_log = structlog.get_logger("workers_registry.changes")

#: Postgres refuses a NOTIFY payload of 8,000 bytes or more.
_MAX_PAYLOAD = 8000
#: The most entries one announcement may carry (the migration sends at most 32).
_MAX_CHANGES = 64
#: The highest sequence a registry can reach (``registry_version.version`` is a ``bigint``).
_MAX_SEQ = 2**63 - 1
_TABLES = frozenset({"workers", "custom_domains"})
_KEYED_OPERATIONS = frozenset({"insert", "update", "delete"})


@dataclass(frozen=True, slots=True)
class Announcement:
    """A notification: the registry reached ``seq``; ``changes`` are the entries that led
    there from ``changes[0].seq`` when the payload carried them (empty otherwise)."""

    seq: int
    changes: tuple[Change, ...] = ()


def read_announcement(payload: str) -> Announcement | None:
    """The announcement in a ``NOTIFY`` payload, or ``None`` if it names no sequence."""
    if len(payload) >= _MAX_PAYLOAD:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # (deep nesting fits in a payload)
        return None
    if not isinstance(data, dict):
        return None
    seq = data.get("seq")
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
        return None
    return Announcement(seq, _changes(seq, data.get("first"), data.get("changes")))


def _changes(seq: int, first: object, entries: object) -> tuple[Change, ...]:
    """The entries ``first..seq`` of a payload, or none at all if any of them is unsound."""
    if type(first) is not int or not 0 < first <= seq or seq - first >= _MAX_CHANGES:
        return ()
    if type(entries) is not list or len(entries) != seq - first + 1:
        return ()
    changes: list[Change] = []
    for offset, entry in enumerate(entries):
        if type(entry) is not list or len(entry) != 3:
            return ()
        table, key, op = entry
        if type(table) is not str or type(op) is not str or table not in _TABLES:
            return ()  # (a list or an object is not even hashable)
        if not (
            (type(key) is str and op in _KEYED_OPERATIONS) or (key is None and op == "truncate")
        ):
            return ()
        changes.append(Change(first + offset, table, key, op))
    return tuple(changes)


class PostgresListener:
    """``LISTEN`` on the registry channel; call ``on_notify`` with each announcement.

    Owns one asyncpg connection outside the store's pool. ``connected`` is false while the
    connection is down; a background task reconnects every ``retry_interval`` seconds and
    calls ``on_reconnect`` once it is back.
    """

    def __init__(
        self,
        database_url: str,
        *,
        on_notify: Callable[[Announcement | None], None],
        on_reconnect: Callable[[], None],
        connect_timeout: float = 5.0,
        retry_interval: float = 1.0,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._connect_timeout = connect_timeout
        self._retry_interval = retry_interval
        self._connection: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), self._connect_timeout)
            self._connection = None
        self.connected = False

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        connection.add_termination_listener(self._terminated)
        await connection.add_listener(REGISTRY_CHANNEL, self._notified)
        self._connection = connection
        self._lost.clear()
        self.connected = True

    async def _keep_connected(self) -> None:
        while True:
            if self.connected:
                await self._lost.wait()
            await asyncio.sleep(self._retry_interval)
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError, TimeoutError):
                continue
            _log.info("registry_listener_reconnected")
            self._on_reconnect()

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(read_announcement(payload))

    def _terminated(self, connection: Any) -> None:
        if self.connected:
            _log.warning("registry_listener_lost")
        self.connected = False
        self._connection = None
        self._lost.set()
