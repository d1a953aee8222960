"""Figure 8: `report --by user` for one tenant over this month in a large table: the log
query with the planner's defaults (what it ran before issue 27) and load_breakdown (now)."""

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
    """`report --by user` for `tenant` over this month: the log query with the planner's
    defaults (before) and load_breakdown (now)."""
    first, last = breakdown.default_range()
    start, end = day_bounds(first, last)
    params = {"tenant": tenant, "start": start, "end": end}

    def before() -> Any:
        with stack.engine.connect() as conn:
            return conn.execute(text(breakdown.USER_SQL), params).all()

    def after() -> Any:
        return breakdown.load_breakdown(stack.engine, "user", first, last, uuid.UUID(tenant))

    with stack.engine.connect() as conn:
        plan_before = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), params
        ).scalar()
    with stack.engine.begin() as conn:
        breakdown.plan_user_query(conn)
        plan_after = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), params
        ).scalar()
    out: dict[str, Any] = {
        "rows": int(
            scalar(
                stack,
                "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = :tenant"
                " AND created_at >= :start AND created_at < :end",
                params,
            )
        ),
        "before_scans": _scans(plan_before),
        "after_scans": _scans(plan_after),
    }
    for name, fn in (("before", before), ("after", after)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_warm_s"] = round(statistics.median(times), 3)
    for name, fn in (("before", before), ("after", after)):
        machine.drop()
        t0 = time.perf_counter()
        fn()
        out[f"{name}_cold_s"] = round(time.perf_counter() - t0, 3)
    return out
