"""`ai-usage run` (behind `make run`): the whole pipeline on one machine, as a demo.

Starts embedded PostgreSQL and Redis under `./.run/` (or AI_USAGE_RUN_DIR) unless DATABASE_URL /
REDIS_URL are set, applies the migrations, runs a worker and a beat, feeds demo traffic for
several tenants through the real client, and prints what landed and the monthly report. Then it
stays up until Ctrl-C (or exits at once with --once), stopping every process it started.

It adds demo tenants and permanent demo events, so a server named by DATABASE_URL / REDIS_URL
must be empty (`refusal()`), unless the CLI's --demo-into-existing says otherwise.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType

from sqlalchemy import NullPool, create_engine, text

from worker.ledger.db import migrate
from worker.settings import WORKER_ARGS, normalise_database_url, redact_url

DEMO_TENANTS = ("Acme Corp", "Globex", "Initech", "Umbrella")
DEMO_MODELS = (
    ("claude-3-5-sonnet-20241022", "anthropic"),
    ("claude-3-5-haiku-20241022", "anthropic"),
    ("gpt-4o", "openai"),
    ("o3", "openai"),
    ("in-house-llm-v1", None),  # the last has no price
)
DEMO_OPERATIONS = ("generate_assessment", "analyze_lead_insights", "summarise_lead")


def _say(msg: str) -> None:
    print(f"[ai-usage run] {msg}", flush=True)


def refusal() -> str | None:
    """Why the demo must not use the servers DATABASE_URL / REDIS_URL (CELERY_BROKER_URL) name:
    a database with any table, a Redis db with any key. None when they are unset or empty."""
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")
    if database_url:
        engine = create_engine(normalise_database_url(database_url), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                tables = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_tables"
                        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                    )
                ).scalar_one()
        finally:
            engine.dispose()
        if tables:
            return (
                f"the database at DATABASE_URL {redact_url(database_url)} has {_n(tables, 'table')}"
            )
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
        try:
            keys = int(client.dbsize())
        finally:
            client.close()
        if keys:
            return f"the Redis db at {redact_url(redis_url)} holds {_n(keys, 'key')}"
    return None


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _demo(database_url: str, broker_url: str, events: int) -> None:
    from worker.client import UsageClient
    from worker.ledger.report import load_report, render
    from worker.ledger.rollups import month_start, run_rollup

    engine = create_engine(normalise_database_url(database_url))
    with engine.begin() as conn:
        tenants = []
        for name in DEMO_TENANTS:
            tid = conn.execute(text("SELECT id FROM tenants WHERE name = :n"), {"n": name}).scalar()
            if tid is None:
                tid = conn.execute(
                    text("INSERT INTO tenants (name) VALUES (:n) RETURNING id"), {"n": name}
                ).scalar_one()
            tenants.append(tid)
    rng = random.Random(42)
    client = UsageClient(broker_url)  # background mode
    ids: list[uuid.UUID] = []
    started = time.perf_counter()
    for _ in range(events):
        model, provider = rng.choice(DEMO_MODELS)
        ids.append(
            client.record(
                tenant_id=rng.choice(tenants),
                operation=rng.choice(DEMO_OPERATIONS),
                model=model,
                provider=provider,
                input_tokens=rng.randint(200, 4000),
                output_tokens=rng.randint(50, 2000),
                duration_ms=rng.randint(300, 9000),
                success=rng.random() > 0.05,
            )
        )
    record_us = (time.perf_counter() - started) / max(events, 1) * 1e6
    client.close(30)
    _say(f"recorded {events} events through the client ({record_us:.1f} us per record())")
    deadline = time.monotonic() + 120
    landed = 0
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            landed = conn.execute(
                text("SELECT count(*) FROM ai_usage_logs WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": [str(i) for i in ids]},
            ).scalar_one()
        if landed == len(ids):
            break
        time.sleep(0.2)
    _say(f"{landed} of {len(ids)} events landed in ai_usage_logs")
    with engine.connect() as conn:
        for name, rows, cost in conn.execute(
            text(
                "SELECT t.name, count(*), sum(l.cost_usd) FROM ai_usage_logs l"
                " JOIN tenants t ON t.id = l.tenant_id WHERE l.id = ANY(CAST(:ids AS uuid[]))"
                " GROUP BY t.name ORDER BY 3 DESC NULLS LAST"
            ),
            {"ids": [str(i) for i in ids]},
        ):
            _say(f"  {name:<10} {rows:>6} rows  ${cost or 0:,.4f}")
    run_rollup(engine, wait=True)
    print(render(load_report(engine, month_start(dt.datetime.now(dt.UTC))), "table"), flush=True)
    engine.dispose()
    if landed != len(ids):
        raise SystemExit(f"only {landed} of {len(ids)} demo events landed")


def run(once: bool, events: int, root: Path) -> int:
    """Bring the stack up, the processes working in `root` (the state in `root/.run` unless
    AI_USAGE_RUN_DIR); see the module docstring."""
    state = Path(os.environ.get("AI_USAGE_RUN_DIR") or root / ".run")
    state.mkdir(parents=True, exist_ok=True)
    servers: list[object] = []
    children: list[subprocess.Popen[bytes]] = []
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")

    def shutdown() -> None:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
        for server in reversed(servers):
            server.stop()  # type: ignore[attr-defined]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        from worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis

        if not database_url:
            pg = EmbeddedPostgres(state / "postgres").start()
            servers.append(pg)
            database_url = pg.url
            _say(f"embedded PostgreSQL on {pg.url} (data in {state / 'postgres'})")
        else:
            _say(f"using DATABASE_URL {redact_url(database_url)}")
        if not redis_url:
            rd = EmbeddedRedis(state / "redis", appendonly=True).start()
            servers.append(rd)
            redis_url = rd.url
            _say(f"embedded Redis on {rd.url} (AOF in {state / 'redis'})")
        else:
            _say(f"using broker {redact_url(redis_url)}")
        os.environ["DATABASE_URL"] = database_url
        os.environ["REDIS_URL"] = redis_url
        os.environ.pop("CELERY_BROKER_URL", None)
        from worker.settings import get_settings

        get_settings.cache_clear()
        done = migrate(database_url)
        _say(f"migrations at {', '.join(done.after)} ({done.version_table})")
        env = {**os.environ}
        ready_from = (state / "worker.log").stat().st_size if (state / "worker.log").exists() else 0
        celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
        for name, args in (
            ("worker", list(WORKER_ARGS)),
            (
                "beat",
                ["beat", "--loglevel", "INFO", "--schedule", str(state / "celerybeat-schedule")],
            ),
        ):
            log = open(state / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            children.append(
                subprocess.Popen(
                    celery + args,
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            _say(f"{name} started (pid {children[-1].pid}, log {state / f'{name}.log'})")
        _wait_ready(state / "worker.log", children[0], ready_from)
        _demo(database_url, redis_url, events)
        if once:
            return 0
        _say("pipeline running; Ctrl-C stops it")
        while all(c.poll() is None for c in children):
            time.sleep(1)
        _say(f"a process exited unexpectedly; see {state}/*.log")
        return 1
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    finally:
        shutdown()
        _say("stopped; nothing left running")


def _wait_ready(log: Path, child: subprocess.Popen[bytes], start: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"the worker exited; see {log}")
        if log.exists() and b"ready." in log.read_bytes()[start:]:
            return
        time.sleep(0.2)
    raise SystemExit(f"the worker did not become ready in {timeout:.0f}s; see {log}")
