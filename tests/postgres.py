"""pytest plugin: a throwaway Postgres cluster and per-test registry databases.

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["tests.postgres"]``). Fixtures:

- ``postgres_server`` (session): a cluster made with ``initdb`` in a temporary directory and
  run with ``pg_ctl`` on a free 127.0.0.1 port (trust auth, durability off for speed). Its
  ``stop()`` and ``start()`` take the server down and bring it back on the same port and data
  directory, for tests of database outages. Stopped and deleted at the end of the session.
- ``postgres_url`` (function): a fresh, empty database on that cluster; its SQLAlchemy URL.
- ``registry_url`` (function, parametrized ``sqlite`` / ``postgres``): a fresh, empty registry
  database URL on either backend, so one test covers both.
- ``anyio_backend``: ``"asyncio"`` for ``@pytest.mark.anyio`` tests.

Without the Postgres binaries the Postgres tests are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Coroutine, Iterator
from glob import glob
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import pytest

__all__ = ["PostgresServer", "find_postgres_bindir", "run_async", "settle_aiosqlite_threads"]

_T = TypeVar("_T")

# Durability is off for speed, except synchronous_commit: with it off, commits acknowledged in
# the last few hundred milliseconds are lost when ``stop()`` kills the server (-m immediate),
# which would turn outage tests into data-loss tests. With fsync off, a synchronous commit
# costs only a write() to the OS, which survives the kill.
_SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = on
full_page_writes = off
max_connections = 200
log_min_messages = warning
"""


def find_postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, from PATH or a Debian install."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
    for candidate in sorted(glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a private event loop in another thread.

    For sync fixtures: it never touches the event loop of the test that is running.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="postgres-fixture")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


async def settle_aiosqlite_threads(timeout: float = 5.0) -> None:
    """Wait until the worker threads of closed aiosqlite connections have exited.

    When aiosqlite fails to open a database it stops its worker thread without waiting for
    it; if the test's event loop closes first, the thread's last callback raises "Event loop
    is closed" (an unhandled thread exception, an error under ``filterwarnings = error``).
    Call this at the end of a test that made SQLite connections fail to open.
    """
    workers = [
        thread
        for thread in threading.enumerate()
        if thread.name.endswith("(_connection_worker_thread)")
    ]

    def join() -> None:
        for thread in workers:
            thread.join(timeout)

    await asyncio.to_thread(join)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """A throwaway Postgres cluster owned by the test session."""

    host = "127.0.0.1"

    def __init__(self, bindir: Path, basedir: Path) -> None:
        self.bindir = bindir
        self.basedir = basedir
        self.datadir = basedir / "data"
        self.socket_dir = basedir / "sockets"
        self.logfile = basedir / "postgres.log"
        self.port = _free_port()
        # initdb refuses to run as root: run the binaries as the postgres user then.
        self._as_postgres = os.geteuid() == 0
        self.running = False

    def init(self) -> None:
        self.socket_dir.mkdir()
        if self._as_postgres:
            shutil.chown(self.basedir, user="postgres", group="postgres")
            shutil.chown(self.socket_dir, user="postgres", group="postgres")
        self._run(
            "initdb",
            "--pgdata",
            str(self.datadir),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        settings = _SERVER_SETTINGS.format(port=self.port, socket_dir=self.socket_dir)
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(settings)

    def start(self) -> None:
        """Start the server (same port, same data) and wait until it accepts connections."""
        self._run(
            "pg_ctl", "--pgdata", str(self.datadir), "--log", str(self.logfile), "-w",
            "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``): clients see their connections drop."""
        self._run("pg_ctl", "--pgdata", str(self.datadir), "-m", "immediate", "-w", "stop")
        self.running = False

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL of database ``dbname``."""
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """The libpq/asyncpg DSN of database ``dbname``."""
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """Create a fresh database with a unique name and return the name."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        run_async(self._execute(f'CREATE DATABASE "{name}"'))
        return name

    def drop_database(self, name: str) -> None:
        run_async(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _execute(self, sql: str) -> None:
        connection = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}"
            )


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Postgres is required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_postgres_bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not found (PATH, /usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root and runuser is missing (initdb refuses root)")
    basedir = Path(tempfile.mkdtemp(prefix="dispatcher-pg-"))
    server = PostgresServer(bindir, basedir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running:
            server.stop()
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's cluster (dropped afterwards)."""
    if not postgres_server.running:
        postgres_server.start()  # a previous test left it stopped
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database on each backend (no migrations applied)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
