"""The package as an application adopts it: the built wheel (built from the sdist, so both are
checked) installed in a fresh virtualenv, used from a folder that is not the checkout, with an
application's own settings in the environment. First the client alone, which records into a real
worker; then the `worker` extra: `ai-usage migrate` on an empty database, `ai-usage check`, a
worker, and a sync record() that lands. Deselect with `-m "not wheel"`; it installs from PyPI,
or from pip's cache when it already holds the distributions."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import HEAD, ROOT, WorkerProcess, make_tenant, wait_for
from worker.settings import WORKER_ARGS

pytestmark = [pytest.mark.wheel, pytest.mark.e2e]

#: What a producer must not have to install.
WORKER_ONLY = {"celery", "kombu", "sqlalchemy", "psycopg2", "psycopg2-binary", "alembic",
               "pydantic-settings", "prometheus-client", "billiard", "amqp", "vine"}  # fmt: skip
#: An application's own settings, which the worker's Settings would refuse: the client must
#: not read them.
APP_ENV = {
    "DATABASE_URL": "postgresql+asyncpg://app@192.0.2.1/app",
    "REDIS_URL": "redis://192.0.2.1:1/0",
    "LOG_LEVEL": "CRITICAL",
}
RECORD = """
import json, sys, time
started = time.perf_counter()
from worker.client import UsageClient
took = time.perf_counter() - started
import worker
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"celery", "kombu", "sqlalchemy",
               "pydantic_settings", "psycopg2", "alembic"})
event_id = UsageClient(mode="sync").record(
    tenant_id=sys.argv[1], operation="summarise", model="gpt-4o", provider="openai",
    input_tokens=1200, output_tokens=300)
print(json.dumps({"id": str(event_id), "import_ms": took * 1000, "heavy": heavy,
                  "package": worker.__file__}))
"""


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
    return out  # type: ignore[no-any-return]


class Venv:
    """A virtualenv without pip of its own: the checkout's pip installs into it (`--python`)."""

    def __init__(self, path: Path) -> None:
        run([sys.executable, "-m", "venv", "--without-pip", str(path)])
        self.path = path
        self.python = str(path / "bin" / "python")

    def pip(self, *args: str) -> str:
        return run([sys.executable, "-m", "pip", "--python", self.python, *args]).stdout

    def install(self, requirement: str) -> None:
        self.pip("install", "--disable-pip-version-check", "--quiet", requirement)

    def dists(self) -> set[str]:
        return {d["name"].lower() for d in json.loads(self.pip("list", "--format", "json"))}

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel from the unpacked sdist: both must carry the migrations.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    (found,) = out.glob("*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Venv, set[str]]]:
    """The fresh virtualenv with the client install, and the distributions that install took."""
    env = Venv(tmp_path_factory.mktemp("venv") / "venv")
    env.install(str(wheel))
    yield env, env.dists()


def app_env(**extra: str) -> dict[str, str]:
    """The environment of an application: nothing of this checkout or its virtualenv."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **APP_ENV, **extra}


def record_from(env: Venv, tenant: uuid.UUID, cwd: Path, broker: str) -> dict[str, object]:
    out = run(
        [env.python, "-c", RECORD, str(tenant)], cwd=cwd, env=app_env(AI_USAGE_BROKER_URL=broker)
    )
    result: dict[str, object] = json.loads(out.stdout)
    assert str(result["package"]).startswith(str(env.path)), result  # the wheel, not the checkout
    return result


def priced(engine: Engine, event_id: object) -> bool:
    with engine.connect() as conn:
        cost = conn.execute(
            text("SELECT cost_usd FROM ai_usage_logs WHERE id = :i"), {"i": event_id}
        ).first()
    return cost is not None and cost[0] is not None and cost[0] > 0


def test_client_install_is_light_and_records_into_a_real_worker(
    venv: tuple[Venv, set[str]],
    db: Engine,
    tenant: uuid.UUID,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    env, dists = venv
    assert "ai-usage-worker" in dists and {"redis", "pydantic"} <= dists
    assert dists & WORKER_ONLY == set(), dists
    start_worker()  # the checkout's worker, on this run's database and Redis
    result = record_from(env, tenant, tmp_path, redis_url)
    assert result["heavy"] == []
    wait_for(lambda: priced(db, result["id"]), 60, what="the client's event priced in the ledger")
    print(f"client install: {len(dists)} distributions; import {result['import_ms']:.0f} ms")
    # The CLI comes with the base install: without the worker extra it says what to install.
    out = subprocess.run(
        [env.bin("ai-usage"), "report"], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env=app_env(DATABASE_URL="postgresql://u@127.0.0.1:1/x"), check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("ai-usage: report needs the worker extra (") and line.endswith(
        "is not installed): pip install 'ai-usage-worker[worker]'"
    ), line


def test_worker_extra_migrates_checks_and_runs_outside_the_checkout(
    wheel: Path,
    venv: tuple[Venv, set[str]],
    fresh_database: tuple[str, Engine],
    redis_url: str,
    tmp_path: Path,
) -> None:
    env, _ = venv
    env.install(f"{wheel}[worker]")
    url, engine = fresh_database
    app = tmp_path / "app"  # no alembic.ini, no alembic/ here: what the package ships is used
    app.mkdir()
    worker_env = app_env(DATABASE_URL=url, REDIS_URL=redis_url, AI_USAGE_BATCH_MAX_WAIT_MS="100")

    out = run([env.bin("ai-usage"), "migrate"], cwd=app, env=worker_env)
    assert out.stdout.strip() == (
        f"migrated from no revision of ours to {HEAD}"
        " (AI_USAGE_SCHEMA=standalone, version table alembic_version)"
    )
    tenant = make_tenant(engine, "wheel")
    log = tmp_path / "worker.log"
    with open(log, "wb") as sink:
        worker = subprocess.Popen(
            [env.bin("celery"), "-A", "worker.celery_app", *WORKER_ARGS,
             "--hostname", f"wheel-{secrets.token_hex(3)}@%h"],
            cwd=app, env=worker_env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(
            lambda: b"ready." in log.read_bytes() or worker.poll() is not None,
            90,
            what="the installed worker ready",
        )
        assert worker.poll() is None, log.read_text()
        result = record_from(env, tenant, app, redis_url)
        wait_for(lambda: priced(engine, result["id"]), 60, what="the event priced, by the wheel")
        # With a worker alive, every check passes, against the package's own head.
        out = run([env.bin("ai-usage"), "check"], cwd=app, env=worker_env)
        lines = out.stdout.splitlines()
        assert f"OK   migrations     at head {HEAD} (alembic_version)" in lines
        assert any(x.startswith("OK   workers") for x in lines), out.stdout
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
