"""Operations: `ai-usage check` exit codes, the metrics endpoint, and logs without secrets."""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text

from alembic import command
from tests.conftest import (
    AI_USAGE,
    ROOT,
    WorkerProcess,
    alembic_config,
    count_rows,
    wait_for,
    with_database,
)
from worker.dev.embedded import free_port
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer
from worker.ledger.rollups import run_rollup
from worker.logs import JsonFormatter, RedactingFormatter, redact
from worker.settings import normalise_database_url


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AI_USAGE, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_healthy(
    db: Engine, tenant: uuid.UUID, start_worker: Callable[..., WorkerProcess]
) -> None:
    run_rollup(db)
    start_worker()
    wait_for(lambda: cli("check").returncode == 0, 30, what="the worker's heartbeat")
    out = cli("check")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    names = [line.split()[1] for line in lines]
    assert names == [
        "database",
        "migrations",
        "broker",
        "queue",
        "unacked",
        "undecodable",
        "workers",
        "dead_letters",
        "rollup",
        "pricing",
    ]
    assert all(line.startswith(("OK", "WARN")) for line in lines)
    assert "Redis " in lines[2]  # the broker's version, which the worker needs to be >= 6.2


@pytest.mark.parametrize(
    ("version", "too_old"),
    [("6.0.16", True), ("5.0.7", True), ("6.2.0", False), ("7.0.15", False), ("10.1", False)],
)
def test_a_redis_older_than_6_2_is_named(version: str, too_old: bool) -> None:
    from worker.health import redis_version_problem

    problem = redis_version_problem(version)
    assert (problem is not None) == too_old
    if problem:
        assert version in problem and "6.2" in problem


def test_check_reports_warnings_without_failing(
    db: Engine, tenant: uuid.UUID, start_worker: Callable[..., WorkerProcess]
) -> None:
    write_batch(
        db,
        [
            {
                "id": str(uuid.uuid4()),
                "tenant_id": str(uuid.uuid4()),
                "operation": "x",
                "model": "m",
                "input_tokens": 1,
                "output_tokens": 1,
                "created_at": "2025-01-01T00:00:00Z",
            }
        ],
        Pricer(),
    )
    start_worker()
    out = wait_for(lambda: (o := cli("check")).returncode == 0 and o, 30, what="check passes")
    assert "WARN dead_letters   1 dead letters" in out.stdout
    assert "WARN rollup         has never run" in out.stdout


def test_check_fails_when_the_database_is_down() -> None:
    out = cli("check", DATABASE_URL=f"postgresql://postgres:pw-db-123@127.0.0.1:{free_port()}/x")
    assert out.returncode == 1
    assert out.stdout.startswith("FAIL database")
    assert "pw-db-123" not in out.stdout + out.stderr


def test_check_fails_when_the_broker_is_down(db: Engine) -> None:
    out = cli("check", REDIS_URL=f"redis://:pw-redis-456@127.0.0.1:{free_port()}/0")
    assert out.returncode == 1
    assert "FAIL broker" in out.stdout
    assert "pw-redis-456" not in out.stdout + out.stderr


@pytest.fixture
def behind(pg_server: str) -> Iterator[str]:
    name = f"aiu_behind_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        normalise_database_url(with_database(pg_server, "postgres")), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = with_database(pg_server, name)
    command.upgrade(alembic_config(url), "b2c3d4e5f6g7")
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_check_fails_when_migrations_are_behind(behind: str) -> None:
    out = cli("check", DATABASE_URL=behind)
    assert out.returncode == 1
    line = next(x for x in out.stdout.splitlines() if "migrations" in x)
    head = ScriptDirectory.from_config(alembic_config(behind)).get_current_head()
    assert head and head != "b2c3d4e5f6g7"
    assert line.startswith("FAIL") and "b2c3d4e5f6g7" in line and head in line


def test_metrics_endpoint_serves_the_named_metrics(
    db: Engine,
    tenant: uuid.UUID,
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    start_worker(
        {"AI_USAGE_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    )
    from celery import Celery

    producer = Celery("p", broker=redis_url, set_as_current=False)
    events = [
        {
            "id": str(uuid.uuid4()),
            "tenant_id": str(tenant),
            "operation": "op",
            "model": "in-house-llm-v1",
            "input_tokens": 1,
            "output_tokens": 2,
            "created_at": "2025-03-01T00:00:00Z",
        }
        for _ in range(20)
    ]
    producer.send_task("ai_usage.record_batch", args=[events + events[:5]], queue="ai_usage")
    producer.send_task("ai_usage.rollup_monthly", queue="ai_usage")
    wait_for(lambda: count_rows(db) == 20, 60)

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:  # not serving yet: wait_for asks again
            return ""

    expected = (
        'ai_usage_events_total{outcome="inserted"} 20.0',
        'ai_usage_events_total{outcome="received"} 25.0',
        'ai_usage_events_total{outcome="duplicate"} 5.0',
        'ai_usage_events_total{outcome="unpriced"} 20.0',
        'ai_usage_events_total{outcome="dead_lettered"} 0.0',
    )

    def rolled_up(body: str) -> bool:
        # The gauge exists (at 0) from the start: wait for a real success time.
        prefix = "ai_usage_rollup_last_success_timestamp_seconds "
        values = [line[len(prefix) :] for line in body.splitlines() if line.startswith(prefix)]
        return any(float(v) > 0 for v in values)

    # The counters are increased one by one on the writer thread; a scrape can come between.
    body = wait_for(
        lambda: (b := scrape()) and rolled_up(b) and all(line in b for line in expected) and b,
        60,
        what="metrics",
    )
    for name in (
        "ai_usage_batch_size_events_bucket",
        "ai_usage_batch_write_seconds_bucket",
        "ai_usage_rollup_duration_seconds_bucket",
        "ai_usage_rollup_last_success_timestamp_seconds",
    ):
        assert name in body
    producer.close()


def test_redaction() -> None:
    assert redact("postgresql://app:hunter2@db/x") == "postgresql://app:***@db/x"
    assert redact("rediss://:s3cret@cache:6380/0 and redis://u:p@h/1") == (
        "rediss://:***@cache:6380/0 and redis://u:***@h/1"
    )
    assert redact("dsn host=db password=hunter2 user=x") == "dsn host=db password=*** user=x"
    record = logging.makeLogRecord(
        {
            "msg": "connecting to %s",
            "args": ("redis://:topsecret@h/0",),
            "levelno": logging.ERROR,
            "levelname": "ERROR",
        }
    )
    for formatter in (RedactingFormatter("%(message)s"), JsonFormatter()):
        assert "topsecret" not in formatter.format(record)


def test_worker_logs_carry_no_secrets(
    db: Engine,
    tenant: uuid.UUID,
    database_url: str,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # The test server trusts any password, so a URL with one works and must never be printed.
    secret_db = database_url.replace("postgres@", "postgres:Db-S3cret-789@", 1)
    assert "Db-S3cret-789" in secret_db
    worker = start_worker({"DATABASE_URL": secret_db, "AI_USAGE_LOG_FORMAT": "json"})
    producer_redis = redis.Redis.from_url(redis_url)
    from celery import Celery

    producer = Celery("p", broker=redis_url, set_as_current=False)
    producer.send_task(
        "ai_usage.record_batch",
        args=[
            [
                {
                    "id": str(uuid.uuid4()),
                    "tenant_id": str(uuid.uuid4()),
                    "operation": "op",
                    "model": "m",
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "created_at": "2025-03-01T00:00:00Z",
                }
            ]
        ],
        queue="ai_usage",
    )
    wait_for(lambda: count_rows(db, "ai_usage_dead_letters") == 1, 60)
    # The batch line is logged after the commit and the ack: wait for it, not just the row
    # (CI once stopped the worker in between).
    wait_for(lambda: '"batch": {' in worker.log_path.read_text(), 30, what="the batch log line")
    worker.stop()
    log = worker.log_path.read_text()
    assert "dead-lettered" in log and '"batch": {' in log
    assert "Db-S3cret-789" not in log
    producer.close()
    producer_redis.close()
