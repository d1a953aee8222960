"""Revision d0e1f2a3b4c5 on a ledger with history: the deltas pending at upgrade (which have no
user) are folded first, the per-user rows come from the log of the open months only, nothing is
counted twice or lost; rollup code that predates it is refused; the downgrade restores the
previous trigger function exactly."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from alembic import command
from tests.conftest import alembic_config
from tests.rollup_checks import USERS, assert_users_exact, user_buckets
from tests.test_rollup_deltas import THIS_MONTH, assert_daily_exact, event
from tests.test_rollups import assert_rollups_exact
from worker.ledger.ingest import write_batch
from worker.ledger.months import add_months
from worker.ledger.pricing import Pricer
from worker.ledger.rollups import run_rollup

BEFORE = "b8c9d0e1f2a3"
UTC = dt.UTC

# A run of the code before this revision (rollup_sql at b8c9d0e1f2a3), frozen: fold the deltas
# into the daily rows, drop emptied buckets, derive the monthly rows of the months touched.
_COLS = (
    "tenant_id, day, model, operation, success, api_calls, input_tokens, output_tokens,"
    " total_tokens, cache_read_tokens, cache_write_tokens, unpriced_calls, failed_calls, cost_usd"
)
_MEASURES = _COLS.split(", ")[5:]
OLD_FOLD = (
    "WITH taken AS (DELETE FROM ai_usage_rollup_deltas RETURNING " + _COLS + ")"
    " INSERT INTO ai_usage_daily_rollups AS d (" + _COLS + ")"
    " SELECT tenant_id, day, model, operation, success, "
    + ", ".join(f"SUM({m})" for m in _MEASURES)
    + " FROM taken GROUP BY 1, 2, 3, 4, 5"
    " ON CONFLICT (tenant_id, day, model, operation, success) DO UPDATE SET "
    + ", ".join(f"{m} = d.{m} + EXCLUDED.{m}" for m in _MEASURES)
)
OLD_DERIVE = (
    "DELETE FROM ai_usage_daily_rollups WHERE api_calls = 0",
    "DELETE FROM ai_usage_monthly_rollups",
    "INSERT INTO ai_usage_monthly_rollups (tenant_id, month, api_calls, total_input_tokens,"
    " total_output_tokens, total_tokens, total_cost_usd, failed_calls, unpriced_calls,"
    " total_cache_read_tokens, total_cache_write_tokens)"
    " SELECT tenant_id, date_trunc('month', day)::date, SUM(api_calls), SUM(input_tokens),"
    " SUM(output_tokens), SUM(total_tokens),"
    " CASE WHEN SUM(api_calls) > SUM(unpriced_calls) THEN SUM(cost_usd) END,"
    " SUM(failed_calls), SUM(unpriced_calls), SUM(cache_read_tokens),"
    " SUM(cache_write_tokens) FROM ai_usage_daily_rollups GROUP BY 1, 2",
)
FUNCTION = "SELECT prosrc FROM pg_proc WHERE proname = 'ai_usage_log_delta'"


def old_run(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(OLD_FOLD))
        for statement in OLD_DERIVE:
            conn.execute(text(statement))


def setup_ledger(conn: Connection) -> tuple[uuid.UUID, list[uuid.UUID]]:
    tenant = conn.execute(text("INSERT INTO tenants (name) VALUES ('t') RETURNING id")).scalar_one()
    users = list(
        conn.execute(
            text(
                "INSERT INTO users (tenant_id, name) SELECT :t, 'u' FROM generate_series(1, 3)"
                " RETURNING id"
            ),
            {"t": tenant},
        ).scalars()
    )
    return tenant, users


def test_upgrade_folds_pending_deltas_then_backfills_and_downgrade_restores(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    cfg = alembic_config(url)
    command.upgrade(cfg, BEFORE)
    with engine.begin() as conn:
        tenant, users = setup_ledger(conn)
        function_before = conn.execute(text(FUNCTION)).scalar_one()
    rng = random.Random(6)
    last = add_months(THIS_MONTH, -1)
    when = [dt.datetime(last.year, last.month, 2, tzinfo=UTC), dt.datetime.now(UTC)]

    def batch(n: int) -> list[dict[str, object]]:
        out = []
        for _ in range(n):
            who = rng.choice([*users, None])
            out.append(
                event(tenant, rng.choice(when), rng, **({"user_id": str(who)} if who else {}))
            )
        return out

    write_batch(engine, batch(40), Pricer())
    old_run(engine)  # folded by the code of the time
    # Pending at upgrade: more rows, a delete of folded rows, an update that moves cost.
    write_batch(engine, batch(30), Pricer())
    closed = add_months(THIS_MONTH, -15)
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM ai_usage_logs WHERE id IN (SELECT id FROM ai_usage_logs LIMIT 7)")
        )
        conn.execute(text("UPDATE ai_usage_logs SET cost_usd = 0.5 WHERE cost_usd IS NULL"))
        # A month closed by retention whose last raw rows were not deleted yet.
        conn.execute(text("INSERT INTO ai_usage_closed_months (month) VALUES (:m)"), {"m": closed})
        conn.execute(
            text(
                "INSERT INTO ai_usage_logs (id, tenant_id, user_id, operation, model,"
                " input_tokens, output_tokens, total_tokens, success, created_at)"
                " VALUES (gen_random_uuid(), :t, :u, 'op', 'm', 1, 2, 3, 'success', :c)"
            ),
            {
                "t": tenant,
                "u": users[0],
                "c": dt.datetime(closed.year, closed.month, 4, tzinfo=UTC),
            },
        )
        assert conn.execute(text("SELECT count(*) FROM ai_usage_rollup_deltas")).scalar_one() > 0

    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ai_usage_rollup_deltas")).scalar() == 0
        assert conn.execute(
            text("SELECT month, has_user_rollups FROM ai_usage_closed_months")
        ).all() == [(closed, False)]
    open_months = f"WHERE day >= '{add_months(closed, 1)}'"
    assert_daily_exact(engine, open_months)  # per-user rows included
    assert_rollups_exact(engine)
    assert not user_buckets(engine, USERS, f"WHERE day < '{add_months(closed, 1)}'")

    # The new code from here: more writes, a run, every row once in each table.
    write_batch(engine, batch(25), Pricer())
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM ai_usage_logs WHERE user_id = :u"), {"u": users[1]})
    run_rollup(engine, wait=True)
    assert_daily_exact(engine, open_months)
    assert_rollups_exact(engine)
    # Rollup code from before the revision would drop the deltas' users: it is refused.
    write_batch(engine, batch(5), Pricer())
    with pytest.raises(DBAPIError, match="predates the per-user rollups"):
        old_run(engine)

    command.downgrade(cfg, BEFORE)
    with engine.connect() as conn:
        assert conn.execute(text(FUNCTION)).scalar_one() == function_before
        assert (
            conn.execute(text("SELECT to_regclass('ai_usage_user_daily_rollups')")).scalar() is None
        )
    old_run(engine)  # the pending per-user deltas fold as the old code folds them
    assert_rollups_exact(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ai_usage_rollup_deltas")).scalar() == 0
    command.upgrade(cfg, "head")
    assert_users_exact(engine, open_months)
