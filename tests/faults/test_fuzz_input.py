"""Fault 5: 10,000 bad payloads (Hypothesis, one strategy per kind of badness) mixed into good
traffic and sent straight to the queue, bypassing the client: as `ai_usage.record` kwargs and
inside `ai_usage.record_batch` lists. Every good event lands once; every bad one is
dead-lettered once, naming its field; the worker never stops. The client refuses the same bad
values at the call site, naming the field."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from celery import Celery
from sqlalchemy import text

from tests.faults.badinput import KNOWN, RESERVED, STRATEGIES, draw_many
from tests.faults.support import RECORD, RECORD_BATCH, Stack, good_event, producer_app, send
from worker.client import UsageClient
from worker.client.errors import InvalidEvent
from worker.client.events import parse_event

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults

BAD_TOTAL = 10_000
GOOD = 10_000
#: Events per kind (the rest of BAD_TOTAL is "wrong type").
PER_KIND = {
    "missing field": 700,
    "NUL byte": 800,
    "lone surrogate": 800,
    "negative": 1_000,
    "total below sum": 800,
    "future timestamp": 800,
    "unknown field": 1_000,
}
UNKNOWN_TENANT = 300
NOT_AN_OBJECT = 80
MALFORMED_MESSAGES = 17
HUGE = 3  # 10 MB strings: slow, so only a few


def normalised(field: str | None) -> str | None:
    """The top-level field a validation error is about (`cost_usd.float` -> `cost_usd`)."""
    if field is None:
        return None
    head = field.split(".", 1)[0]
    return head if head in KNOWN else field


def label(field: str | None) -> str | None:
    """What a dead letter's field is compared by: unknown field names (stored escaped and
    truncated to the column, when they hold NUL bytes, lone surrogates or 100+ characters) as
    one class."""
    field = normalised(field)
    return field if field in RESERVED or field is None else "<unknown field>"


def names(exc: InvalidEvent, field: str) -> bool:
    """Whether a rejection names `field` (a name that is not valid Unicode, escaped)."""
    return normalised(exc.field) == field or (field not in KNOWN and ascii(field)[1:-1] in str(exc))


def build_payloads(
    tenant: uuid.UUID, rng: random.Random
) -> tuple[list[Any], list[Any], Counter[str | None], list[Any]]:
    """(good events, bad payloads with their expected field, expected fields, oracle misses)."""
    bad: list[tuple[Any, str | None]] = []
    kinds = dict(PER_KIND)
    kinds["wrong type"] = BAD_TOTAL - sum(PER_KIND.values())
    kinds["wrong type"] -= UNKNOWN_TENANT + NOT_AN_OBJECT + MALFORMED_MESSAGES + HUGE
    misses: list[str] = []
    n = 0
    for kind, how_many in kinds.items():
        for case in draw_many(STRATEGIES[kind], how_many, generate=min(how_many, 1_500)):
            n += 1
            event = good_event(tenant, rng, operation=f"fuzz-{n}")
            case.apply(event)
            try:
                parse_event(event)
                misses.append(f"{kind}/{case.field}: accepted")
            except InvalidEvent as exc:
                if not names(exc, case.field):
                    misses.append(f"{kind}/{case.field!r}: named {exc.field!r}")
            bad.append((event, case.field))
    for _ in range(UNKNOWN_TENANT):  # valid, but the database refuses the tenant
        bad.append((good_event(uuid.uuid4(), rng), "tenant_id"))
    for i in range(NOT_AN_OBJECT):  # batch elements that are not JSON objects
        bad.append(([f"not-an-event-{i}", i, [i], i + 0.5][i % 4], None))
    for i in range(HUGE):
        field = ("operation", "model", "provider")[i]
        bad.append((good_event(tenant, rng, **{field: f"{i}" + "x" * 10_000_000}), field))
    good = [good_event(tenant, rng) for _ in range(GOOD)]
    rng.shuffle(bad)
    expected = Counter(label(f) for _, f in bad)
    expected["message"] += MALFORMED_MESSAGES
    return good, bad, expected, misses


def publish(app: Celery, good: list[Any], bad: list[Any], rng: random.Random) -> int:
    """Send everything; returns the number of messages."""
    singles = [e for e, _ in bad[:1_000] if isinstance(e, dict)] + good[:1_000]
    batched = (
        [e for e, _ in bad[1_000:]]
        + good[1_000:]
        + [e for e, _ in bad[:1_000] if not isinstance(e, dict)]
    )
    rng.shuffle(singles)
    rng.shuffle(batched)
    messages = 0
    for event in singles:
        send(app, RECORD, kwargs=event)
        messages += 1
    for i in range(0, len(batched), 100):
        send(app, RECORD_BATCH, [batched[i : i + 100]])
        messages += 1
    for i in range(MALFORMED_MESSAGES):  # wrong message shapes: dead-lettered whole
        if i % 3 == 0:
            send(app, RECORD, [{"n": i}], {"operation": f"malformed-{i}"})
        elif i % 3 == 1:
            send(app, RECORD_BATCH, [{"not": "a list", "n": i}])
        else:
            send(app, RECORD_BATCH, [[], [i]])
        messages += 1
    return messages


def test_fuzzed_bad_input(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(6)
    tenant = stack.tenant("fuzz")
    good, bad, expected, misses = build_payloads(tenant, rng)
    worker = stack.start_worker()
    assert worker.proc is not None
    pid = worker.proc.pid
    publish(producer_app(stack.redis_url), good, bad, rng)

    good_ids = [e["id"] for e in good]
    total_dead = len(bad) + MALFORMED_MESSAGES
    got = stack.wait_landed(good_ids, timeout=150)
    deadline = time.monotonic() + 30  # dead letters are written with their batch
    while time.monotonic() < deadline and stack.rows("ai_usage_dead_letters") < total_dead:
        time.sleep(0.5)
    with stack.engine.connect() as conn:
        dead = conn.execute(
            text("SELECT event_id::text, field, error, attempts FROM ai_usage_dead_letters")
        ).all()
    fields = Counter(label(f) for _, f, _, _ in dead)
    by_id = {e["id"]: f for e, f in bad if isinstance(e, dict) and _uuid(e.get("id"))}
    wrong = [
        (eid, by_id[eid], f)
        for eid, f, _, _ in dead
        if eid in by_id and label(f) != label(by_id[eid])
    ]
    alive = worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
    fault_summary.add(
        "fuzzed bad input (10,000 bad + 10,000 good)",
        got,
        sent=len(good) + total_dead,
        dead_lettered=len(dead),
    )
    assert alive, worker.log()
    assert got.rows == GOOD and got.duplicates == 0 and got.lost == 0, got
    assert got.table_rows == GOOD, got
    assert len(dead) == total_dead, (len(dead), total_dead, expected - fields, fields - expected)
    assert fields == expected, (expected - fields, fields - expected)
    assert not wrong, wrong[:10]
    assert all(a == 1 for *_, a in dead)
    assert all(err.startswith(f"{f}:") for _, f, err, _ in dead if f), "reason names the field"
    assert not misses, misses[:20]


def _uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def test_client_refuses_bad_values_naming_the_field(fault_summary: Summary) -> None:
    """The client validates at the call site: InvalidEvent (a ValueError) whose message starts
    with the field name, and nothing is published."""
    published: list[Any] = []
    client = UsageClient(mode="sync", publisher=lambda *a: published.append(a))
    rng = random.Random(7)
    tenant = uuid.uuid4()
    checked: Counter[str] = Counter()
    wrong: list[str] = []
    for kind, strategy in STRATEGIES.items():
        if kind in ("missing field", "unknown field"):
            continue  # record()'s signature: a TypeError names the argument
        for case in draw_many(strategy, 200):
            fields = good_event(tenant, rng)
            case.apply(fields)
            if fields.get(case.field, 0) is None and case.field in ("id", "created_at"):
                continue  # the client fills these in when None
            try:
                client.record(**fields)
                wrong.append(f"{kind}/{case.field}: accepted")
            except InvalidEvent as exc:
                if not str(exc).startswith(case.field) or not names(exc, case.field):
                    wrong.append(f"{kind}/{case.field}: {exc}"[:120])
            checked[kind] += 1
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        client.record(**good_event(tenant), colour="red")  # type: ignore[call-arg]
    with pytest.raises(InvalidEvent, match=r"^operation: "):
        client.record(**good_event(tenant, operation="x" * 10_000_000))
    assert not published
    assert not wrong, wrong[:20]
    fault_summary.add(f"client-side refusal ({sum(checked.values())} bad calls)", None,
                      sent=sum(checked.values()), lost=0)  # fmt: skip


def test_dead_letter_field_names_top_level_field() -> None:
    """A wrongly typed cost_usd must be reported as `cost_usd`, like every other field (it is
    reported as `cost_usd.float`, the union member pydantic tried)."""
    event = good_event(uuid.uuid4(), cost_usd="abc")
    with pytest.raises(InvalidEvent) as caught:
        parse_event(event)
    assert caught.value.field == "cost_usd", caught.value.field
    assert str(caught.value).startswith("cost_usd: ")
