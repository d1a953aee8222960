"""Monthly rollups: exactly the spec's query, recomputed never incremented, late data counted."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import make_tenant
from tests.factories import event
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer, load_overrides
from worker.ledger.report import load_report, render
from worker.ledger.reprice import reprice
from worker.ledger.rollups import month_bounds, run_rollup

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
THIS_MONTH = NOW.date().replace(day=1)
MODELS = ["claude-3-5-sonnet-20241022", "gpt-4o", "o3", "in-house-llm-v1"]

# The spec's monthly query, over an explicit UTC month.
SPEC = """
SELECT tenant_id, COUNT(*) AS api_calls, SUM(input_tokens) AS total_input_tokens,
       SUM(output_tokens) AS total_output_tokens, SUM(total_tokens) AS total_tokens,
       SUM(cost_usd) AS total_cost_usd, SUM(cost_usd::numeric) AS exact_cost,
       COUNT(*) FILTER (WHERE success = 'failure') AS failed,
       COUNT(*) FILTER (WHERE cost_usd IS NULL) AS unpriced
FROM ai_usage_logs WHERE created_at >= :start AND created_at < :end
GROUP BY tenant_id ORDER BY total_cost_usd DESC
"""


def months_back(n: int) -> dt.date:
    m = THIS_MONTH
    for _ in range(n):
        m = (m - dt.timedelta(days=1)).replace(day=1)
    return m


def random_events(rng: random.Random, tenants: list[uuid.UUID], n: int) -> list[dict[str, Any]]:
    """Events spread over this month and the two before, many at UTC month boundaries."""
    out = []
    for _ in range(n):
        month = months_back(rng.choice([0, 0, 1, 2]))
        start, end = month_bounds(month)
        end = min(end, NOW)
        kind = rng.random()
        if kind < 0.2:
            at = start + dt.timedelta(microseconds=rng.randint(0, 5))  # just after midnight
        elif kind < 0.4 and month != THIS_MONTH:
            at = end - dt.timedelta(microseconds=rng.randint(1, 5))  # just before the next month
        else:
            at = start + (end - start) * rng.random()
        out.append(
            {
                "id": str(uuid.uuid4()),
                "tenant_id": str(rng.choice(tenants)),
                "operation": "op",
                "model": rng.choice(MODELS),
                "input_tokens": rng.randint(0, 50_000),
                "output_tokens": rng.randint(0, 9_000),
                "success": rng.random() > 0.1,
                "created_at": at.isoformat(),
                **({"cost_usd": round(rng.random(), 6)} if rng.random() < 0.1 else {}),
            }
        )
    return out


def assert_rollups_exact(engine: Engine) -> int:
    """Every rollup row equals the spec query, and there is no rollup row without log rows."""
    checked = 0
    with engine.connect() as conn:
        months = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date"
                    " FROM ai_usage_logs UNION SELECT month FROM ai_usage_monthly_rollups"
                )
            )
        ]
        for month in months:
            start, end = month_bounds(month)
            expected = {
                r.tenant_id: r for r in conn.execute(text(SPEC), {"start": start, "end": end})
            }
            got = {
                r.tenant_id: r
                for r in conn.execute(
                    text("SELECT * FROM ai_usage_monthly_rollups WHERE month = :m"), {"m": month}
                )
            }
            assert set(got) == set(expected), month
            for tenant, e in expected.items():
                g = got[tenant]
                assert (
                    g.api_calls,
                    g.total_input_tokens,
                    g.total_output_tokens,
                    g.total_tokens,
                    g.failed_calls,
                    g.unpriced_calls,
                ) == (
                    e.api_calls,
                    e.total_input_tokens,
                    e.total_output_tokens,
                    e.total_tokens,
                    e.failed,
                    e.unpriced,
                ), (month, tenant)
                assert g.total_cost_usd == e.exact_cost
                if e.total_cost_usd is not None:
                    assert float(g.total_cost_usd) == pytest.approx(e.total_cost_usd, rel=1e-12)
                checked += 1
    return checked


def rollup_snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT tenant_id, month, api_calls, total_input_tokens, total_output_tokens,"
                    " total_tokens, total_cost_usd, failed_calls, unpriced_calls"
                    " FROM ai_usage_monthly_rollups ORDER BY 1, 2"
                )
            )
        ]


def test_randomised_rollups_equal_the_spec_query(db: Engine) -> None:
    rng = random.Random(20251118)
    tenants = [make_tenant(db, f"t{i}") for i in range(25)]
    pricer = Pricer()
    for round_ in range(4):
        # Late events for earlier months arrive in every round, between rollups.
        write_batch(db, random_events(rng, tenants, 1500), pricer)
        result = run_rollup(db)
        assert result.ran and THIS_MONTH in result.months
        assert_rollups_exact(db)
    assert assert_rollups_exact(db) > 50


def test_late_event_for_an_old_month_is_counted(db: Engine, tenant: uuid.UUID) -> None:
    old = months_back(5)
    run_rollup(db)
    write_batch(
        db,
        [
            {
                "id": str(uuid.uuid4()),
                "tenant_id": str(tenant),
                "operation": "op",
                "model": "gpt-4o",
                "input_tokens": 5,
                "output_tokens": 5,
                "created_at": f"{old.isoformat()}T00:00:00Z",
            }
        ],
        Pricer(),
    )
    result = run_rollup(db)
    assert old in result.months
    report = load_report(db, old)
    assert [r.api_calls for r in report.rows] == [1]


def test_concurrent_runs_and_reruns_agree(db: Engine) -> None:
    rng = random.Random(1)
    tenants = [make_tenant(db, f"t{i}") for i in range(10)]
    write_batch(db, random_events(rng, tenants, 3000), Pricer())
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_rollup(db))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(r.ran for r in results)
    run_rollup(db, [months_back(1), months_back(2)], wait=True)
    assert_rollups_exact(db)
    before = rollup_snapshot(db)
    run_rollup(db)
    run_rollup(db, [THIS_MONTH, months_back(1), months_back(2)], wait=True)
    assert rollup_snapshot(db) == before


def test_a_tenant_month_with_no_rows_left_loses_its_row(db: Engine) -> None:
    a, b = make_tenant(db, "a"), make_tenant(db, "b")
    old = months_back(3)
    events = [
        {
            "id": str(uuid.uuid4()),
            "tenant_id": str(t),
            "operation": "op",
            "model": "gpt-4o",
            "input_tokens": 1,
            "output_tokens": 1,
            "created_at": f"{m.isoformat()}T12:00:00Z",
        }
        for t in (a, b)
        for m in (old, THIS_MONTH)
    ]
    write_batch(db, events, Pricer())
    run_rollup(db)
    assert len(rollup_snapshot(db)) == 4
    with db.begin() as conn:
        conn.execute(text("DELETE FROM ai_usage_logs WHERE tenant_id = :a"), {"a": a})
    run_rollup(db)  # the delete marked both of a's months: both rows go
    assert {(r[0], r[1]) for r in rollup_snapshot(db)} == {(b, old), (b, THIS_MONTH)}
    assert_rollups_exact(db)


def test_a_month_recompute_drops_a_tenant_the_log_no_longer_has(db: Engine) -> None:
    """`rollup --month` trusts the log over the rollups: a tenant whose rows went without a
    delta (a delete with the trigger bypassed, as retention's are) loses its daily and
    monthly rows; another month and the other tenant are left as they were."""
    a, b = make_tenant(db, "a"), make_tenant(db, "b")
    old = months_back(1)
    events = [
        event(t, model="gpt-4o", created_at=f"{m.isoformat()}T0{h}:00:00Z")
        for t in (a, b)
        for m in (old, THIS_MONTH)
        for h in (1, 2)
    ]
    write_batch(db, events, Pricer())
    run_rollup(db)
    with db.begin() as conn:
        conn.execute(text("SET LOCAL ai_usage.pruning = 'on'"))
        conn.execute(
            text("DELETE FROM ai_usage_logs WHERE tenant_id = :a AND created_at < :end"),
            {"a": a, "end": month_bounds(old)[1]},
        )
    run_rollup(db)  # no delta: the rollups still count a's deleted month
    assert (a, old) in {(r[0], r[1]) for r in rollup_snapshot(db)}
    result = run_rollup(db, [old])
    assert result.months == [old]
    assert {(r[0], r[1]) for r in rollup_snapshot(db)} == {
        (a, THIS_MONTH),
        (b, old),
        (b, THIS_MONTH),
    }
    with db.connect() as conn:
        days = conn.execute(
            text("SELECT count(*) FROM ai_usage_daily_rollups WHERE tenant_id = :a AND day < :m"),
            {"a": a, "m": THIS_MONTH},
        ).scalar_one()
    assert days == 0
    assert_rollups_exact(db)


def test_reprice_fills_only_null_costs_and_refreshes_rollups(
    db: Engine, tmp_path: Path, tenant: uuid.UUID
) -> None:
    month = months_back(1)
    at = f"{month.isoformat()}T08:00:00Z"
    base = {
        "tenant_id": str(tenant),
        "operation": "op",
        "input_tokens": 1_000_000,
        "output_tokens": 0,
        "created_at": at,
    }
    unknown = [{**base, "id": str(uuid.uuid4()), "model": "in-house-llm-v1"} for _ in range(3)]
    given = {**base, "id": str(uuid.uuid4()), "model": "in-house-llm-v1", "cost_usd": 7.0}
    other = {**base, "id": str(uuid.uuid4()), "model": "mystery-model"}
    write_batch(db, [*unknown, given, other], Pricer())
    run_rollup(db, [month], wait=True)
    assert load_report(db, month).rows[0].unpriced_calls == 4
    overrides = tmp_path / "prices.json"
    overrides.write_text(
        json.dumps(
            [
                {
                    "model": "in-house-llm-v1",
                    "effective_from": "2020-01-01",
                    "input_per_mtok": 2,
                    "output_per_mtok": 4,
                }
            ]
        )
    )
    result = reprice(db, Pricer(load_overrides(str(overrides))))
    assert (result.priced, result.still_unpriced, result.months) == (3, 1, [month])
    with db.connect() as conn:
        costs: dict[object, Any] = dict(
            conn.execute(text("SELECT id::text, cost_usd FROM ai_usage_logs")).all()
        )
    assert [costs[e["id"]] for e in unknown] == [2.0, 2.0, 2.0]
    assert costs[given["id"]] == 7.0 and costs[other["id"]] is None
    row = load_report(db, month).rows[0]
    assert (row.unpriced_calls, row.total_cost_usd) == (1, Decimal("13"))
    assert reprice(db, Pricer(load_overrides(str(overrides)))).priced == 0


def test_beat_schedule_registers_the_task_with_expires() -> None:
    from worker.celery_app import app

    entry = app.conf.beat_schedule["ai-usage-rollup-monthly"]
    assert entry["task"] == "ai_usage.rollup_monthly"
    assert entry["schedule"] == 300.0
    assert entry["options"]["expires"] == 300.0
    import worker.consumer.tasks  # noqa: F401 - registers the tasks

    assert "ai_usage.rollup_monthly" in app.tasks


def test_report_formats_agree_and_read_only_rollups(db: Engine) -> None:
    rng = random.Random(3)
    tenants = [make_tenant(db, f"tenant-{i}") for i in range(6)]
    write_batch(db, random_events(rng, tenants, 600), Pricer())
    run_rollup(db)
    with db.connect() as conn, conn.begin():
        # The log is out of reach: the report must not need it.
        conn.execute(text("ALTER TABLE ai_usage_logs RENAME TO ai_usage_logs_hidden"))
        report = load_report(conn, THIS_MONTH)
        conn.rollback()
    assert report.rows
    as_json = json.loads(render(report, "json"))["rows"]
    as_csv = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    table = render(report, "table")
    assert [r["tenant_id"] for r in as_json] == [r["tenant_id"] for r in as_csv]
    assert [r["tenant_id"] for r in as_json] == [str(r.tenant_id) for r in report.rows]
    for j, c, r in zip(as_json, as_csv, report.rows, strict=True):
        assert int(c["api_calls"]) == j["api_calls"] == r.api_calls
        assert int(c["unpriced_calls"]) == j["unpriced_calls"] == r.unpriced_calls
        assert (c["total_cost_usd"] or None) == j["total_cost_usd"]
        assert str(r.api_calls) in table and str(r.tenant_id)[:8] in table
    costs = [r.total_cost_usd or Decimal(-1) for r in report.rows]
    assert costs == sorted(costs, reverse=True)


def test_report_for_a_month_not_rolled_up(db: Engine, tenant: uuid.UUID) -> None:
    old = months_back(7)
    assert "No rollup for" in render(load_report(db, old), "table")


def test_report_tenant_filter(db: Engine) -> None:
    a, b = make_tenant(db, "alpha"), make_tenant(db, "bravo")
    write_batch(db, random_events(random.Random(5), [a, b], 200), Pricer())
    run_rollup(db)
    report = load_report(db, THIS_MONTH, a)
    assert {r.tenant_id for r in report.rows} == {a}
    for fmt in ("table", "json", "csv"):
        out = render(report, fmt)
        assert str(b) not in out and str(b)[:8] not in out and "bravo" not in out
