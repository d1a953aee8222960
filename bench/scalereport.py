"""Figure 8: `report --by user` for one tenant over this month in a large table, as
load_breakdown reads it (the per-user daily rollups, revision d0e1f2a3b4c5), beside the read of
the log it made before (one tenant's rows, GROUP BY user: a parallel scan of the table at 30M
rows, whose cost followed the table rather than the tenant)."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from sqlalchemy import text

from bench.scaledata import Machine, scalar
from bench.servers import Stack
from worker.ledger import breakdown
from worker.ledger.months import day_bounds
from worker.ledger.rollup_sql import NO_USER
from worker.ledger.rollups import run_rollup

#: The statement `report --by user` ran before the per-user rollups: the tenant's rows of the
#: log over [start, end), per user.
LOG_SQL = """
SELECT user_id, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(total_tokens),
       COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),
       SUM(cost_usd::numeric), COUNT(*) FILTER (WHERE success = 'failure'),
       COUNT(*) FILTER (WHERE cost_usd IS NULL)
FROM ai_usage_logs WHERE tenant_id = :tenant AND created_at >= :start AND created_at < :end
GROUP BY 1
"""


def _scans(plan: Any) -> list[str]:
    """The plan's scan nodes, e.g. "Parallel Seq Scan on ai_usage_logs", "Bitmap Index Scan
    on idx_ai_usage_logs_tenant_created", from EXPLAIN (FORMAT JSON)."""
    out: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        kind = str(node.get("Node Type", ""))
        if "Scan" in kind:
            where = node.get("Index Name") or node.get("Relation Name") or ""
            out.append(f"{'Parallel ' if node.get('Parallel Aware') else ''}{kind} on {where}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return out


def user_report(stack: Stack, machine: Machine, tenant: str, reps: int = 3) -> dict[str, Any]:
    """`report --by user` for `tenant` over this month: as load_breakdown reads it now (the
    per-user rollups), and the log's statement it ran before (the planner's plan)."""
    first, last = breakdown.default_range()
    start, end = day_bounds(first, last)
    params = {"tenant": tenant, "start": start, "end": end}
    rollup_params = {"tenant": tenant, "first": first, "last": last, "no_user": NO_USER}

    def planned() -> Any:
        return breakdown.load_breakdown(stack.engine, "user", first, last, uuid.UUID(tenant))

    def log() -> Any:
        with stack.engine.connect() as conn:
            return conn.execute(text(LOG_SQL), params).all()

    with stack.engine.connect() as conn:
        plan_planned = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), rollup_params
        ).scalar()
        plan_log = conn.execute(text("EXPLAIN (FORMAT JSON) " + LOG_SQL), params).scalar()
    out: dict[str, Any] = {
        "rows": int(
            scalar(
                stack,
                "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = :tenant"
                " AND created_at >= :start AND created_at < :end",
                params,
            )
        ),
        "user_rollup_rows": int(
            scalar(
                stack,
                "SELECT count(*) FROM ai_usage_user_daily_rollups WHERE tenant_id = :tenant"
                " AND day >= :first AND day <= :last",
                rollup_params,
            )
        ),
        "planned_scans": _scans(plan_planned),
        "log_scans": _scans(plan_log),
    }
    for name, fn in (("planned", planned), ("log", log)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_warm_s"] = round(statistics.median(times), 3)
    for name, fn in (("planned", planned), ("log", log)):
        machine.drop()
        t0 = time.perf_counter()
        fn()
        out[f"{name}_cold_s"] = round(time.perf_counter() - t0, 3)
    return out


def rollup_month(stack: Stack) -> float:
    """Seconds to recompute this month's rollups, per-user rows included, from the log (the
    loaded rows are history: loaded with triggers off, they left no deltas)."""
    started = time.perf_counter()
    run_rollup(stack.engine, [breakdown.default_range()[0]], wait=True)
    return round(time.perf_counter() - started, 1)
