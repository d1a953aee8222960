"""Fault 7: events for tenants that do not exist yet are dead-lettered; an operator lists them,
creates a tenant and replays: those events land exactly once; the rest stay with their current
reason and one more attempt; replaying again doubles nothing."""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from tests.conftest import wait_for
from tests.faults.support import RECORD_BATCH, Stack, good_event, producer_app, send

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults


def _dead(stack: Stack) -> dict[str, tuple[str, int, str | None]]:
    with stack.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id::text, error, attempts, field FROM ai_usage_dead_letters")
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_dead_letter_list_and_replay(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(9)
    known = stack.tenant("known")
    late, never, half = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    missing_user = uuid.uuid4()
    good = [good_event(known, rng) for _ in range(50)]
    late_events = [good_event(late, rng) for _ in range(30)]
    never_events = [good_event(never, rng) for _ in range(10)]
    # Missing tenant and missing user: once the tenant exists, the reason becomes the user.
    half_events = [good_event(half, rng, user_id=str(missing_user)) for _ in range(5)]
    everything = good + late_events + never_events + half_events
    rng.shuffle(everything)
    worker = stack.start_worker()
    app = producer_app(stack.redis_url)
    send(app, RECORD_BATCH, [everything])
    dead_count = len(late_events) + len(never_events) + len(half_events)
    got = stack.wait_landed([e["id"] for e in good], timeout=120)
    assert got.lost == 0, got
    _wait_dead(stack, dead_count)

    listed = stack.cli("dead-letters", "list", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    entries = re.findall(r"^#\d+ +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +attempts=1", listed.stdout, re.M)
    assert len(entries) == dead_count, listed.stdout[:2000]
    for e in late_events + never_events + half_events:
        assert e["id"] in listed.stdout  # the payload is shown
    assert (
        listed.stdout.count("reason:  tenant_id: ") + listed.stdout.count("reason:  user_id: ")
        == dead_count
    ), listed.stdout[:2000]
    as_json = json.loads(stack.cli("dead-letters", "list", "--format", "json").stdout)
    assert len(as_json) == dead_count
    assert all(json.loads(r["payload"])["id"] == r["event_id"] for r in as_json)
    assert all(r["error"] and r["created_at"] and r["last_attempt_at"] for r in as_json)
    before = _dead(stack)

    with stack.engine.begin() as conn:
        for tid, name in ((late, "late"), (half, "half")):
            conn.execute(
                text("INSERT INTO tenants (id, name) VALUES (:i, :n)"), {"i": tid, "n": name}
            )
    first = stack.cli("dead-letters", "replay", "--all")
    assert first.returncode == 1, first.stdout + first.stderr  # some still fail
    assert "30 landed" in first.stdout and "15 still failing" in first.stdout, first.stdout
    after = _dead(stack)
    landed_late = stack.landed([e["id"] for e in late_events])
    assert landed_late.rows == landed_late.distinct == 30, landed_late
    assert set(after) == {e["id"] for e in never_events + half_events}
    for e in never_events:
        error, attempts, field = after[e["id"]]
        assert attempts == 2 and field == "tenant_id" and error.startswith("tenant_id: "), after
    for e in half_events:
        error, attempts, field = after[e["id"]]
        assert attempts == 2 and field == "user_id" and error.startswith("user_id: "), after
        # The reason was brought up to date: first the missing tenant, now the missing user.
        assert before[e["id"]][2] == "tenant_id", before[e["id"]]

    # Replaying again, and the producer sending the late events once more, double nothing.
    second = stack.cli("dead-letters", "replay", "--all")
    assert "0 landed" in second.stdout and "15 still failing" in second.stdout, second.stdout
    send(app, RECORD_BATCH, [late_events])
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="redelivery handled")
    final = _dead(stack)
    assert all(a == 3 for _, a, _ in final.values()), final
    ids = [e["id"] for e in good + late_events]
    got = stack.wait_landed(ids, timeout=60)
    assert worker.proc is not None and worker.proc.poll() is None
    fault_summary.add(
        "dead-letter replay (tenant created late)",
        got,
        sent=len(everything) + len(late_events),
        dead_lettered=len(final),
        lost=got.lost,
    )
    assert got.rows == got.distinct == len(ids) and got.duplicates == 0, got
    assert got.table_rows == len(ids), got
    assert stack.rows("ai_usage_dead_letters") == 15


def _wait_dead(stack: Stack, n: int) -> None:
    wait_for(
        lambda: stack.rows("ai_usage_dead_letters") >= n,
        60,
        what=f"{n} dead letters",
    )
