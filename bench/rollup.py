"""Figure 6: rolling up a large log, and the report's latency with a small and a large log.

Rows are COPied straight into ai_usage_logs (FKs and the dirty-month trigger apply) over the
current month and the two before it, for 100 tenants. The report (worker.ledger.report.load_report
+ render, in-process, table format) reads rollups only, so its latency should not grow with
the log; it is timed over several repetitions and the median is kept."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from bench import data
from bench.servers import Stack
from worker.ledger.report import load_report, render
from worker.ledger.rollups import month_start, run_rollup

MONTHS = 3


def _report_ms(stack: Stack, reps: int) -> dict[str, Any]:
    month = month_start(dt.datetime.now(dt.UTC))
    render(load_report(stack.engine, month), "table")  # warm the pool and the plan cache
    times: list[float] = []
    lines = 0
    for _ in range(reps):
        started = time.perf_counter()
        out = render(load_report(stack.engine, month), "table")
        times.append((time.perf_counter() - started) * 1000)
        lines = out.count("\n") + 1
    return {
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "max_ms": round(max(times), 3),
        "repetitions": reps,
        "report_lines": lines,
    }


def _load(stack: Stack, n: int, tenants: Sequence[str], seed: int) -> float:
    """Seconds to generate and COPY `n` rows (in chunks of 100k, to bound memory)."""
    started = time.perf_counter()
    for i, start in enumerate(range(0, n, 100_000)):
        chunk = min(100_000, n - start)
        data.copy_rows(stack, data.spread_rows(chunk, tenants, MONTHS, seed * 1000 + i))
    return time.perf_counter() - started


def rollups(
    stack: Stack, tenants: Sequence[str], small: int, big: int, reps: int
) -> dict[str, Any]:
    """Report latency with `small` rows, then `big` rows; rollup time of `big` rows."""
    stack.truncate()
    _load(stack, small, tenants, seed=1)
    stack.analyze()
    run_rollup(stack.engine, wait=True)
    report_small = _report_ms(stack, reps)

    load_s = _load(stack, big - small, tenants, seed=2)
    stack.analyze()
    rows = data.count_rows(stack)
    with stack.engine.connect() as conn:
        dirty = int(conn.execute(text("SELECT count(*) FROM ai_usage_rollup_dirty")).scalar_one())
    # As Beat runs it: every dirty tenant-month (all three months here) plus the current month.
    beat = run_rollup(stack.engine, wait=True)
    months = sorted({month_start(m) for m in beat.months})
    again = [run_rollup(stack.engine, months, wait=True).seconds for _ in range(2)]
    report_big = _report_ms(stack, reps)
    with stack.engine.connect() as conn:
        rolled = conn.execute(
            text("SELECT count(*), coalesce(sum(api_calls), 0) FROM ai_usage_monthly_rollups")
        ).one()
    stack.truncate()
    return {
        "tenants": len(tenants),
        "months": MONTHS,
        "rows": rows,
        "rows_small": small,
        "load_seconds": round(load_s, 3),
        "load_rows_per_s": round((big - small) / load_s) if load_s else None,
        "dirty_tenant_months": dirty,
        "rollup_seconds": round(beat.seconds, 4),
        "rollup_rerun_seconds": [round(s, 4) for s in again],
        "rollup_rows_written": beat.rows_written,
        "rollup_rows": int(rolled[0]),
        "rolled_up_calls": int(rolled[1]),
        "report_small": report_small,
        "report_big": report_big,
    }
