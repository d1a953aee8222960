"""Test infrastructure: real PostgreSQL and Redis, one throwaway database and Redis db number per
run, dropped at the end. TEST_DATABASE_URL / TEST_REDIS_URL name servers to use; without them,
embedded servers are started under a temporary folder."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text

from alembic import command
from worker import settings as settings_mod
from worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.ledger import db as db_mod
from worker.ledger.db import dispose_engine
from worker.settings import WORKER_ARGS

ROOT = Path(__file__).resolve().parent.parent
#: The newest revision of the chain (a new revision moves it: the schema tests then follow).
HEAD = "c9d0e1f2a3b4"
#: `make test-partitioned`: every database the fixtures migrate gets the partitioned layout
#: of ai_usage_logs (the migration reads AI_USAGE_LOG_LAYOUT), with the months tests use.
PARTITIONED = os.environ.get("AI_USAGE_LOG_LAYOUT") == "partitioned"
VENV_BIN = Path(sys.executable).parent
CELERY = str(VENV_BIN / "celery")
AI_USAGE = str(VENV_BIN / "ai-usage")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def alembic_config(url: str) -> Config:
    cfg: Config = db_mod.alembic_config(url)
    return cfg


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aiu-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(tmp_root: Path) -> Iterator[str]:
    """URL of a PostgreSQL server (any database on it); embedded unless TEST_DATABASE_URL."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_root / "pg").start()
    yield server.url
    server.destroy()


@pytest.fixture(scope="session")
def redis_server(tmp_root: Path) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_root / "redis").start()
    yield server.url
    server.destroy()


@contextlib.contextmanager
def new_database(pg_server: str, prefix: str) -> Iterator[str]:
    """A database of its own on `pg_server` (its URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(
        settings_mod.normalise_database_url(with_database(pg_server, "postgres")),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(pg_server, name)
    finally:
        dispose_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


#: The months whose partitions the fixtures keep in the partitioned layout, from the current
#: one: tests write events years back (fixed dates of 2025, prunes of 13 months and more); none
#: ahead but the next (an event may not be more than 5 minutes in the future). Each partition
#: costs every test's TRUNCATE a little.
TEST_MONTHS = range(-30, 2)


def cover_test_months(engine: Engine) -> None:
    """In the partitioned layout, make whatever partitions of TEST_MONTHS are missing (a
    prune test drops old ones); nothing in the plain layout."""
    if not PARTITIONED:
        return
    import datetime as dt

    from worker.ledger.months import add_months, month_start
    from worker.ledger.partitions import ensure_months

    current = month_start(dt.datetime.now(dt.UTC))
    ensure_months(engine, [add_months(current, n) for n in TEST_MONTHS])


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    """A database of its own for this run, migrated to head, dropped at the end."""
    with new_database(pg_server, "aiu_test") as url:
        command.upgrade(alembic_config(url), "head")
        if PARTITIONED:
            engine = create_engine(settings_mod.normalise_database_url(url))
            cover_test_months(engine)
            engine.dispose()
        yield url


@pytest.fixture
def scratch(pg_server: str) -> Iterator[tuple[str, Engine]]:
    """An empty database of its own, not migrated (migration tests move it up and down), and
    an engine on it; dropped afterwards."""
    with new_database(pg_server, "aiu_scratch") as url:
        engine = create_engine(settings_mod.normalise_database_url(url))
        try:
            yield url, engine
        finally:
            engine.dispose()


@pytest.fixture
def fresh_database(pg_server: str) -> Iterator[tuple[str, Engine]]:
    """An empty database of its own (no tables), and an engine on it; dropped afterwards."""
    with new_database(pg_server, "aiu_fresh") as url:
        engine = create_engine(settings_mod.normalise_database_url(url))
        yield url, engine
        engine.dispose()


@pytest.fixture(scope="session")
def redis_url(redis_server: str) -> Iterator[str]:
    """A Redis db number of its own (empty at the start), flushed at the end."""
    base = urlsplit(redis_server)
    # The claim is a key in db 0, which no run uses for its data: a marker inside the chosen db
    # would be wiped by the first test's FLUSHDB, and a second run started meanwhile (two
    # checkouts on one machine) could then take the same db and flush the first run's keys.
    # It expires, so a run killed before its teardown frees its db within two hours.
    registry = redis.Redis.from_url(urlunsplit(base._replace(path="/0")))
    chosen, claim = None, ""
    for _ in range(50):
        n = secrets.randbelow(15) + 1
        url = urlunsplit(base._replace(path=f"/{n}"))
        claim = f"aiu-test-claim:{n}"
        client = redis.Redis.from_url(url)
        empty = client.dbsize() == 0
        client.close()
        if empty and registry.set(claim, os.getpid(), nx=True, ex=7200):
            chosen = url
            break
    assert chosen, "no empty, unclaimed Redis db number found"
    yield chosen
    client = redis.Redis.from_url(chosen)
    client.flushdb()
    client.close()
    registry.delete(claim)
    registry.close()


@pytest.fixture(scope="session", autouse=True)
def _environment(database_url: str, redis_url: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ.pop("CELERY_BROKER_URL", None)
    settings_mod.get_settings.cache_clear()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    settings_mod.get_settings.cache_clear()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(settings_mod.normalise_database_url(database_url))
    yield eng
    eng.dispose()


TABLES = (
    "ai_usage_logs",
    "ai_usage_dead_letters",
    "ai_usage_monthly_rollups",
    "ai_usage_rollup_deltas",
    "ai_usage_daily_rollups",
    "ai_usage_user_daily_rollups",
    "ai_usage_closed_months",
    "ai_usage_rollup_state",
    "leads",
    "assessments",
    "users",
    "tenants",
)


@pytest.fixture
def db(engine: Engine, redis_url: str) -> Iterator[Engine]:
    """The test database, emptied before the test (and the Redis db with it)."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    cover_test_months(engine)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    yield engine


def make_tenant(engine: Engine, name: str = "tenant") -> uuid.UUID:
    with engine.begin() as conn:
        return uuid.UUID(
            str(
                conn.execute(
                    text("INSERT INTO tenants (name) VALUES (:n) RETURNING id"), {"n": name}
                ).scalar_one()
            )
        )


@pytest.fixture
def tenant(db: Engine) -> uuid.UUID:
    return make_tenant(db)


def count_rows(engine: Engine, table: str = "ai_usage_logs", where: str = "true") -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one())


@dataclass
class Landed:
    """What became of a set of sent event ids in ai_usage_logs."""

    sent: int
    rows: int
    distinct: int
    table_rows: int

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct

    @property
    def lost(self) -> int:
        return self.sent - self.distinct

    @property
    def counts(self) -> tuple[int, int]:
        """(rows, distinct ids)."""
        return self.rows, self.distinct


def landed(engine: Engine, ids: Iterable[uuid.UUID | str]) -> Landed:
    """Count the rows of `ids` (count and count(distinct id)) and the whole table."""
    id_list = sorted({str(i) for i in ids})
    with engine.connect() as conn:
        rows, distinct = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT id) FROM ai_usage_logs"
                " WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": id_list},
        ).one()
        total = conn.execute(text("SELECT count(*) FROM ai_usage_logs")).scalar_one()
    return Landed(len(id_list), int(rows), int(distinct), int(total))


@dataclass
class WorkerProcess:
    """A real `celery -A worker.celery_app worker` subprocess."""

    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                CELERY,
                "-A",
                "worker.celery_app",
                *WORKER_ARGS,
                "--hostname",
                f"test-{secrets.token_hex(3)}@%h",
                *self.args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = self.proc
        wait_for(
            lambda: b"ready." in self.log_path.read_bytes()[offset:] or proc.poll() is not None,
            timeout,
            what="worker ready",
        )
        assert self.proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children)."""
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), SIGKILL after 30 s."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker subprocesses (stopped at teardown); `env` adds or overrides variables."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str] | None = None, args: list[str] | None = None) -> WorkerProcess:
        full = {**os.environ, "AI_USAGE_BATCH_MAX_WAIT_MS": "100", **(env or {})}
        wp = WorkerProcess(full, tmp_path / f"worker-{len(started)}.log", args or [])
        started.append(wp)
        return wp.start()

    yield start
    for wp in started:
        wp.stop()
