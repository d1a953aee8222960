"""Per-user daily rollups (`report --by user`): every (tenant, UTC day, user) row equals a GROUP
BY over the log after inserts, redeliveries, reprices, updates and deletes; a month recompute
rebuilds them; the report reads them only; closed months without them are refused by name."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import make_tenant
from tests.rollup_checks import USERS, assert_users_exact, user_buckets
from tests.test_rollup_deltas import THIS_MONTH, event, make_user
from worker.cli import main as cli
from worker.ledger import breakdown
from worker.ledger.ingest import write_batch
from worker.ledger.months import add_months
from worker.ledger.pricing import Pricer, load_overrides
from worker.ledger.reprice import reprice
from worker.ledger.retention import prune
from worker.ledger.rollup_sql import NO_USER
from worker.ledger.rollups import run_rollup

UTC = dt.UTC
NOW = dt.datetime.now(UTC)


def at(month: dt.date, day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(month.year, month.month, day, hour, tzinfo=UTC)


def events(
    rng: random.Random, tenant: uuid.UUID, users: list[uuid.UUID], n: int, when: list[dt.datetime]
) -> list[dict[str, Any]]:
    """`n` events of `tenant`, each by one of `users` or (one in four) by no user."""
    out = []
    for _ in range(n):
        who = rng.choice([*users, None])
        out.append(event(tenant, rng.choice(when), rng, **({"user_id": str(who)} if who else {})))
    return out


def user_calls(engine: Engine, user: uuid.UUID) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT SUM(api_calls) FROM ai_usage_user_daily_rollups WHERE user_id = :u"),
            {"u": user},
        ).scalar()


def test_per_user_rows_follow_every_change_to_the_log(db: Engine, tmp_path: Path) -> None:
    rng = random.Random(27)
    tenants = [make_tenant(db, "a"), make_tenant(db, "b")]
    users = {t: [make_user(db, t) for _ in range(3)] for t in tenants}
    last = add_months(THIS_MONTH, -1)
    # Either side of last month's end (a UTC midnight) and of one of its days.
    when = [at(last, 1, 0), at(last, 2) - dt.timedelta(microseconds=1), at(THIS_MONTH, 1, 0)]
    when.append(min(NOW, at(THIS_MONTH, 1, 0) - dt.timedelta(microseconds=1)))
    first = [e for t in tenants for e in events(rng, t, users[t], 60, when)]
    assert write_batch(db, first, Pricer()).inserted == 120
    run_rollup(db, wait=True)
    assert assert_users_exact(db) > 8
    assert user_calls(db, NO_USER), "events without a user are kept under the nil UUID"

    # A redelivery changes nothing.
    assert write_batch(db, first, Pricer()).duplicates == 120
    run_rollup(db, wait=True)
    assert_users_exact(db)

    # A price arrives: the reprice's UPDATEs move cost, per user.
    overrides = tmp_path / "prices.json"
    overrides.write_text(
        json.dumps(
            [
                {
                    "model": "in-house-llm-v1",
                    "effective_from": "2000-01-01T00:00:00Z",
                    "input_per_mtok": "0.5",
                    "output_per_mtok": "2",
                }
            ]
        )
    )
    assert reprice(db, Pricer(load_overrides(str(overrides))), chunk=7).priced > 0
    assert_users_exact(db)

    # Rows change hands (a manual UPDATE), and a user's rows all go: its rows go too.
    a0, a1, a2 = users[tenants[0]]
    with db.begin() as conn:
        conn.execute(
            text("UPDATE ai_usage_logs SET user_id = :to WHERE user_id = :u"), {"to": a1, "u": a2}
        )
        conn.execute(text("UPDATE ai_usage_logs SET user_id = NULL WHERE user_id = :u"), {"u": a1})
        conn.execute(text("DELETE FROM ai_usage_logs WHERE user_id = :u"), {"u": a0})
    run_rollup(db, wait=True)
    assert_users_exact(db)
    assert user_calls(db, a0) is None and user_calls(db, a2) is None


def test_a_month_recompute_rebuilds_its_per_user_rows_only(db: Engine) -> None:
    rng = random.Random(4)
    tenant = make_tenant(db)
    users = [make_user(db, tenant) for _ in range(2)]
    last = add_months(THIS_MONTH, -1)
    batch = events(rng, tenant, users, 30, [at(last, 3), at(THIS_MONTH, 1, 0), NOW])
    write_batch(db, batch, Pricer())
    run_rollup(db, wait=True)
    with db.begin() as conn:  # damage both months' per-user rows
        conn.execute(text("UPDATE ai_usage_user_daily_rollups SET api_calls = api_calls + 5"))
        conn.execute(
            text(
                "INSERT INTO ai_usage_user_daily_rollups (tenant_id, day, user_id, api_calls,"
                " input_tokens, output_tokens, total_tokens, cache_read_tokens,"
                " cache_write_tokens, unpriced_calls, failed_calls, cost_usd)"
                " VALUES (:t, :d, :u, 1, 1, 1, 2, 0, 0, 0, 0, 0)"
            ),
            {"t": tenant, "d": at(THIS_MONTH, 1).date(), "u": uuid.uuid4()},
        )
    run_rollup(db, [THIS_MONTH], wait=True)
    assert_users_exact(db, f"WHERE day >= '{THIS_MONTH}'")
    with db.connect() as conn:  # last month was not asked for: left as it was
        assert conn.execute(
            text("SELECT bool_and(api_calls > 5) FROM ai_usage_user_daily_rollups WHERE day < :m"),
            {"m": THIS_MONTH},
        ).scalar()


def _relations(plan: Any) -> set[str]:
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            found.add(str(node["Relation Name"]))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def test_report_by_user_reads_only_the_per_user_rollups(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(8)
    tenant, other = make_tenant(db, "a"), make_tenant(db, "b")
    users = [make_user(db, tenant) for _ in range(3)]
    old = add_months(THIS_MONTH, -7)
    when = [at(old, 10), at(add_months(THIS_MONTH, -3), 5), NOW]
    write_batch(db, events(rng, tenant, users, 80, when), Pricer())
    write_batch(db, events(rng, other, [make_user(db, other)], 20, when), Pricer())
    run_rollup(db, wait=True)
    params = {"tenant": tenant, "first": old, "last": NOW.date(), "no_user": NO_USER}
    with db.connect() as conn:
        plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), params).scalar()
    assert _relations(plan) == {"ai_usage_user_daily_rollups"}

    def report() -> dict[str, tuple[int, str | None]]:
        args = ["report", "--by", "user", "--tenant", str(tenant), "--format", "json"]
        # Over 92 days (the old limit of the read from the log): the read is bounded anyway.
        assert cli([*args, "--from", old.isoformat(), "--to", NOW.date().isoformat()]) == 0
        rows = json.loads(capsys.readouterr().out)["rows"]
        return {r["key"]: (r["api_calls"], r["cost_usd"]) for r in rows}

    def from_log() -> dict[str, tuple[int, str | None]]:
        with db.connect() as conn:
            return {
                "(none)" if u is None else str(u): (n, None if c is None else str(c))
                for u, n, c in conn.execute(
                    text(
                        "SELECT user_id, COUNT(*), SUM(cost_usd::numeric) FROM ai_usage_logs"
                        " WHERE tenant_id = :t GROUP BY 1"
                    ),
                    {"t": tenant},
                )
            }

    before = report()
    assert before == from_log() and "(none)" in before
    # As of the last rollup run, as the other dimensions: a new write shows after the next run.
    write_batch(db, events(rng, tenant, users, 5, [NOW]), Pricer())
    assert report() == before
    run_rollup(db, wait=True)
    assert report() == from_log() != before


def test_closed_months_without_per_user_rows_are_refused_by_name(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(11)
    tenant = make_tenant(db)
    users = [make_user(db, tenant) for _ in range(2)]
    # Closed before the per-user rollups existed (as revision d0e1f2a3b4c5 marks them).
    unkept = [add_months(THIS_MONTH, -20), add_months(THIS_MONTH, -19)]
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ai_usage_closed_months (month, has_user_rollups)"
                " SELECT unnest(CAST(:m AS date[])), false"
            ),
            {"m": unkept},
        )
    # A month closed now: its per-user rows were kept while it had rows, and stay.
    closed = add_months(THIS_MONTH, -15)
    write_batch(db, events(rng, tenant, users, 25, [at(closed, 3), at(closed, 9)]), Pricer())
    run_rollup(db, wait=True)
    kept = user_buckets(db, USERS)
    assert prune(db, 13).rows_deleted.total() == 25
    assert user_buckets(db, USERS) == kept

    def by_user(first: dt.date, last: dt.date) -> int:
        return cli(
            ["report", "--by", "user", "--tenant", str(tenant), "--format", "json"]
            + ["--from", first.isoformat(), "--to", last.isoformat()]
        )

    assert by_user(add_months(unkept[0], -1), NOW.date()) == 2
    err = capsys.readouterr().err
    names = ", ".join(m.strftime("%Y-%m") for m in unkept)
    assert f"no per-user figures for {names}" in err and "retention closed" in err
    assert by_user(unkept[1] + dt.timedelta(days=27), unkept[1] + dt.timedelta(days=27)) == 2
    assert unkept[1].strftime("%Y-%m") in capsys.readouterr().err
    assert by_user(closed, NOW.date()) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert sum(r["api_calls"] for r in rows) == 25
