"""Rollups from transactional deltas: interleavings of writers and runs on two connections with
a controlled commit order, every daily and monthly bucket against the log under random writes,
deletes, reprices and prunes across UTC midnights, retention, breakdowns, streamed reprice."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from tests.conftest import make_tenant
from tests.rollup_checks import USERS, assert_users_exact, user_buckets
from tests.test_rollups import assert_rollups_exact
from worker.cli import main as cli
from worker.ledger import rollups
from worker.ledger.ingest import write_batch
from worker.ledger.months import add_months, month_start
from worker.ledger.pricing import Pricer, load_overrides
from worker.ledger.reprice import reprice
from worker.ledger.retention import prune
from worker.ledger.rollups import ClosedMonthError, run_rollup

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
THIS_MONTH = month_start(NOW)
MODELS = ("gpt-4o", "claude-3-5-sonnet-20241022", "in-house-llm-v1")

# Every bucket of the log, as the daily rollups key them.
DAILY_FROM_LOG = """
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, model, operation, success,
       COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(total_tokens),
       COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),
       COUNT(*) FILTER (WHERE cost_usd IS NULL), COUNT(*) FILTER (WHERE success = 'failure'),
       COALESCE(SUM(cost_usd::numeric), 0)
FROM ai_usage_logs {where} GROUP BY 1, 2, 3, 4, 5
"""
DAILY = """
SELECT tenant_id, day, model, operation, success, api_calls, input_tokens, output_tokens,
       total_tokens, cache_read_tokens, cache_write_tokens, unpriced_calls, failed_calls, cost_usd
FROM ai_usage_daily_rollups {where}
"""


def buckets(conn: Engine | Connection, sql: str, where: str = "") -> dict[Any, tuple[Any, ...]]:
    scope = conn.connect() if isinstance(conn, Engine) else conn
    rows = scope.execute(text(sql.format(where=where))).all()
    if isinstance(conn, Engine):
        scope.close()
    return {tuple(r[:5]): tuple(r[5:]) for r in rows}


def assert_daily_exact(engine: Engine, where: str = "") -> int:
    expected = buckets(engine, DAILY_FROM_LOG, where.replace("day", "created_at"))
    got = buckets(engine, DAILY, where)
    diff = {k: (expected.get(k), got.get(k)) for k in set(expected) | set(got)}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    assert not diff, list(diff.items())[:5]
    assert_users_exact(engine, where)  # the per-user rows are folded from the same deltas
    return len(expected)


def event(tenant: uuid.UUID, at: dt.datetime, rng: random.Random, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": str(tenant),
        "operation": rng.choice(("chat", "summarise")),
        "model": rng.choice(MODELS),
        "input_tokens": rng.randint(1, 40_000),
        "output_tokens": rng.randint(0, 4_000),
        "cache_read_tokens": 0,
        "success": rng.random() > 0.15,
        "created_at": at.isoformat(),
        **extra,
    }


def make_user(engine: Engine, tenant: uuid.UUID) -> uuid.UUID:
    with engine.begin() as conn:
        return uuid.UUID(
            str(
                conn.execute(
                    text("INSERT INTO users (tenant_id, name) VALUES (:t, 'u') RETURNING id"),
                    {"t": tenant},
                ).scalar_one()
            )
        )


def insert_raw(conn: Connection, tenant: uuid.UUID, at: dt.datetime, n: int = 1) -> None:
    for _ in range(n):
        conn.execute(
            text(
                "INSERT INTO ai_usage_logs (id, tenant_id, operation, model, input_tokens,"
                " output_tokens, total_tokens, success, created_at, cost_usd) VALUES"
                " (:id, :t, 'op', 'm', 3, 4, 7, 'success', :c, 0.25)"
            ),
            {"id": uuid.uuid4(), "t": tenant, "c": at},
        )


def monthly_calls(engine: Engine, tenant: uuid.UUID, month: dt.date) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT api_calls FROM ai_usage_monthly_rollups WHERE tenant_id = :t AND month = :m"
            ),
            {"t": tenant, "m": month},
        ).scalar()


def test_a_writer_never_waits_for_a_rollup_in_progress(db: Engine, database_url: str) -> None:
    """A run holds its transaction open (deltas folded, not committed); a writer whose every
    lock wait would fail after 500 ms commits a batch meanwhile, and the next run counts it."""
    tenant = make_tenant(db)
    rng = random.Random(1)
    write_batch(db, [event(tenant, NOW, rng) for _ in range(20)], Pricer())
    impatient = create_engine(db.url, connect_args={"options": "-c lock_timeout=500"})
    with db.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ")
        with rollups.rollup_lock(conn, wait=True), conn.begin():
            result = rollups._run(conn, [])
            assert result.buckets > 0
            late = write_batch(impatient, [event(tenant, NOW, rng) for _ in range(30)], Pricer())
            assert late.inserted == 30  # a lock wait would have raised LockNotAvailable
    impatient.dispose()
    assert monthly_calls(db, tenant, THIS_MONTH) == 20  # the run did not see the later batch
    run_rollup(db, wait=True)
    assert monthly_calls(db, tenant, THIS_MONTH) == 50
    assert_daily_exact(db)
    assert_rollups_exact(db)


def test_a_write_begun_before_a_run_and_committed_after_is_counted_by_the_next(db: Engine) -> None:
    tenant = make_tenant(db)
    past = add_months(THIS_MONTH, -1)
    at = dt.datetime(past.year, past.month, 1, tzinfo=UTC)  # UTC midnight, month boundary
    with db.begin() as conn:
        insert_raw(conn, tenant, at, 2)
    run_rollup(db, wait=True)
    writer = db.connect()
    tx = writer.begin()
    insert_raw(writer, tenant, at, 3)  # rows and their deltas, uncommitted
    writer.execute(
        text("DELETE FROM ai_usage_logs WHERE id IN (SELECT id FROM ai_usage_logs LIMIT 1)")
    )
    assert run_rollup(db).ran  # does not wait for the writer
    assert monthly_calls(db, tenant, past) == 2
    tx.commit()
    writer.close()
    run_rollup(db)
    assert monthly_calls(db, tenant, past) == 4
    run_rollup(db)  # a rerun changes nothing
    assert monthly_calls(db, tenant, past) == 4
    assert_daily_exact(db)
    assert_rollups_exact(db)


def test_a_rolled_back_write_leaves_nothing_and_a_run_waiting_for_another_is_exact(
    db: Engine,
) -> None:
    tenant = make_tenant(db)
    writer = db.connect()
    tx = writer.begin()
    insert_raw(writer, tenant, NOW, 5)
    tx.rollback()
    writer.close()
    with db.connect() as other, rollups.rollup_lock(other, wait=True) as got:
        assert got
        assert not run_rollup(db).ran  # another run holds the lock: this one does nothing
    assert run_rollup(db).ran
    assert monthly_calls(db, tenant, THIS_MONTH) is None
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ai_usage_rollup_deltas")).scalar() == 0


@pytest.mark.parametrize("seed", [3, 17])
def test_random_writes_deletes_reprices_and_prunes_keep_every_bucket_exact(
    db: Engine, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    tenants = [make_tenant(db, f"t{i}") for i in range(3)]
    months = [add_months(THIS_MONTH, -k) for k in range(16)]
    users = {t: [make_user(db, t) for _ in range(3)] for t in tenants}

    def user_event(at: dt.datetime) -> dict[str, Any]:
        tenant = rng.choice(tenants)
        who = rng.choice([*users[tenant], None])  # one in four without a user
        return event(tenant, at, rng, **({"user_id": str(who)} if who else {}))

    def moment() -> dt.datetime:
        month = rng.choice(months[:3] + months[-2:])
        start = dt.datetime(month.year, month.month, 1, tzinfo=UTC)
        kind = rng.random()
        if kind < 0.3:  # either side of a UTC midnight
            day = start + dt.timedelta(days=rng.randint(0, 27))
            return day + dt.timedelta(microseconds=rng.choice((0, 1, -1, -3)))
        at = start + dt.timedelta(seconds=rng.randint(0, 27 * 86400))
        return min(at, NOW)

    pruned: list[tuple[Any, ...]] = []
    users_before: dict[Any, tuple[Any, ...]] = {}
    overrides = tmp_path / "prices.json"
    for step in range(40):
        action = rng.random()
        if action < 0.45:
            batch = [user_event(moment()) for _ in range(rng.randint(1, 40))]
            write_batch(db, batch, Pricer())
        elif action < 0.6:
            with db.begin() as conn:
                conn.execute(
                    text(
                        "DELETE FROM ai_usage_logs WHERE id IN (SELECT id FROM ai_usage_logs"
                        " WHERE created_at >= :after ORDER BY id LIMIT :n)"
                    ),
                    {"n": rng.randint(1, 15), "after": dt.datetime(2000, 1, 1, tzinfo=UTC)},
                )
        elif action < 0.7:
            # A price arrives for the in-house model: reprice streams in chunks of 7 rows.
            overrides.write_text(
                json.dumps(
                    [
                        {
                            "model": "in-house-llm-v1",
                            "effective_from": "2000-01-01T00:00:00Z",
                            "input_per_mtok": rng.choice(("0.5", "1.25")),
                            "output_per_mtok": "2",
                        }
                    ]
                )
            )
            reprice(db, Pricer(load_overrides(str(overrides))), chunk=7)
        elif action < 0.75 and not pruned:
            run_rollup(db, wait=True)
            # The months it closes (a month before the cutoff with no rows yet stays open).
            old = (
                f"WHERE day < '{add_months(THIS_MONTH, -13)}' AND date_trunc('month', day)::date"
                " IN (SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date"
                " FROM ai_usage_logs)"
            )
            before = dict(buckets(db, DAILY, old))
            users_before = user_buckets(db, USERS, old)
            result = prune(db, 13, batch=9)
            assert result.months, "some rows fall in the months before the cutoff"
            pruned = sorted(before.items())
        else:
            run_rollup(db)
        if step % 10 == 9:
            run_rollup(db, wait=True)
    run_rollup(db, wait=True)
    cutoff = add_months(THIS_MONTH, -13)
    assert_daily_exact(db, f"WHERE day >= '{cutoff}'")
    if pruned:
        # Final: the rollups of the pruned months are those at the prune, whatever came after.
        closed = (
            "WHERE date_trunc('month', day)::date IN (SELECT month FROM ai_usage_closed_months)"
        )
        assert sorted(buckets(db, DAILY, closed).items()) == pruned
        assert user_buckets(db, USERS, closed) == users_before
    else:
        assert_daily_exact(db)
        assert_rollups_exact(db)
    with db.connect() as conn:
        # The monthly rows are the sums of the daily ones, everywhere.
        mismatched = conn.execute(
            text(
                "SELECT m.tenant_id, m.month FROM ai_usage_monthly_rollups m FULL JOIN ("
                " SELECT tenant_id, date_trunc('month', day)::date AS month,"
                " SUM(api_calls) AS calls, SUM(cost_usd) AS cost, SUM(unpriced_calls) AS unpriced"
                " FROM ai_usage_daily_rollups GROUP BY 1, 2) d"
                " ON d.tenant_id = m.tenant_id AND d.month = m.month"
                " WHERE m.api_calls IS DISTINCT FROM d.calls"
                " OR m.unpriced_calls IS DISTINCT FROM d.unpriced"
                " OR COALESCE(m.total_cost_usd, 0) IS DISTINCT FROM d.cost"
            )
        ).all()
    assert not mismatched


def test_prune_closes_months_keeps_rollups_and_refuses_late_events(db: Engine) -> None:
    tenant = make_tenant(db)
    rng = random.Random(5)
    old = add_months(THIS_MONTH, -15)
    at = dt.datetime(old.year, old.month, 3, tzinfo=UTC)
    write_batch(db, [event(tenant, at, rng) for _ in range(25)], Pricer())
    write_batch(db, [event(tenant, NOW, rng) for _ in range(5)], Pricer())
    run_rollup(db, wait=True)
    assert monthly_calls(db, tenant, old) == 25

    result = prune(db, 13, batch=4)
    assert result.months == [old] and sum(result.rows_deleted.values()) == 25
    run_rollup(db, wait=True)
    assert monthly_calls(db, tenant, old) == 25  # kept, final
    with pytest.raises(ClosedMonthError, match="closed by retention"):
        run_rollup(db, [old], wait=True)

    late = event(tenant, at, rng)
    written = write_batch(db, [late, event(tenant, NOW, rng)], Pricer())
    assert (written.inserted, written.dead_lettered) == (1, 1)
    with db.connect() as conn:
        reason, field = conn.execute(
            text("SELECT error, field FROM ai_usage_dead_letters WHERE event_id = :id"),
            {"id": uuid.UUID(late["id"])},
        ).one()
        assert field == "created_at" and "closed by retention" in reason
        assert conn.execute(text("SELECT rows_pruned FROM ai_usage_closed_months")).scalar() == 25
    assert prune(db, 13).rows_deleted.total() == 0  # a rerun deletes nothing more


def test_report_by_each_dimension_equals_the_log(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant, other = make_tenant(db, "a"), make_tenant(db, "b")
    rng = random.Random(9)
    users = [uuid.uuid4() for _ in range(3)]
    with db.begin() as conn:
        for u in users:
            conn.execute(
                text("INSERT INTO users (id, tenant_id, name) VALUES (:id, :t, :e)"),
                {"id": u, "t": tenant, "e": f"{u}@example.com"},
            )
    first = THIS_MONTH
    batch = [
        event(
            rng.choice((tenant, other)),
            dt.datetime(first.year, first.month, 1, tzinfo=UTC)
            + dt.timedelta(hours=rng.randint(0, 23)),
            rng,
            user_id=str(rng.choice(users)),
        )
        for _ in range(120)
    ]
    for e in batch:
        if e["tenant_id"] != str(tenant):
            e.pop("user_id")
    write_batch(db, batch, Pricer())
    run_rollup(db, wait=True)
    day = first.isoformat()
    for by, column in (("model", "model"), ("operation", "operation"), ("user", "user_id")):
        assert (
            cli(
                [
                    "report",
                    "--by",
                    by,
                    "--tenant",
                    str(tenant),
                    "--from",
                    day,
                    "--to",
                    day,
                    "--format",
                    "json",
                ]
            )
            == 0
        )
        got = {
            r["key"]: (r["api_calls"], r["cost_usd"])
            for r in json.loads(capsys.readouterr().out)["rows"]
        }
        with db.connect() as conn:
            expected = {
                str(k): (n, None if c is None else str(c))
                for k, n, c in conn.execute(
                    text(
                        f"SELECT {column}, COUNT(*), SUM(cost_usd::numeric) FROM ai_usage_logs"
                        " WHERE tenant_id = :t GROUP BY 1"
                    ),
                    {"t": tenant},
                )
            }
        assert got == expected, by
    assert cli(["report", "--by", "day", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["key"], r["api_calls"]) for r in rows] == [(day, 120)]
    assert cli(["report", "--by", "user"]) == 2
    assert "--by user needs --tenant" in capsys.readouterr().err
    assert cli(["report", "--from", day]) == 2


def test_reprice_streams_every_unpriced_row_in_bounded_chunks(db: Engine, tmp_path: Path) -> None:
    tenant = make_tenant(db)
    rng = random.Random(2)
    batch = [
        event(tenant, NOW - dt.timedelta(minutes=i), rng, model="in-house-llm-v1")
        for i in range(53)
    ]
    write_batch(db, batch, Pricer())
    run_rollup(db, wait=True)
    prices = tmp_path / "p.json"
    prices.write_text(
        json.dumps(
            [
                {
                    "model": "in-house-llm-v1",
                    "effective_from": "2000-01-01",
                    "input_per_mtok": "1",
                    "output_per_mtok": "3",
                }
            ]
        )
    )
    result = reprice(db, Pricer(load_overrides(str(prices))), chunk=5)
    assert (result.priced, result.still_unpriced) == (53, 0)
    with db.connect() as conn:
        unpriced, cost = conn.execute(
            text(
                "SELECT unpriced_calls, total_cost_usd FROM ai_usage_monthly_rollups"
                " WHERE tenant_id = :t"
            ),
            {"t": tenant},
        ).one()
        exact = conn.execute(text("SELECT SUM(cost_usd::numeric) FROM ai_usage_logs")).scalar()
    assert unpriced == 0 and cost == exact and cost > Decimal(0)
    assert_daily_exact(db)
