"""The import boundaries between the project's layers, read from the source (no import runs).

Each rule is a layer and the only modules of the project it may import; a new import across a
boundary fails here, naming the module and the import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("dispatcher", "workers_registry")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports (at any depth: inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PROJECT)
    return found


def _modules(package: str) -> list[Path]:
    base = ROOT.joinpath(*package.split("."))
    return (
        [base.with_suffix(".py")]
        if base.with_suffix(".py").exists()
        else sorted(base.rglob("*.py"))
    )


def _allowed(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        pytest.param("dispatcher.asgi", (), id="request plumbing imports nothing of ours"),
        pytest.param("dispatcher.errors", (), id="the error tree imports nothing of ours"),
        pytest.param("dispatcher.memo", (), id="the memo imports nothing of ours"),
        pytest.param(
            "dispatcher.hosts", ("dispatcher.errors", "dispatcher.memo"), id="name validation"
        ),
        pytest.param(
            "dispatcher.h1server",
            ("dispatcher.h1server", "dispatcher.asgi", "dispatcher.errors", "dispatcher.responses"),
            id="the inbound server: plumbing, errors and responses only",
        ),
        pytest.param(
            "workers_registry",
            ("workers_registry", "dispatcher.errors", "dispatcher.hosts"),
            id="the registry: of the dispatcher, errors and name validation only",
        ),
        pytest.param(
            "dispatcher.responses",
            ("dispatcher.asgi", "dispatcher.errors"),
            id="error responses",
        ),
    ],
)
def test_layer_imports_only_what_it_may(layer: str, allowed: tuple[str, ...]) -> None:
    for path in _modules(layer):
        for name in _project_imports(path):
            assert _allowed(name, allowed), f"{_module_name(path)} imports {name}"


def test_asgi_types_are_defined_in_one_module() -> None:
    alias = re.compile(r"^(Scope|Message|Receive|Send|ASGIApp)\s*=", re.MULTILINE)
    defining = [
        _module_name(path)
        for package in PROJECT
        for path in _modules(package)
        if alias.search(path.read_text())
    ]
    assert defining == ["dispatcher.asgi"]


def test_the_server_process_imports_neither_migrations_nor_redis() -> None:
    # `serve --no-migrate` starts by importing what it runs: alembic (and mako, its templates)
    # is needed only when migrations run, the Redis client only with a rate_limit_url, and
    # the two were a third of a second of every start.
    code = "import sys, dispatcher.cli, dispatcher.app; print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    modules = {name.split(".")[0] for name in ast.literal_eval(loaded)}
    assert modules.isdisjoint({"alembic", "mako", "redis"})
