"""`make run`: the pipeline comes up on embedded servers, and Ctrl-C leaves nothing behind; it is a
demo, so servers named by DATABASE_URL / REDIS_URL that hold data are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import Engine, text

from tests.conftest import AI_USAGE, ROOT, wait_for


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_run_comes_up_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env["AI_USAGE_RUN_DIR"] = str(tmp_path / "run")
    out = open(tmp_path / "out.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [AI_USAGE, "run", "--events", "200"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        # Ctrl-C's SIGINT at its default in the child: a suite started in the background (`&`
        # in a non-interactive shell) runs with SIGINT ignored, children inherit that, and
        # Python turns SIGINT into KeyboardInterrupt only if it was not ignored at start.
        preexec_fn=_sigint_default,
    )
    try:
        wait_for(
            lambda: (
                b"pipeline running" in (tmp_path / "out.log").read_bytes()
                or proc.poll() is not None
            ),
            240,
            interval=0.5,
            what="pipeline running",
        )
        text = (tmp_path / "out.log").read_text()
        assert "200 of 200 events landed" in text, text
        assert "AI usage for" in text
        descendants = psutil.Process(proc.pid).children(recursive=True)
        postmaster = int((tmp_path / "run" / "postgres" / "postmaster.pid").read_text().split()[0])
        assert len(descendants) >= 3  # redis, worker (and its pool), beat
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    assert "nothing left running" in (tmp_path / "out.log").read_text()
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == "zombie"


def run_demo(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [AI_USAGE, "run", "--once", "--events", "10", *args],
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_refuses_a_database_that_holds_tenants(fresh_database: tuple[str, Engine]) -> None:
    url, engine = fresh_database
    with engine.begin() as conn:  # an application's own database, as the issue found it
        conn.execute(text("CREATE TABLE tenants (id uuid PRIMARY KEY, name text)"))
        conn.execute(text("INSERT INTO tenants VALUES (gen_random_uuid(), 'Acme Corp')"))
    out = run_demo(DATABASE_URL=url)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"ai-usage: run is a demo: the database at DATABASE_URL {url} has 1 table;"
        " pass --demo-into-existing to go ahead"
    ]
    with engine.connect() as conn:
        names = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        assert names.scalars().all() == ["tenants"]
        assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["Acme Corp"]


def test_run_refuses_a_redis_db_that_holds_keys(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("some-app-key", "1")
    try:
        out = run_demo(REDIS_URL=redis_url)
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.strip() == (
            f"ai-usage: run is a demo: the Redis db at {redis_url} holds 1 key;"
            " pass --demo-into-existing to go ahead"
        )
        assert client.keys("*") == [b"some-app-key"]
    finally:
        client.delete("some-app-key")
        client.close()


@pytest.mark.parametrize("command", [["run", "--help"], ["--help"]], ids=" ".join)
def test_run_says_it_is_a_demo(command: list[str]) -> None:
    out = subprocess.run([AI_USAGE, *command], capture_output=True, text=True, check=True)
    assert "a demo: the whole pipeline on embedded servers" in out.stdout.lower()
