"""End to end: real Redis, real PostgreSQL, a real `celery -A worker.celery_app worker` process,
and producers that know nothing of this package but the task names."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, text

from tests.conftest import WorkerProcess, count_rows, landed, wait_for
from tests.factories import event as factory

pytestmark = pytest.mark.e2e


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    """A plain Celery producer, configured as any other service would be."""
    app = Celery("some-other-service", broker=redis_url, set_as_current=False)
    app.conf.task_serializer = "json"
    yield app
    app.close()


event = functools.partial(
    factory, operation="analyze_lead_insights", input_tokens=120, output_tokens=80
)


def send_record(app: Celery, e: dict[str, Any]) -> None:
    app.send_task("ai_usage.record", kwargs=e, queue="ai_usage")


def test_events_sent_by_name_land_exactly_once(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    singles = [event(tenant) for _ in range(50)]
    batch = [event(tenant, success=False) for _ in range(200)]
    for e in singles:
        send_record(producer, e)
    send_record(producer, singles[0])  # sent twice: lands once
    producer.send_task("ai_usage.record_batch", args=[batch], queue="ai_usage")
    producer.send_task("ai_usage.record_batch", args=[batch[:20]], queue="ai_usage")
    ids = [e["id"] for e in singles + batch]
    wait_for(lambda: landed(db, ids).rows == 250, 60, what="250 rows")
    wait_for(lambda: redis.Redis.from_url(producer.conf.broker_url).llen("ai_usage") == 0, 30)
    assert landed(db, ids).counts == (250, 250)
    assert count_rows(db) == 250
    assert count_rows(db, where="success = 'failure'") == 200
    assert count_rows(db, "ai_usage_dead_letters") == 0


def test_a_python_producer_may_send_native_types(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # kombu's JSON carries UUID, datetime and Decimal objects as tagged values and the worker's
    # decoder restores them: a producer need not stringify its own objects.
    start_worker()
    when = dt.datetime(2025, 7, 1, 9, 30, tzinfo=dt.UTC)
    native = event(tenant, id=uuid.uuid4(), tenant_id=tenant, created_at=when)
    native["cost_usd"] = Decimal("0.0123")
    producer.send_task("ai_usage.record_batch", args=[[native]], queue="ai_usage")
    wait_for(lambda: count_rows(db) == 1, 30, what="the native-typed event stored")
    with db.connect() as conn:
        row = conn.execute(text("SELECT id, created_at, cost_usd FROM ai_usage_logs")).one()
    assert tuple(row) == (native["id"], when, 0.0123)
    assert count_rows(db, "ai_usage_dead_letters") == 0


def test_invalid_events_are_dead_lettered_and_neighbours_land(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    good = [event(tenant) for _ in range(30)]
    bad = [
        event(tenant, input_tokens=-1),
        event(tenant, total_tokens=1),
        event(uuid.uuid4()),  # unknown tenant: the database refuses it
        event(tenant, model="x" * 300),
        event(tenant, created_at="2999-01-01T00:00:00Z"),
        event(tenant, colour="red"),
    ]
    producer.send_task(
        "ai_usage.record_batch", args=[good[:15] + bad + good[15:]], queue="ai_usage"
    )
    producer.send_task("ai_usage.record_batch", args=["not a list"], queue="ai_usage")
    wait_for(lambda: count_rows(db, "ai_usage_dead_letters") == 7, 60, what="7 dead letters")
    assert landed(db, [e["id"] for e in good]).counts == (30, 30)
    with db.connect() as conn:
        reasons: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT event_id::text, error FROM ai_usage_dead_letters WHERE event_id IS NOT NULL"
                )
            ).all()
        )
        malformed = conn.execute(
            text("SELECT error FROM ai_usage_dead_letters WHERE event_id IS NULL")
        ).scalar_one()
    assert reasons[bad[0]["id"]].startswith("input_tokens: ")
    assert reasons[bad[1]["id"]].startswith("total_tokens: ")
    assert reasons[bad[2]["id"]].startswith("tenant_id: ")
    assert reasons[bad[3]["id"]].startswith("model: ")
    assert reasons[bad[4]["id"]].startswith("created_at: ")
    assert reasons[bad[5]["id"]].startswith("colour: ")
    assert "record_batch takes one positional list" in malformed
    assert worker.proc is not None and worker.proc.poll() is None


def test_pricing_in_the_worker(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    unknown = event(tenant, model="in-house-llm-v1")
    before = event(
        tenant, model="o3", input_tokens=1000, output_tokens=2000, created_at="2025-06-09T23:59:59Z"
    )
    after = event(
        tenant, model="o3", input_tokens=1000, output_tokens=2000, created_at="2025-06-10T00:00:01Z"
    )
    for e in (unknown, before, after):
        send_record(producer, e)
    wait_for(lambda: count_rows(db) == 3, 60)
    with db.connect() as conn:
        costs: dict[str, Any] = dict(
            conn.execute(text("SELECT id::text, cost_usd FROM ai_usage_logs")).all()
        )
    assert costs[unknown["id"]] is None
    assert costs[before["id"]] == pytest.approx(0.09, abs=1e-12)
    assert costs[after["id"]] == pytest.approx(0.018, abs=1e-12)


def test_kill_9_while_a_batch_is_in_flight(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    short = {"AI_USAGE_VISIBILITY_TIMEOUT": "10"}
    # A batch that waits a minute: every message is held, unacknowledged, when the kill comes.
    worker = start_worker({**short, "AI_USAGE_BATCH_MAX_WAIT_MS": "60000"})
    events = [event(tenant) for _ in range(300)]
    for e in events[:100]:
        send_record(producer, e)
    producer.send_task("ai_usage.record_batch", args=[events[100:]], queue="ai_usage")
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.hlen("unacked") == 101, 30, what="messages held unacked")
    worker.kill()
    assert count_rows(db) == 0
    assert client.hlen("unacked") == 101  # still in Redis: nothing was lost with the process
    start_worker(short)
    ids = [e["id"] for e in events]
    wait_for(lambda: landed(db, ids).rows == 300, 150, interval=0.5, what="redelivery")
    wait_for(lambda: client.hlen("unacked") == 0, 30)
    assert landed(db, ids).counts == (300, 300)
    client.close()


def test_messages_sent_with_a_priority_land(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # kombu keeps prioritised messages in other lists than the queue's own; the worker's wait
    # watches the queue's list only, so these are found by its periodic look at all of them.
    start_worker()
    events = [event(tenant) for _ in range(4)]
    for e, priority in zip(events, (0, 3, 6, 9), strict=True):
        producer.send_task("ai_usage.record", kwargs=e, queue="ai_usage", priority=priority)
    client = redis.Redis.from_url(redis_url)
    ids = [e["id"] for e in events]
    wait_for(lambda: landed(db, ids).rows == 4, 30, what="prioritised events stored")
    wait_for(lambda: client.hlen("unacked") == 0, 30)
    assert landed(db, ids).counts == (4, 4)
    lists = [k for k in client.scan_iter("ai_usage*") if client.type(k) == b"list"]
    assert not [k for k in lists if client.llen(k)]
    client.close()


def test_python_client_to_worker(
    db: Engine,
    tenant: uuid.UUID,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from worker.client import UsageClient

    start_worker()
    background = UsageClient(broker_url=redis_url, batch_size=50, flush_interval_ms=50)
    sync = UsageClient(broker_url=redis_url, mode="sync")
    ids = [
        str(
            background.record(
                tenant_id=tenant,
                operation="op",
                model="gpt-4o",
                input_tokens=i,
                output_tokens=1,
                success=i % 2 == 0,
            )
        )
        for i in range(120)
    ]
    ids.append(
        str(
            sync.record(
                tenant_id=tenant,
                operation="op",
                model="gpt-4o",
                input_tokens=1,
                output_tokens=1,
                id=ids[0],
            )
        )
    )  # a resend
    ids.append(
        str(
            sync.record(
                tenant_id=tenant, operation="sync", model="o3", input_tokens=1, output_tokens=1
            )
        )
    )
    assert background.close(10)
    wait_for(lambda: landed(db, ids).rows == 121, 60)
    assert landed(db, ids).counts == (121, 121)
    assert count_rows(db, where="success = 'failure'") == 60
    assert count_rows(db, where="cost_usd IS NULL") == 0


def test_a_backlog_drains_in_bulk_and_other_tasks_take_their_usual_path(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    events = [event(tenant) for _ in range(3000)]
    for i, e in enumerate(events):
        send_record(producer, e)
        if i == 1500:
            producer.send_task("ai_usage.rollup_monthly", queue="ai_usage")
            producer.send_task("some.unknown_task", queue="ai_usage")
    worker = start_worker()
    ids = [e["id"] for e in events]
    wait_for(lambda: landed(db, ids).rows == 3000, 90, what="backlog drained")
    wait_for(lambda: count_rows(db, "ai_usage_rollup_state") == 1, 30, what="rollup ran")
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.hlen("unacked") == 0 and client.llen("ai_usage") == 0, 30)
    client.close()
    assert landed(db, ids).counts == (3000, 3000)
    worker.stop()
    log = worker.log()
    assert "some.unknown_task" in log  # refused by Celery's usual unknown-task handling
    batches = [line for line in worker.log_path.read_text().splitlines() if "batch written" in line]
    assert len(batches) < 3000 / 100  # many messages per transaction, not one each
