"""Poison messages: one bad message must never stop or lose its neighbours.

Found by the fuzz suite, reduced to deterministic cases:
- an invalid event whose dead letter cannot be stored (its field name is longer than the
  `field` column, or the reason quotes a NUL byte) fails the whole batch transaction with a
  non-transient error; the batcher keeps the batch and retries it forever, so nothing behind
  it is written again (ingestion stops);
- a message in the queue that is not kombu's JSON envelope makes the worker's bulk-receive
  Lua script raise after its RPOP: Redis does not roll a script back, so every message that
  the same RPOP took after the bad one is in neither the queue nor "unacked": lost.
"""

from __future__ import annotations

import random
import time

import pytest
import redis

from tests.faults.support import RECORD, RECORD_BATCH, Stack, good_event, producer_app, send

pytestmark = pytest.mark.faults


def test_undeadletterable_events_do_not_stop_ingestion(stack: Stack, fault_summary) -> None:
    rng = random.Random(10)
    tenant = stack.tenant("poison")
    worker = stack.start_worker()
    app = producer_app(stack.redis_url)
    poison = [
        good_event(tenant, rng, **{"k" * 150: 1}),  # field name longer than VARCHAR(100)
        good_event(tenant, rng, **{"colour\x00": "red"}),  # NUL in the field name
        {**good_event(tenant, rng), "tenant_id": "\x00" * 36},  # the reason quotes the NUL
    ]
    good = [good_event(tenant, rng) for _ in range(300)]
    send(app, RECORD_BATCH, [good[:100] + poison[:1]])
    send(app, RECORD, kwargs=poison[1])
    send(app, RECORD_BATCH, [good[100:200] + poison[2:]])
    send(app, RECORD_BATCH, [good[200:]])
    got = stack.wait_landed([e["id"] for e in good], timeout=60)
    dead = stack.rows("ai_usage_dead_letters")
    fault_summary.add("undead-letterable events", got, sent=303, dead_lettered=dead)
    assert worker.proc is not None and worker.proc.poll() is None
    assert got.lost == 0, (got, worker.log()[-2500:])
    assert dead == len(poison)


def test_a_foreign_message_does_not_lose_its_neighbours(stack: Stack, fault_summary) -> None:
    rng = random.Random(11)
    tenant = stack.tenant("neighbours")
    app = producer_app(stack.redis_url)
    events = [good_event(tenant, rng) for _ in range(100)]
    # Queued before any worker runs: the first message comes by BRPOP, the rest by bulk pop.
    for event in events[:50]:
        send(app, RECORD_BATCH, [[event]])
    broker = redis.Redis.from_url(stack.redis_url)
    broker.lpush("ai_usage", "this is not a kombu message")
    for event in events[50:]:
        send(app, RECORD_BATCH, [[event]])
    worker = stack.start_worker(AI_USAGE_VISIBILITY_TIMEOUT="10")
    got = stack.wait_landed([e["id"] for e in events], timeout=60, settle_s=12)
    fault_summary.add("foreign message amid 100", got, sent=100)
    assert worker.proc is not None and worker.proc.poll() is None
    assert got.lost == 0, (got, stack.broker_backlog(), worker.log()[-2500:])


def test_a_foreign_message_alone_does_not_stop_the_worker(stack: Stack, fault_summary) -> None:
    """An item that is not JSON, taken by kombu's own BRPOP (the worker idle), raises out of
    the event loop: the worker exits ("Unrecoverable error"). It must be set aside instead."""
    rng = random.Random(15)
    tenant = stack.tenant("alone")
    worker = stack.start_worker()
    assert worker.proc is not None
    pid = worker.proc.pid
    redis.Redis.from_url(stack.redis_url).lpush("ai_usage", b"\x80 not json, not utf-8")
    time.sleep(2)
    events = [good_event(tenant, rng) for _ in range(10)]
    send(producer_app(stack.redis_url), RECORD_BATCH, [events])
    got = stack.wait_landed([e["id"] for e in events], timeout=30, settle_s=5)
    fault_summary.add("foreign message, idle worker", got)
    assert worker.proc.poll() is None and worker.proc.pid == pid, worker.log()[-2000:]
    assert got.lost == 0, got
