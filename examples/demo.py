"""``make run``: the dispatcher on SQLite with the demo tenant registered as worker ``hello``.

Starts ``examples.hello`` on 127.0.0.1:8081 (``DEMO_TENANT_PORT``), registers it as worker
``hello`` (or points the existing worker at it), then runs ``dispatcher serve`` in the
foreground. Try ``curl http://hello.localhost:8080/``. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import subprocess
import sys

from dispatcher.cli import main as dispatcher


def run() -> int:
    port = os.environ.get("DEMO_TENANT_PORT", "8081")
    upstream = f"http://127.0.0.1:{port}"
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
        dispatcher(["workers", "remove", "hello"]) if _exists("hello") else None
        if dispatcher(["workers", "add", "hello", "--upstream", upstream]) != 0:
            return 1
        print(f"demo tenant on {upstream}; try: curl http://hello.localhost:8080/", flush=True)
        return dispatcher(["serve"])
    finally:
        tenant.terminate()
        tenant.wait(timeout=10)


def _exists(name: str) -> bool:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return dispatcher(["workers", "show", name]) == 0


if __name__ == "__main__":
    sys.exit(run())
