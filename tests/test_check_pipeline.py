"""`ai-usage check` fails, one clear line each, when the pipeline is stuck: the oldest waiting
message too old, messages unacknowledged past the visibility timeout with nobody restoring
them, items set aside, no worker heartbeat. And the worker exposes the same signals."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import Engine

from tests.conftest import AI_USAGE, ROOT, WorkerProcess, wait_for
from tests.factories import event
from worker.client.envelope import RECORD_BATCH, escape_json, redis_envelope
from worker.consumer.backlog import message_age
from worker.dev.embedded import free_port


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AI_USAGE, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def line(out: subprocess.CompletedProcess[str], name: str) -> str:
    return next(x for x in out.stdout.splitlines() if x.split()[1] == name)


def message(events: list[dict[str, Any]], sent_at: float | None = None) -> str:
    raw = redis_envelope(RECORD_BATCH, escape_json(json.dumps([[events], {}, {}])), len(events))
    if sent_at is None:
        return raw
    envelope = json.loads(raw)
    envelope["headers"]["ai_usage_sent_at"] = sent_at
    return json.dumps(envelope)


def test_a_stuck_message_with_no_worker_fails_check(db: Engine, redis_url: str) -> None:
    """An entry left in `unacked` by a crashed worker, no worker alive: check exits 1, naming
    both (it printed a warning and exited 0 before)."""
    broker: Any = redis.Redis.from_url(redis_url)
    tag = "crashed-worker.1.1"
    broker.hset("unacked", tag, f'[{message([event(uuid.uuid4())])}, "", "ai_usage"]')
    broker.zadd("unacked_index", {tag: time.time() - 3600})
    out = cli("check", AI_USAGE_VISIBILITY_TIMEOUT="300")
    assert out.returncode == 1, out.stdout
    assert line(out, "unacked").startswith("FAIL") and "no worker is restoring" in out.stdout
    assert line(out, "workers").startswith("FAIL")
    broker.close()


def test_an_old_waiting_message_fails_check(db: Engine, redis_url: str) -> None:
    broker: Any = redis.Redis.from_url(redis_url)
    broker.lpush("ai_usage", message([event(uuid.uuid4())], sent_at=time.time() - 900))
    out = cli("check", AI_USAGE_CHECK_QUEUE_AGE_S="600")
    assert out.returncode == 1
    assert line(out, "queue").startswith("FAIL") and "the oldest has waited 9" in out.stdout
    broker.close()


def test_age_of_a_message_from_any_producer() -> None:
    now = time.time()
    assert message_age(message([], sent_at=now - 10).encode(), now) == 10
    # Without the client's header: the first event's created_at (Celery's base64 body too).
    old = event(uuid.uuid4(), created_at="2026-01-01T00:00:00Z")
    plain = json.loads(message([old]))
    del plain["headers"]["ai_usage_sent_at"]
    when = 1767225600.0  # 2026-01-01T00:00:00Z
    assert message_age(json.dumps(plain).encode(), when + 60) == 60
    assert message_age(b"not json", now) is None


def test_set_aside_items_fail_check_until_cleared(db: Engine, redis_url: str) -> None:
    broker: Any = redis.Redis.from_url(redis_url)
    record = {"reason": "not JSON: boom", "queue": "ai_usage", "item": "garbage"}
    broker.lpush("ai_usage.undecodable", json.dumps(record))
    out = cli("check")
    assert out.returncode == 1 and line(out, "undecodable").startswith("FAIL")
    assert "ai-usage undecodable list" in out.stdout
    shown = cli("undecodable", "list")
    assert shown.returncode == 0 and "not JSON: boom" in shown.stdout and "garbage" in shown.stdout
    as_json = json.loads(cli("undecodable", "list", "--format", "json").stdout)
    assert as_json == [record]
    cleared = cli("undecodable", "clear")
    assert cleared.returncode == 0 and "cleared 1 items" in cleared.stdout
    assert broker.llen("ai_usage.undecodable") == 0
    broker.close()


def test_undecodable_with_the_broker_down_is_one_line_exit_3() -> None:
    out = cli("undecodable", "list", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert out.returncode == 3 and len(out.stderr.strip().splitlines()) == 1


def test_a_live_worker_passes_the_workers_check_and_serves_the_gauges(
    db: Engine, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    start_worker({"AI_USAGE_METRICS_PORT": str(port)})
    out = wait_for(lambda: (o := cli("check")) and "1 alive" in o.stdout and o, 30, what="alive")
    assert line(out, "workers").startswith("OK")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    text = wait_for(lambda: "ai_usage_worker_heartbeat_timestamp_seconds" in (t := scrape()) and t,
                    30, what="the gauges")  # fmt: skip
    for name in (
        "ai_usage_queue_depth_messages",
        "ai_usage_unacked_messages",
        "ai_usage_unacked_stale_messages",
        "ai_usage_oldest_message_age_seconds",
        "ai_usage_undecodable_items",
        "ai_usage_worker_held_events",
    ):
        assert name in text, name
