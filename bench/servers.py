"""The servers of a run: embedded PostgreSQL and Redis in a temporary folder (the default), or
given ones, on which a throwaway database and an empty Redis db number are used and removed.
Also the description of the machine that goes into the results."""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis
from sqlalchemy import Engine, create_engine, text

from worker.ledger.db import migrate
from worker.settings import normalise_database_url

ROOT = Path(__file__).resolve().parent.parent
#: Tables emptied between phases, so that every phase starts from the same state.
LOG_TABLES = (
    "ai_usage_logs",
    "ai_usage_rollup_deltas",
    "ai_usage_daily_rollups",
    "ai_usage_monthly_rollups",
)


@dataclass
class Stack:
    """Where a run writes: a migrated database of its own and a Redis db number of its own."""

    database_url: str  # postgresql:// (libpq form, also what the worker gets)
    redis_url: str
    engine: Engine
    embedded: bool

    def pg_connect(self) -> Any:
        """A new autocommit psycopg2 connection to the run's database."""
        conn = psycopg2.connect(self.database_url)
        conn.autocommit = True
        return conn

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def truncate(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(LOG_TABLES)}"))
        self.analyze()

    def analyze(self) -> None:
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE ai_usage_logs")
            )

    def flush_redis(self) -> None:
        client = self.redis()
        client.flushdb()
        client.close()


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def libpq_url(url: str) -> str:
    """postgres://, postgresql:// or postgresql+psycopg2:// as the libpq postgresql:// form."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


@contextmanager
def throwaway_database(server_url: str, layout: str = "plain") -> Iterator[str]:
    """CREATE DATABASE bench_<hex> on the server of `server_url`, migrated; dropped at the end.
    A `layout` other than plain is migrated by the release step itself, `ai-usage migrate` in a
    process of its own with AI_USAGE_LOG_LAYOUT set, as an operator would choose it."""
    name = f"bench_{secrets.token_hex(4)}"
    admin_url = (
        server_url
        if urlsplit(server_url).path.strip("/")
        else with_database(server_url, "postgres")
    )
    admin = create_engine(normalise_database_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = libpq_url(with_database(server_url, name))
        if layout == "plain":
            migrate(url)
        else:
            env = {**os.environ, "DATABASE_URL": url, "AI_USAGE_LOG_LAYOUT": layout}
            subprocess.run([sys.executable, "-m", "worker.cli", "migrate"], env=env, check=True)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def throwaway_redis_db(server_url: str) -> Iterator[str]:
    """An empty Redis db number (claimed with SET NX, as the tests do), flushed at the end."""
    base = urlsplit(server_url)
    for _ in range(60):
        url = urlunsplit(base._replace(path=f"/{secrets.randbelow(15) + 1}"))
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set("aiu-bench-claim", "1", nx=True):
                client.delete("aiu-bench-claim")
                break
        finally:
            client.close()
    else:
        raise RuntimeError("no empty Redis db number (1-15) found on the given Redis")
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@contextmanager
def open_stack(database_url: str | None, redis_url: str | None, workdir: Path) -> Iterator[Stack]:
    """The run's servers; everything created here is removed on exit, error or not."""
    with ExitStack() as stack:
        embedded = database_url is None or redis_url is None
        if database_url is None:
            from worker.dev.embedded import EmbeddedPostgres

            pg = EmbeddedPostgres(workdir / "pg")
            stack.callback(pg.destroy)
            database_url = pg.start().url
        if redis_url is None:
            from worker.dev.embedded import EmbeddedRedis

            rd = EmbeddedRedis(workdir / "redis")
            stack.callback(rd.destroy)
            redis_url = rd.start().url
        db_url = stack.enter_context(throwaway_database(database_url))
        rd_url = stack.enter_context(throwaway_redis_db(redis_url))
        engine = create_engine(normalise_database_url(db_url), pool_size=4)
        stack.callback(engine.dispose)
        yield Stack(db_url, rd_url, engine, embedded)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head or None, "uncommitted_changes": dirty.splitlines()}


def describe_machine(stack: Stack) -> dict[str, Any]:
    """CPU, memory, software versions and the server settings that matter for the figures."""
    import psutil

    with stack.engine.connect() as conn:
        pg = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    client = stack.redis()
    redis_version = str(client.info("server").get("redis_version"))
    client.close()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "postgres": pg,
        "redis": redis_version,
        "servers": "embedded (temporary, started by the harness)" if stack.embedded else "given",
        "packages": {
            d: _version(d) for d in ("celery", "kombu", "redis", "SQLAlchemy", "psycopg2-binary")
        },
        "git": _git(),
    }
