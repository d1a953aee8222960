"""The broker layer under attack and under load, with real workers on throwaway servers:

- a corpus of hostile envelopes (every variant an issue found, plus fuzzed mutations of a valid
  one) pushed between valid events: the worker stays up, every valid event lands, every hostile
  item is set aside or dead-lettered with a reason, and a restart finds nothing to crash on;
- delivery tags a producer repeats (celery-ts stamps "celery") never alias under kill -9;
- a worker holds a bounded number of EVENTS, whatever the message size: with writes blocked,
  two workers hold at most twice the bound and the rest of the backlog stays in Redis;
- SIGTERM writes what a worker holds before it exits; a write stuck past the deadline is
  cancelled and its messages go back to the queue at once.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from sqlalchemy import text

from tests.conftest import wait_for
from tests.faults.support import RECORD_BATCH, Stack, good_event, producer_app, send
from worker.client.envelope import escape_json, redis_envelope

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults

QUEUE = "ai_usage"
ASIDE = "ai_usage.undecodable"


def body_of(events: list[dict[str, Any]]) -> str:
    """A protocol-2 record_batch body, escaped as the inside of a JSON string."""
    return escape_json(json.dumps([[events], {}, {}]))


def envelope(events: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """A valid kombu envelope for a record_batch of `events`, as a dict to break."""
    env: dict[str, Any] = json.loads(redis_envelope(RECORD_BATCH, body_of(events)))
    for path, value in changes.items():
        target = env
        *parents, leaf = path.split("__")
        for name in parents:
            target = target[name]
        if value is KeyError:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return env


def hostile_corpus(tenant: uuid.UUID, rng: random.Random) -> dict[str, tuple[bytes, str]]:
    """name -> (item, nonce). Each item carries its nonce (an event id inside it, and in the
    raw text), so that where it ended can be found: set aside, or dead-lettered."""
    corpus: dict[str, tuple[bytes, str]] = {}

    def add(name: str, build: Any) -> None:
        nonce = str(uuid.uuid4())
        events = [good_event(tenant, rng, id=nonce)]
        item = build(events, nonce)
        corpus[name] = (item if isinstance(item, bytes) else json.dumps(item).encode(), nonce)

    b64 = base64.b64encode
    add(
        "base64 body that is not base64",
        lambda e, n: envelope(e, body="!!" + n + "!!", properties__body_encoding="base64"),
    )
    add(
        "rot13 body encoding",
        lambda e, n: envelope(e, properties__body_encoding="rot13", headers__nonce=n),
    )
    add("numeric body", lambda e, n: envelope(e, body=12345, headers__nonce=n))
    add("headers not an object", lambda e, n: envelope(e, headers="x"))
    add("headers a list", lambda e, n: envelope(e, headers=[n]))
    add("unknown task name", lambda e, n: envelope(e, headers__task="ai_usage.recrod"))
    add("no task header", lambda e, n: envelope(e, headers__task=KeyError))
    add(
        "bad gzip compression",
        lambda e, n: envelope(
            e,
            headers__compression="application/x-gzip",
            headers__nonce=n,
            body=b64(b"not gzip " + n.encode()).decode(),
            properties__body_encoding="base64",
        ),
    )
    add(
        "gzip that holds no JSON",
        lambda e, n: envelope(
            e,
            headers__compression="application/x-gzip",
            headers__nonce=n,
            body=b64(gzip.compress(b"{{ " + n.encode())).decode(),
            properties__body_encoding="base64",
        ),
    )
    add(
        "pickle content type",
        lambda e, n: envelope(e, **{"content-type": "application/x-python-serialize"}),
    )
    add("no content type", lambda e, n: envelope(e, **{"content-type": KeyError}))
    add("not JSON", lambda e, n: f"garbage {n} {{".encode())
    add("not UTF-8", lambda e, n: b"\xff\xfe" + n.encode())
    add("JSON, not an envelope", lambda e, n: {"hello": n})
    add("properties not an object", lambda e, n: envelope(e, properties=n))
    add("no delivery_info", lambda e, n: envelope(e, properties__delivery_info=KeyError))
    add("numeric delivery tag", lambda e, n: envelope(e, properties__delivery_tag=7))
    add("body {}", lambda e, n: envelope(e, body="{}", headers__nonce=n))
    add("body null", lambda e, n: envelope(e, body="null", headers__nonce=n))
    add("body not JSON", lambda e, n: envelope(e, body="{{{ " + n))
    add("args not a list", lambda e, n: envelope(e, body=json.dumps([e[0], {}, {}])))
    add(
        "record with positional event",
        lambda e, n: envelope(e, headers__task="ai_usage.record", body=json.dumps([e, {}, {}])),
    )
    add(
        "hex number (cjson only)",
        lambda e, n: (
            b'{"body": "", "properties": {"delivery_tag": "x", "delivery_info": {}}, "n": 0x1F,'
            b' "nonce": "' + n.encode() + b'"}'
        ),
    )
    add(
        "NaN routing",
        lambda e, n: (
            b'{"body": "", "headers": {"nonce": "' + n.encode() + b'"}, "properties":'
            b' {"delivery_tag": "y", "delivery_info": {"exchange": 1e999, "routing_key": NaN}}}'
        ),
    )
    # Fuzzed: random structural mutations of a valid envelope.
    keys = ["body", "headers", "properties", "content-type", "content-encoding"]
    values: list[Any] = [None, 0, -1, 1e308, "", "x", [], {}, True, [1, 2], {"a": None}]
    for i in range(40):

        def mutate(e: list[dict[str, Any]], n: str, i: int = i) -> dict[str, Any]:
            env = envelope(e)
            env.setdefault("headers", {})["nonce"] = n
            for _ in range(rng.randint(1, 3)):
                where = rng.choice([env, env["properties"], env.get("headers") or env])
                if not isinstance(where, dict):
                    continue
                key = rng.choice(keys + ["delivery_info", "body_encoding", "task", "priority"])
                if rng.random() < 0.3:
                    where.pop(key, None)
                else:
                    where[key] = rng.choice(values)
            env["nonce"] = n  # a top-level copy, kept whatever the mutations did
            return env

        add(f"fuzzed {i}", mutate)
    return corpus


def accounted(stack: Stack, broker: Any, nonces: dict[str, str]) -> dict[str, str]:
    """For each hostile item (by name), where it ended: 'aside' or 'dead letter'; missing
    names were lost."""
    aside_text = [x.decode("utf-8", "replace") for x in broker.lrange(ASIDE, 0, -1)]
    records = [json.loads(x) for x in aside_text]
    assert all(r.get("reason") for r in records), "every set-aside item has a reason"
    blob = "\n".join(
        (r.get("item") or base64.b64decode(r.get("item_base64", "")).decode("utf-8", "replace"))
        for r in records
    )
    with stack.engine.connect() as conn:
        letters = conn.execute(
            text("SELECT coalesce(event_id::text, ''), payload, error FROM ai_usage_dead_letters")
        ).all()
        stored = {
            str(i)
            for i in conn.execute(
                text("SELECT id FROM ai_usage_logs WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": list(nonces.values())},
            ).scalars()
        }
    assert all(error for _, _, error in letters), "every dead letter has a reason"
    dead = "\n".join(f"{eid} {payload}" for eid, payload, _ in letters)
    where = {}
    for name, nonce in nonces.items():
        if nonce in blob:
            where[name] = "aside"
        elif nonce in dead:
            where[name] = "dead letter"
        elif nonce in stored:
            where[name] = "landed"  # a mutation that left a valid message
    return where


def test_hostile_envelopes_never_stop_a_worker_and_nothing_is_lost(
    stack: Stack, fault_summary: Summary
) -> None:
    rng = random.Random(21)
    tenant = stack.tenant("hostile")
    app = producer_app(stack.redis_url)
    broker: Any = redis.Redis.from_url(stack.redis_url)
    corpus = hostile_corpus(tenant, rng)
    good = [good_event(tenant, rng) for _ in range(len(corpus) * 3)]
    env = stack.env(AI_USAGE_VISIBILITY_TIMEOUT="10")
    worker = stack.start_worker(env)
    assert worker.proc is not None
    pid = worker.proc.pid
    items = list(corpus.values())
    for i in range(len(items)):
        for event in good[3 * i : 3 * i + 3]:
            send(app, RECORD_BATCH, [[event]])
        broker.lpush(QUEUE, items[i][0])
    got = stack.wait_landed([e["id"] for e in good], timeout=90)
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="queue and unacked empty")
    nonces = {name: nonce for name, (_, nonce) in corpus.items()}
    try:
        where = wait_for(
            lambda: (w := accounted(stack, broker, nonces)) and len(w) == len(nonces) and w,
            30,
            what="every hostile item accounted for",
        )
    except AssertionError:
        missing = sorted(set(nonces) - set(accounted(stack, broker, nonces)))
        raise AssertionError(f"not accounted for: {missing}\n{worker.log()[-3000:]}") from None
    fault_summary.add(
        f"hostile envelopes ({len(corpus)}: the issue's variants + 40 fuzzed) amid {len(good)}",
        got,
        sent=len(good),
        dead_lettered=sum(v == "dead letter" for v in where.values()),
    )
    assert worker.proc.poll() is None and worker.proc.pid == pid, worker.log()[-3000:]
    assert got.lost == 0 and got.duplicates == 0, got
    # The variants whose events can be read are dead letters, the rest set aside.
    for name in ("headers not an object", "unknown task name", "no task header",
                 "args not a list", "record with positional event"):  # fmt: skip
        assert where[name] == "dead letter", (name, where[name])
    for name in ("base64 body that is not base64", "rot13 body encoding", "numeric body",
                 "bad gzip compression", "pickle content type", "not JSON", "not UTF-8"):  # fmt: skip
        assert where[name] == "aside", (name, where[name])
    # A restart finds nothing to crash on, and keeps landing events.
    worker.stop()
    again = stack.start_worker(env)
    after = good_event(tenant, rng)
    send(app, RECORD_BATCH, [[after]])
    assert stack.wait_landed([after["id"]], timeout=30).lost == 0
    assert again.proc is not None and again.proc.poll() is None
    broker.close()


def lock_writes(stack: Stack) -> Any:
    """A connection holding a lock that makes every write to ai_usage_logs wait."""
    conn = stack.engine.connect()
    conn.execute(text("BEGIN"))
    conn.execute(text("LOCK TABLE ai_usage_logs IN ACCESS EXCLUSIVE MODE"))
    return conn


def unacked_events(broker: Any) -> int:
    """Events in the messages recorded as unacknowledged (by their ai_usage_events header)."""
    total = 0
    for record in broker.hvals("unacked"):
        message = json.loads(record)[0]
        total += int(message["headers"].get("ai_usage_events", 1))
    return total


def test_repeated_producer_tags_never_alias_under_kill_9(
    stack: Stack, fault_summary: Summary
) -> None:
    """celery-ts stamps every message `delivery_tag: "celery"`: the worker's own tags keep
    each held message's recovery entry apart, so a kill -9 loses none."""
    rng = random.Random(22)
    tenant = stack.tenant("tags")
    broker: Any = redis.Redis.from_url(stack.redis_url)
    events = [good_event(tenant, rng) for _ in range(6)]
    env = stack.env(AI_USAGE_VISIBILITY_TIMEOUT="10")
    lock = lock_writes(stack)
    try:
        worker = stack.start_worker(env)
        for event in events:
            item = json.loads(redis_envelope(RECORD_BATCH, body_of([event]), 1))
            item["properties"]["delivery_tag"] = "celery"
            broker.lpush(QUEUE, json.dumps(item))
        wait_for(lambda: broker.hlen("unacked") == len(events), 30, what="all held at once")
        assert b"celery" not in broker.hkeys("unacked")
        worker.kill()
    finally:
        lock.close()
    stack.start_worker(env)
    got = stack.wait_landed([e["id"] for e in events], timeout=60, settle_s=15)
    fault_summary.add("repeated delivery tags, kill -9 while held", got)
    assert got.lost == 0 and got.duplicates == 0, got
    broker.close()


def test_two_workers_hold_at_most_twice_the_bound(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(23)
    tenant = stack.tenant("bounded")
    broker: Any = redis.Redis.from_url(stack.redis_url)
    bound = 2_000
    for _ in range(400):
        events = [good_event(tenant, rng) for _ in range(500)]
        broker.lpush(QUEUE, redis_envelope(RECORD_BATCH, body_of(events), 500))
    lock = lock_writes(stack)
    try:
        env = stack.env(AI_USAGE_PREFETCH_EVENTS=str(bound), AI_USAGE_BATCH_MAX_EVENTS="1000")
        workers = [stack.start_worker(env), stack.start_worker(env)]
        # Let them take all they are allowed to, and more if they would.
        wait_for(lambda: unacked_events(broker) >= bound, 30, what="workers took their room")
        time.sleep(3)
        held, waiting = unacked_events(broker), broker.llen(QUEUE)
        rss = [_rss_mb(w.proc.pid) for w in workers if w.proc is not None]
    finally:
        lock.close()
    fault_summary.add(f"2 workers, writes blocked: held {held} events, {waiting} msgs waiting")
    assert held <= 2 * bound, held
    assert waiting >= 400 - 2 * bound // 500, waiting
    assert all(r < 400 for r in rss), rss
    broker.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_sigterm_writes_what_the_worker_holds(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(24)
    tenant = stack.tenant("drain")
    broker: Any = redis.Redis.from_url(stack.redis_url)
    app = producer_app(stack.redis_url)
    # A batch that would wait a minute before it is written: only the drain writes it.
    worker = stack.start_worker(AI_USAGE_BATCH_MAX_WAIT_MS="60000")
    events = [good_event(tenant, rng) for _ in range(300)]
    for i in range(0, 300, 30):
        send(app, RECORD_BATCH, [events[i : i + 30]])
    wait_for(lambda: broker.hlen("unacked") == 10, 30, what="the batch held")
    assert stack.landed([e["id"] for e in events]).rows == 0
    worker.stop()  # SIGTERM, and wait
    got = stack.landed([e["id"] for e in events])
    fault_summary.add("SIGTERM with a held batch: written before exit", got)
    assert got.lost == 0 and got.duplicates == 0, (got, worker.log()[-2000:])
    assert stack.broker_backlog() == (0, 0)
    broker.close()


def test_sigterm_with_a_stuck_write_hands_messages_back_at_once(stack: Stack) -> None:
    rng = random.Random(25)
    tenant = stack.tenant("stuck")
    broker: Any = redis.Redis.from_url(stack.redis_url)
    app = producer_app(stack.redis_url)
    env = stack.env(AI_USAGE_SHUTDOWN_DRAIN_S="3", AI_USAGE_VISIBILITY_TIMEOUT="600")
    events = [good_event(tenant, rng) for _ in range(200)]
    lock = lock_writes(stack)
    try:
        worker = stack.start_worker(env)
        for i in range(0, 200, 20):
            send(app, RECORD_BATCH, [events[i : i + 20]])
        wait_for(lambda: broker.hlen("unacked") == 10, 30, what="held, the write stuck")
        assert worker.proc is not None
        started = time.monotonic()
        os.killpg(worker.proc.pid, 15)
        worker.proc.wait(60)
        took = time.monotonic() - started
        worker.proc = None
        # Back in the queue now, not after the (10 minute) visibility timeout.
        assert broker.hlen("unacked") == 0 and broker.llen(QUEUE) == 10, took
    finally:
        lock.close()
    stack.start_worker(env)
    got = stack.wait_landed([e["id"] for e in events], timeout=60)
    assert got.lost == 0 and got.duplicates == 0, got
    assert took < 30, took
    broker.close()


def test_redis_restart_while_messages_are_held(stack: Stack, fault_summary: Summary) -> None:
    """The worker holds messages it cannot write yet (writes blocked) when Redis restarts:
    celery/kombu 5.7 closed the broken connection and then restored those messages through
    it (`'NoneType' object has no attribute 'hostname'`, an unrecoverable error). The worker
    must reconnect, keep them, write them once, and lose none."""
    rng = random.Random(26)
    tenant = stack.tenant("held-restart")
    broker: Any = redis.Redis.from_url(stack.redis_url)
    app = producer_app(stack.redis_url)
    events = [good_event(tenant, rng) for _ in range(100)]
    env = stack.env(AI_USAGE_VISIBILITY_TIMEOUT="10")
    lock = lock_writes(stack)
    try:
        worker = stack.start_worker(env)
        assert worker.proc is not None
        pid = worker.proc.pid
        for i in range(0, 100, 10):
            send(app, RECORD_BATCH, [events[i : i + 10]])
        wait_for(lambda: broker.hlen("unacked") == 10, 30, what="all held, writes blocked")
        broker.close()
        stack.redis.stop()  # SIGTERM: the AOF is flushed, 'unacked' survives
        time.sleep(3)
        stack.redis.start()
        time.sleep(5)  # the worker reconnects while its write is still blocked
    finally:
        lock.close()
    got = stack.wait_landed([e["id"] for e in events], timeout=90, settle_s=15)
    log = worker.log_path.read_text(errors="replace")
    fault_summary.add("Redis restart while 10 messages are held (writes blocked)", got)
    assert worker.proc.poll() is None and worker.proc.pid == pid, log[-3000:]
    assert "Unrecoverable error" not in log, log[-3000:]
    assert got.lost == 0 and got.duplicates == 0, got


def test_a_100k_event_message_lands_once_in_several_commits(
    stack: Stack, fault_summary: Summary
) -> None:
    """One record_batch of 100,000 events (a Celery producer's: no size header) was one 18.5 s
    transaction near the visibility timeout; it lands in parts of at most a batch each,
    exactly once, and the message is acknowledged after the last part."""
    rng = random.Random(27)
    tenant = stack.tenant("huge")
    app = producer_app(stack.redis_url)
    events = [good_event(tenant, rng) for _ in range(100_000)]
    worker = stack.start_worker(AI_USAGE_LOG_FORMAT="json")
    send(app, RECORD_BATCH, [events])
    got = stack.wait_landed([e["id"] for e in events], timeout=180)
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="acknowledged")
    lines = [line for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    batches = [b for b in (json.loads(line).get("batch") for line in lines) if b]
    fault_summary.add(f"one 100k-event message: {len(batches)} commits", got)
    assert got.lost == 0 and got.duplicates == 0, got
    assert len(batches) >= 50 and max(b["received"] for b in batches) <= 2_000, batches[:3]
    assert sum(b["messages"] for b in batches) == 1  # acknowledged once, with the last part
