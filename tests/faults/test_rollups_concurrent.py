"""Fault 6: two Beat schedulers (the documented misconfiguration) fire the rollup every second,
threads call run_rollup at the same time, events keep landing, some of them in past months.
At the end every rollup row equals the spec's monthly query over ai_usage_logs, exactly."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from tests.faults.support import PacedSender, Stack, celery_cmd, good_event, producer_app
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import default_pricer
from worker.ledger.rollups import month_start, run_rollup

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults

# The spec's monthly query, per tenant and UTC month, with the rollup's extra counters.
SPEC = """
SELECT tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
       COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(total_tokens),
       SUM(cost_usd::numeric), COUNT(*) FILTER (WHERE success = 'failure'),
       COUNT(*) FILTER (WHERE cost_usd IS NULL)
FROM ai_usage_logs GROUP BY 1, 2
"""
ROLLUPS = """
SELECT tenant_id, month, api_calls, total_input_tokens, total_output_tokens, total_tokens,
       total_cost_usd, failed_calls, unpriced_calls
FROM ai_usage_monthly_rollups
"""


def spec_vs_rollups(stack: Stack) -> tuple[dict[Any, Any], dict[Any, Any]]:
    with stack.engine.connect() as conn:
        spec = {(r[0], r[1]): tuple(r[2:]) for r in conn.execute(text(SPEC))}
        rolled = {(r[0], r[1]): tuple(r[2:]) for r in conn.execute(text(ROLLUPS))}
    return spec, rolled


def _diff(spec: dict[Any, Any], rolled: dict[Any, Any]) -> list[Any]:
    keys = set(spec) | set(rolled)
    return sorted(
        ((str(k[0])[:8], str(k[1])), spec.get(k), rolled.get(k))
        for k in keys
        if spec.get(k) != rolled.get(k)
    )


def _when(rng: random.Random) -> str:
    """Now, or a moment in one of the two previous months (late data: only its deltas tell a
    run that those months changed)."""
    now = dt.datetime.now(dt.UTC)
    back = rng.choice((0, 0, 1, 2))
    if back == 0:
        return now.isoformat()
    month = month_start(now)
    for _ in range(back):
        month = month_start(month - dt.timedelta(days=1))
    return dt.datetime(month.year, month.month, rng.randint(1, 28), tzinfo=dt.UTC).isoformat()


def test_two_beats_and_concurrent_rollups(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(8)
    tenants = [stack.tenant(f"rollup-{i}") for i in range(4)]
    events = [good_event(rng.choice(tenants), rng, created_at=_when(rng)) for _ in range(20_000)]
    for e in events[::50]:
        e["model"] = "in-house-unpriced"  # cost NULL: counted, never summed as 0
    ids = [e["id"] for e in events]
    env = stack.env(AI_USAGE_ROLLUP_INTERVAL_S="1")
    stack.start_worker(env)
    beats = [
        stack.popen(
            celery_cmd("beat", "-s", str(stack.root / f"beat-{i}"), "--loglevel", "INFO"),
            stack.root / f"beat-{i}.log",
            env,
        )
        for i in range(2)
    ]
    stop = threading.Event()
    runs = {"ran": 0, "skipped": 0}
    errors: list[BaseException] = []

    def hammer(wait: bool) -> None:
        while not stop.is_set():
            try:
                result = run_rollup(stack.engine, wait=wait)
                runs["ran" if result.ran else "skipped"] += 1
            except BaseException as exc:
                errors.append(exc)
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(3)]
    for t in threads:
        t.start()
    batches = [events[i : i + 100] for i in range(0, len(events), 100)]
    PacedSender(producer_app(stack.redis_url), batches, per_second=12).start().join(120)
    got = stack.wait_landed(ids, timeout=180)
    stop.set()
    for t in threads:
        t.join(60)

    # Beat keeps running; the rollups must converge on the spec query, and stay there.
    deadline = time.monotonic() + 60
    while True:
        spec, rolled = spec_vs_rollups(stack)
        if spec == rolled or time.monotonic() > deadline:
            break
        time.sleep(1)
    beat_logs = [(stack.root / f"beat-{i}.log").read_text(errors="replace") for i in range(2)]
    fault_summary.add("2 beats + rollup threads (1 s)", got)
    assert not errors, errors
    assert all(b.poll() is None for b in beats), beat_logs
    assert all("Sending due task ai-usage-rollup-monthly" in log for log in beat_logs)
    assert runs["ran"] > 0, runs
    assert got.rows == len(events) and got.lost == 0 and got.duplicates == 0, got
    assert len(spec) >= 3 * len(tenants) - 2, "events span the current and two past months"
    assert not _diff(spec, rolled), _diff(spec, rolled)[:10]
    total_cost = sum((v[4] or Decimal(0)) for v in rolled.values())
    assert total_cost > 0


def test_rows_committed_during_a_rollup_are_not_missed(stack: Stack) -> None:
    """A writer adds a row for a past month that already has changes waiting; before it
    commits, a rollup starts. The rollup neither waits for the writer nor consumes its delta
    (invisible to its snapshot): the next run counts the row. (With the earlier dirty marks, a
    rollup that took the mark without the row left the month short for good.)"""
    tenant = stack.tenant("race")
    past = month_start(month_start(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1))
    when = dt.datetime(past.year, past.month, 10, tzinfo=dt.UTC).isoformat()
    first = good_event(tenant, created_at=when)
    write_batch(stack.engine, [first], default_pricer())  # a delta for (tenant, past) waits

    second = good_event(tenant, created_at=when)
    writer = stack.engine.connect()
    tx = writer.begin()
    writer.execute(
        text(
            "INSERT INTO ai_usage_logs (id, tenant_id, operation, model, input_tokens,"
            " output_tokens, total_tokens, success, created_at) VALUES (:id, :t, 'op', 'm',"
            " 1, 1, 2, 'success', :c)"
        ),
        {"id": uuid.UUID(second["id"]), "t": tenant, "c": when},
    )
    # A rollup starts while the writer has not committed yet (were it to wait for the writer,
    # it would not be blocked forever: the writer commits a second later).
    rollup = threading.Thread(target=run_rollup, args=(stack.engine,))
    rollup.start()
    time.sleep(1)
    tx.commit()
    writer.close()
    rollup.join(60)
    assert not rollup.is_alive()
    run_rollup(stack.engine, wait=True)  # any number of later runs
    run_rollup(stack.engine, wait=True)
    spec, rolled = spec_vs_rollups(stack)
    assert spec[(tenant, past)][0] == 2
    assert rolled.get((tenant, past)) == spec[(tenant, past)], _diff(spec, rolled)
