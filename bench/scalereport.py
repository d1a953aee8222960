"""Figure 8: `report --by user` for one tenant over this month in a large table, as
load_breakdown runs it (the planner's choice) and with sequential scans disabled for the
statement (the tenant's index forced): whether the index bounds the read by the tenant."""

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
    """`report --by user` for `tenant` over this month: as planned, and through the index."""
    first, last = breakdown.default_range()
    start, end = day_bounds(first, last)
    params = {"tenant": tenant, "start": start, "end": end}

    def planned() -> Any:
        return breakdown.load_breakdown(stack.engine, "user", first, last, uuid.UUID(tenant))

    def indexed() -> Any:
        with stack.engine.begin() as conn:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            return conn.execute(text(breakdown.USER_SQL), params).all()

    with stack.engine.begin() as conn:
        plan_planned = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), params
        ).scalar()
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan_indexed = conn.execute(
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
        "planned_scans": _scans(plan_planned),
        "indexed_scans": _scans(plan_indexed),
    }
    for name, fn in (("planned", planned), ("indexed", indexed)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_warm_s"] = round(statistics.median(times), 3)
    for name, fn in (("planned", planned), ("indexed", indexed)):
        machine.drop()
        t0 = time.perf_counter()
        fn()
        out[f"{name}_cold_s"] = round(time.perf_counter() - t0, 3)
    return out
