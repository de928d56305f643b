"""``make run``: the dispatcher on SQLite with the demo tenant registered as worker ``hello``.

Starts ``examples.hello`` on 127.0.0.1:8081 (``DEMO_TENANT_PORT``), registers it as worker
``hello`` (or points the existing worker at it), then runs ``dispatcher serve`` in the
foreground. Try ``curl http://hello.localhost:8080/``. Ctrl-C stops both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from dispatcher.cli import main as dispatcher
from dispatcher.settings import load_settings
from workers_registry.migrate import upgrade
from workers_registry.models import WorkerCreate, WorkerSpec
from workers_registry.store import RegistryStore


async def register(database_url: str, upstream: str) -> None:
    """Register worker ``hello`` -> ``upstream``, replacing an earlier registration."""
    await upgrade(database_url)
    async with RegistryStore.from_url(database_url) as store:
        if await store.get_worker("hello") is None:
            await store.add_worker(WorkerCreate(name="hello", upstreams=[upstream]))
        else:
            await store.replace_worker("hello", WorkerSpec(upstreams=[upstream]))


def run() -> int:
    port = os.environ.get("DEMO_TENANT_PORT", "8081")
    upstream = f"http://127.0.0.1:{port}"
    settings = load_settings()
    asyncio.run(register(settings.async_database_url, upstream))
    tenant = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.hello:app",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--log-level",
            "warning",
        ]
    )
    try:
        print(f"demo tenant on {upstream}; try: curl http://hello.localhost:8080/", flush=True)
        return dispatcher(["serve"])
    finally:
        tenant.terminate()
        tenant.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(run())
