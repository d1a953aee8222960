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

import base64
import json
import random
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests.conftest import wait_for
from tests.faults.support import RECORD, RECORD_BATCH, Stack, good_event, producer_app, send

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults


def aside_records(broker: Any) -> list[dict[str, Any]]:
    """The records of the undecodable list: each the item set aside and its reason."""
    return [json.loads(x) for x in broker.lrange("ai_usage.undecodable", 0, -1)]


def aside_items(broker: Any) -> list[str]:
    records = aside_records(broker)
    assert all(r["reason"] for r in records)
    return [r["item"] for r in records]


def test_undeadletterable_events_do_not_stop_ingestion(
    stack: Stack, fault_summary: Summary
) -> None:
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


def test_a_foreign_message_does_not_lose_its_neighbours(
    stack: Stack, fault_summary: Summary
) -> None:
    rng = random.Random(11)
    tenant = stack.tenant("neighbours")
    app = producer_app(stack.redis_url)
    events = [good_event(tenant, rng) for _ in range(100)]
    # Queued before any worker runs: the first message comes by BRPOP, the rest by bulk pop.
    for event in events[:50]:
        send(app, RECORD_BATCH, [[event]])
    broker: Any = redis.Redis.from_url(stack.redis_url)
    broker.lpush("ai_usage", "this is not a kombu message")
    for event in events[50:]:
        send(app, RECORD_BATCH, [[event]])
    worker = stack.start_worker(AI_USAGE_VISIBILITY_TIMEOUT="10")
    got = stack.wait_landed([e["id"] for e in events], timeout=60, settle_s=12)
    fault_summary.add("foreign message amid 100", got, sent=100)
    assert worker.proc is not None and worker.proc.poll() is None
    assert got.lost == 0, (got, stack.broker_backlog(), worker.log()[-2500:])
    assert aside_items(broker) == ["this is not a kombu message"]
    broker.close()


def test_a_foreign_message_alone_does_not_stop_the_worker(
    stack: Stack, fault_summary: Summary
) -> None:
    """An item that is not JSON reaching an idle worker raised out of its event loop (kombu's
    BRPOP path, before the take script): the worker exited. It must be set aside instead."""
    rng = random.Random(15)
    tenant = stack.tenant("alone")
    worker = stack.start_worker()
    assert worker.proc is not None
    pid = worker.proc.pid
    broker: Any = redis.Redis.from_url(stack.redis_url)
    broker.lpush("ai_usage", b"\x80 not json, not utf-8")
    time.sleep(2)
    events = [good_event(tenant, rng) for _ in range(10)]
    send(producer_app(stack.redis_url), RECORD_BATCH, [events])
    got = stack.wait_landed([e["id"] for e in events], timeout=30, settle_s=5)
    fault_summary.add("foreign message, idle worker", got)
    assert worker.proc.poll() is None and worker.proc.pid == pid, worker.log()[-2000:]
    assert got.lost == 0, got
    (record,) = aside_records(broker)
    assert base64.b64decode(record["item_base64"]) == b"\x80 not json, not utf-8"
    assert record["reason"].startswith("not JSON")
    broker.close()


def _hostile_items() -> dict[str, bytes]:
    from worker.client.envelope import escape_json, redis_envelope

    info = b'"delivery_info": {"exchange": "", "routing_key": "ai_usage"}'
    return {
        # JSON carrying a delivery tag, but not a kombu envelope
        "tag, no envelope": b'{"delivery_tag": "foreign-1", "hello": 1}',
        # an envelope that Redis's cjson reads and Python's json does not (a hex number)
        "hex number": b'{"body": "", "properties": {"delivery_tag": "hex-1", '
        + info
        + b'}, "n": 0x1F}',
        # delivery_info values that cjson decodes but cannot encode again
        "inf / NaN": b'{"body": "", "properties": {"delivery_tag": "inf-1",'
        b' "delivery_info": {"exchange": 1e999, "routing_key": NaN}}}',
        # well-formed envelopes whose JSON body is not a Celery task body, or not JSON
        "body {}": redis_envelope(RECORD_BATCH, escape_json("{}")).encode(),
        "body null": redis_envelope(RECORD_BATCH, escape_json("null")).encode(),
        "body not JSON": redis_envelope(RECORD_BATCH, escape_json("{{{ not json")).encode(),
    }


def test_hostile_queue_items_never_stop_or_block_a_worker(
    stack: Stack, fault_summary: Summary
) -> None:
    """Found in review: the take script recorded any item with a delivery tag as unacked (kombu
    then raised building the message, and again restoring it at every later start), could
    raise after its RPOP on NaN, and a body that is not [args, kwargs, embed] raised out of
    the consumer. Each is set aside (not a message) or dead-lettered (a message)."""
    rng = random.Random(16)
    tenant = stack.tenant("hostile")
    app = producer_app(stack.redis_url)
    broker: Any = redis.Redis.from_url(stack.redis_url)
    events = [good_event(tenant, rng) for _ in range(70)]
    hostile = _hostile_items()
    chunks = [events[i : i + 10] for i in range(0, 70, 10)]
    for chunk, item in zip(chunks, [*hostile.values(), b""], strict=True):
        for event in chunk:
            send(app, RECORD_BATCH, [[event]])
        if item:
            broker.lpush("ai_usage", item)
    env = stack.env(AI_USAGE_VISIBILITY_TIMEOUT="10")
    worker = stack.start_worker(env)
    assert worker.proc is not None
    pid = worker.proc.pid
    got = stack.wait_landed([e["id"] for e in events], timeout=60)
    wait_for(lambda: stack.broker_backlog() == (0, 0), 30, what="queue and unacked empty")
    dead = stack.rows("ai_usage_dead_letters")
    aside = broker.llen("ai_usage.undecodable")
    fault_summary.add("hostile queue items (6) amid 70 events", got, dead_lettered=dead)
    assert worker.proc.poll() is None and worker.proc.pid == pid, worker.log()[-3000:]
    assert got.lost == 0 and got.duplicates == 0, got
    # No item carries an event to dead-letter: each is set aside, untouched, with its reason.
    assert dead == 0
    assert aside == len(hostile)
    # Nothing was left behind to break a later start (kombu restores 'unacked' at start).
    time.sleep(12)
    worker.stop()
    after = good_event(tenant, rng)
    send(app, RECORD_BATCH, [[after]])
    stack.start_worker(env)
    assert stack.wait_landed([after["id"]], timeout=30).lost == 0
    broker.close()


def test_an_unrestorable_unacked_entry_does_not_stop_workers_starting(stack: Stack) -> None:
    """kombu restores expired 'unacked' entries when a worker starts; one that does not decode
    raised there, so every worker start failed. It is set aside instead."""
    rng = random.Random(17)
    tenant = stack.tenant("restore")
    broker: Any = redis.Redis.from_url(stack.redis_url)
    broker.hset("unacked", "bad-1", b'[{"body": 0x1F}, "", "ai_usage"]')
    broker.zadd("unacked_index", {"bad-1": 1.0})  # expired long ago
    event = good_event(tenant, rng)
    send(producer_app(stack.redis_url), RECORD_BATCH, [[event]])
    worker = stack.start_worker(AI_USAGE_VISIBILITY_TIMEOUT="10")
    assert stack.wait_landed([event["id"]], timeout=30).lost == 0
    wait_for(lambda: broker.llen("ai_usage.undecodable") == 1, 30, what="the entry set aside")
    assert broker.hlen("unacked") == 0
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
    broker.close()
