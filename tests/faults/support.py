"""Helpers of the fault suite: throwaway servers, event factories, exact counting by event id."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, text

from alembic import command
from tests.conftest import (
    AI_USAGE,
    CELERY,
    ROOT,
    Landed,
    WorkerProcess,
    alembic_config,
    count_rows,
    cover_test_months,
    landed,
    make_tenant,
    with_database,
)
from worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.settings import QUEUE, normalise_database_url

RECORD = "ai_usage.record"
RECORD_BATCH = "ai_usage.record_batch"
#: Priced by genai-prices' bundled snapshot, so rows get a cost.
MODELS = ("gpt-4o-mini", "claude-3-5-haiku-20241022", "gpt-4o")
#: Variables of the developer's shell that must not leak into a child's settings.
_SCRUB = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "TEST_DATABASE_URL", "TEST_REDIS_URL")


def child_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """An environment for a worker, beat or CLI child, built explicitly (the session fixture of
    tests/conftest.py points os.environ at the shared test database; never inherit that)."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("AI_USAGE_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        AI_USAGE_BATCH_MAX_WAIT_MS="100",
        AI_USAGE_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def good_event(
    tenant_id: uuid.UUID | str, rng: random.Random | None = None, **over: Any
) -> dict[str, Any]:
    """A valid event in its JSON (message) form, with a fresh id."""
    rng = rng or random.Random()
    inp, out = rng.randint(1, 5000), rng.randint(1, 5000)
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "tenant_id": str(tenant_id),
        "operation": rng.choice(("generate_assessment", "analyze_lead_insights", "summarise")),
        "model": rng.choice(MODELS),
        "input_tokens": inp,
        "output_tokens": out,
        "total_tokens": inp + out,
        "duration_ms": rng.randint(5, 9000),
        "success": rng.choice(("success", "success", "failure")),
        "created_at": now_iso(),
    }
    event.update(over)
    return event


def producer_app(broker_url: str) -> Celery:
    """A bare Celery app to publish raw messages (bypassing worker.client)."""
    app = Celery(f"faults-producer-{secrets.token_hex(2)}", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
        broker_transport_options={"socket_connect_timeout": 2, "socket_timeout": 10},
    )
    return app


def send(
    app: Celery, name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
) -> None:
    """Publish one message to the ai_usage queue; returns once Redis holds it (LPUSH done)."""
    app.send_task(
        name, args=list(args), kwargs=kwargs or {}, queue=QUEUE, routing_key=QUEUE, retry=False
    )


@dataclass
class PacedSender:
    """A thread that publishes `batches` (record_batch messages) at `per_second` messages/s."""

    app: Celery
    batches: list[list[dict[str, Any]]]
    per_second: float
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> PacedSender:
        self.thread = threading.Thread(target=self._run, name="paced-sender", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for i, batch in enumerate(self.batches):
                delay = started + i / self.per_second - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                send(self.app, RECORD_BATCH, [batch])
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "sender did not finish"
        assert not self.errors, self.errors


@dataclass
class Stack:
    """A throwaway PostgreSQL and Redis of one test, and the processes started against them."""

    root: Path
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    database_url: str
    engine: Engine
    workers: list[WorkerProcess] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(self.database_url, self.redis_url, **extra)

    def start_worker(
        self, env: dict[str, str] | None = None, timeout: float = 120, **extra: str
    ) -> WorkerProcess:
        wp = WorkerProcess(
            env or self.env(**extra), self.root / f"worker-{len(self.workers)}.log", []
        )
        self.workers.append(wp)
        return wp.start(timeout)

    def popen(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A long-running child (e.g. beat) in its own process group, stopped at teardown."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AI_USAGE, *args], cwd=ROOT, env=env or self.env(), capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip

    def tenant(self, name: str = "tenant") -> uuid.UUID:
        return make_tenant(self.engine, name)

    def landed(self, ids: Iterable[uuid.UUID | str]) -> Landed:
        return landed(self.engine, ids)

    def rows(self, table: str = "ai_usage_logs") -> int:
        return count_rows(self.engine, table)

    def broker_backlog(self) -> tuple[int, int]:
        """(messages waiting in the ai_usage queue, messages delivered but unacknowledged)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.llen(QUEUE)), int(client.hlen("unacked"))
        finally:
            client.close()

    def wait_landed(
        self, ids: Sequence[uuid.UUID | str], timeout: float, settle_s: float = 8.0
    ) -> Landed:
        """Wait until every id is stored, or until nothing can come any more (the queue and
        the unacknowledged set stayed empty for `settle_s`), or `timeout`."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            got = self.landed(ids)
            if got.distinct >= got.sent or time.monotonic() > deadline:
                return got
            try:
                idle = self.broker_backlog() == (0, 0)
            except redis.RedisError:
                idle = False
            if not idle:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > settle_s:
                return self.landed(ids)
            time.sleep(0.5)

    def close(self) -> None:
        for wp in self.workers:
            with contextlib.suppress(ProcessLookupError, OSError):
                wp.stop()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(10)
        self.engine.dispose()
        self.redis.destroy()
        stop_postgres(self.pg)
        self.pg.destroy()


def stop_postgres(pg: EmbeddedPostgres) -> None:
    """Stop a throwaway PostgreSQL for good (EmbeddedPostgres.stop restores the traversal bits
    its folder may have lost since it started)."""
    pg.stop("immediate")


def build_stack(root: Path) -> Stack:
    """Start PostgreSQL and Redis under `root`, create the database and migrate it to head."""
    root.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(root / "pg").start()
    redis = EmbeddedRedis(root / "redis", appendonly=True).start()
    admin = create_engine(normalise_database_url(pg.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "aiu_faults"'))
    admin.dispose()
    url = with_database(pg.url, "aiu_faults")
    command.upgrade(alembic_config(url), "head")
    engine = create_engine(normalise_database_url(url), pool_pre_ping=True)
    cover_test_months(engine)  # the partitioned layout (make test-partitioned): past months
    return Stack(root, pg, redis, url, engine)


def pings(url: str, **options: Any) -> bool:
    """True once a Redis server answers at `url`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, **options)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def celery_cmd(*args: str) -> list[str]:
    return [CELERY, "-A", "worker.celery_app", *args]
