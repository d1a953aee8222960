"""`report --by user` reads one tenant's range through its index, whatever the planner's
statistics say (issue 27), and leaves the caller's connection as it found it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, text

from tests.conftest import make_tenant
from worker.ledger.breakdown import USER_SQL, default_range, load_breakdown, plan_user_query
from worker.ledger.months import day_bounds

_FILL = """
INSERT INTO ai_usage_logs (id, tenant_id, user_id, operation, model, input_tokens,
    output_tokens, total_tokens, cost_usd, duration_ms, success, created_at)
SELECT gen_random_uuid(), :tenant, (CAST(:users AS uuid[]))[1 + g % 3], 'op', 'm', 10, 5, 15,
       CASE WHEN g % 10 = 0 THEN NULL ELSE 0.001 END, 100,
       CASE WHEN g % 7 = 0 THEN 'failure' ELSE 'success' END,
       CAST(:start AS timestamptz) + g * interval '1 second'
FROM generate_series(1, :n) AS g
"""


def _scans(conn: Connection, params: dict[str, Any]) -> list[str]:
    lines = conn.execute(text("EXPLAIN " + USER_SQL), params).scalars()
    return [line.strip() for line in lines if "Scan" in line]


def test_user_report_scans_the_tenants_index_and_restores_the_planner(db: Engine) -> None:
    tenant = make_tenant(db, "all-the-rows")
    users = [uuid.uuid4() for _ in range(3)]
    first, last = default_range()
    start, end = day_bounds(first, last)
    with db.begin() as conn:
        for u in users:
            conn.execute(
                text("INSERT INTO users (id, tenant_id, name) VALUES (:id, :t, :n)"),
                {"id": u, "t": tenant, "n": str(u)},
            )
        conn.execute(
            text(_FILL),
            {
                "tenant": tenant,
                "users": [str(u) for u in users],
                "start": dt.datetime.combine(first, dt.time(), dt.UTC),
                "n": 20_000,
            },
        )
    with db.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE ai_usage_logs"))
    params = {"tenant": tenant, "start": start, "end": end}
    with db.connect() as conn:
        # The tenant holds every row: left alone, the planner reads the whole table.
        default = _scans(conn, params)
        assert any("Seq Scan on ai_usage_logs" in s for s in default), default
        expected = conn.execute(text(USER_SQL), params).all()
        previous = plan_user_query(conn)
        assert previous == {"enable_seqscan": "on"}
        planned = _scans(conn, params)
        conn.rollback()  # the setting was local to the transaction
        assert not any("Seq Scan" in s for s in planned), planned
        assert any("idx_ai_usage_logs_tenant" in s for s in planned), planned

        # Given a connection, load_breakdown plans its own statement only.
        got = load_breakdown(conn, "user", first, last, tenant)
        assert conn.execute(text("SHOW enable_seqscan")).scalar() == "on"
        assert _scans(conn, params) == default
    by_user = {r.key: (r.api_calls, r.failed_calls, r.unpriced_calls) for r in got.rows}
    assert by_user == {
        str(user): (calls, failed, unpriced) for user, calls, *_, failed, unpriced in expected
    }
    assert sum(calls for calls, _, _ in by_user.values()) == 20_000
