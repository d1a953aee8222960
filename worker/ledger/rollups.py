"""Monthly per-tenant rollups, recomputed from the log (never incremented), and repricing.

A statement trigger on ai_usage_logs marks each (tenant, month) a write touches in
ai_usage_rollup_dirty. A run takes those marks, adds the current UTC month (all tenants), and
replaces each affected rollup row with the spec's aggregate over [first of month, first of
next month) UTC; a tenant-month left with no rows loses its rollup row. Runs are serialised by
a transaction-level advisory lock, so concurrent or repeated runs give the same result.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker import metrics
from worker.ledger.pricing import Pricer, PricingError, Usage

#: pg_advisory_xact_lock key of the rollup ("aiusage" in ASCII, as a bigint).
ROLLUP_LOCK_KEY = 0x616975736167


def month_start(value: dt.date | dt.datetime) -> dt.date:
    """The first day of `value`'s month (a datetime is taken in UTC)."""
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC).date() if value.tzinfo else value.date()
    return value.replace(day=1)


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[first of month, first of next month) as UTC datetimes."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    nxt = dt.datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, nxt


def parse_month(value: str) -> dt.date:
    """`YYYY-MM` to the first day of that month; ValueError names the expected form."""
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"month must look like YYYY-MM, got {value!r}") from None


@dataclass
class RollupResult:
    """What one run did."""

    ran: bool
    months: list[dt.date] = field(default_factory=list)
    rows_written: int = 0
    rows_deleted: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "months": [m.isoformat() for m in self.months],
            "rows_written": self.rows_written,
            "rows_deleted": self.rows_deleted,
            "seconds": round(self.seconds, 3),
        }


_AGGREGATE = """
WITH agg AS (
    SELECT tenant_id,
           COUNT(*) AS api_calls,
           SUM(input_tokens) AS total_input_tokens,
           SUM(output_tokens) AS total_output_tokens,
           SUM(total_tokens) AS total_tokens,
           SUM(cost_usd::numeric) AS total_cost_usd,
           COUNT(*) FILTER (WHERE success = 'failure') AS failed_calls,
           COUNT(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
           COALESCE(SUM(cache_read_tokens), 0) AS total_cache_read_tokens,
           COALESCE(SUM(cache_write_tokens), 0) AS total_cache_write_tokens
    FROM ai_usage_logs
    WHERE created_at >= :start AND created_at < :end {tenant_filter}
    GROUP BY tenant_id
), upserted AS (
    INSERT INTO ai_usage_monthly_rollups (
        tenant_id, month, api_calls, total_input_tokens, total_output_tokens, total_tokens,
        total_cost_usd, failed_calls, unpriced_calls, total_cache_read_tokens,
        total_cache_write_tokens, computed_at)
    SELECT tenant_id, :month, api_calls, total_input_tokens, total_output_tokens, total_tokens,
           total_cost_usd, failed_calls, unpriced_calls, total_cache_read_tokens,
           total_cache_write_tokens, now()
    FROM agg
    ON CONFLICT (tenant_id, month) DO UPDATE SET
        api_calls = EXCLUDED.api_calls,
        total_input_tokens = EXCLUDED.total_input_tokens,
        total_output_tokens = EXCLUDED.total_output_tokens,
        total_tokens = EXCLUDED.total_tokens,
        total_cost_usd = EXCLUDED.total_cost_usd,
        failed_calls = EXCLUDED.failed_calls,
        unpriced_calls = EXCLUDED.unpriced_calls,
        total_cache_read_tokens = EXCLUDED.total_cache_read_tokens,
        total_cache_write_tokens = EXCLUDED.total_cache_write_tokens,
        computed_at = EXCLUDED.computed_at
    RETURNING 1
), deleted AS (
    DELETE FROM ai_usage_monthly_rollups r
    WHERE r.month = :month {rollup_filter}
      AND NOT EXISTS (SELECT 1 FROM agg WHERE agg.tenant_id = r.tenant_id)
    RETURNING 1
)
SELECT (SELECT COUNT(*) FROM upserted), (SELECT COUNT(*) FROM deleted)
"""


def recompute_month(
    conn: Connection, month: dt.date, tenants: Iterable[uuid.UUID] | None = None
) -> tuple[int, int]:
    """Replace the rollup rows of `month` (all tenants, or only `tenants`) from the log.
    Returns (rows written, stale rows deleted). The caller holds the rollup lock."""
    start, end = month_bounds(month)
    params: dict[str, Any] = {"start": start, "end": end, "month": month}
    if tenants is None:
        sql = _AGGREGATE.format(tenant_filter="", rollup_filter="")
    else:
        params["tenants"] = list(tenants)
        sql = _AGGREGATE.format(
            tenant_filter="AND tenant_id = ANY(CAST(:tenants AS uuid[]))",
            rollup_filter="AND r.tenant_id = ANY(CAST(:tenants AS uuid[]))",
        )
    written, deleted = conn.execute(text(sql), params).one()
    return int(written), int(deleted)


def run_rollup(
    engine: Engine,
    months: Iterable[dt.date] | None = None,
    *,
    wait: bool = False,
    now: dt.datetime | None = None,
) -> RollupResult:
    """One rollup run.

    With `months` None (Beat): the dirty tenant-months plus the whole current month. With
    `months` given (CLI): those months, all tenants. If another run holds the lock, returns
    `ran=False` at once, or waits for it when `wait`."""
    started = time.perf_counter()
    today = month_start(now or dt.datetime.now(dt.UTC))
    result = RollupResult(ran=True)
    with engine.begin() as conn:
        if wait:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROLLUP_LOCK_KEY})
        elif not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ROLLUP_LOCK_KEY}
        ).scalar_one():
            return RollupResult(ran=False)
        # Wait for every writer that has marked a month dirty to commit, and hold off new
        # marks until this run commits: a writer whose mark already existed would otherwise
        # commit rows this run cannot see after it has taken (deleted) that mark.
        conn.execute(text("LOCK TABLE ai_usage_rollup_dirty IN SHARE ROW EXCLUSIVE MODE"))
        plan: dict[dt.date, set[uuid.UUID] | None] = {}
        if months is None:
            dirty: dict[dt.date, set[uuid.UUID]] = defaultdict(set)
            for tenant_id, month in conn.execute(
                text("DELETE FROM ai_usage_rollup_dirty RETURNING tenant_id, month")
            ):
                dirty[month].add(tenant_id)
            plan.update(dirty)
            plan[today] = None
        else:
            for month in months:
                plan[month_start(month)] = None
            conn.execute(
                text("DELETE FROM ai_usage_rollup_dirty WHERE month = ANY(CAST(:m AS date[]))"),
                {"m": list(plan)},
            )
        for month in sorted(plan):
            written, deleted = recompute_month(conn, month, plan[month])
            result.rows_written += written
            result.rows_deleted += deleted
        result.months = sorted(plan)
        result.seconds = time.perf_counter() - started
        conn.execute(
            text(
                "INSERT INTO ai_usage_rollup_state (id, last_success_at, last_duration_ms,"
                " months_recomputed) VALUES (1, now(), :ms, :n) ON CONFLICT (id) DO UPDATE SET"
                " last_success_at = EXCLUDED.last_success_at,"
                " last_duration_ms = EXCLUDED.last_duration_ms,"
                " months_recomputed = EXCLUDED.months_recomputed"
            ),
            {"ms": int(result.seconds * 1000), "n": len(plan)},
        )
    metrics.ROLLUP_SECONDS.observe(result.seconds)
    metrics.ROLLUP_LAST_SUCCESS.set_to_current_time()
    return result


@dataclass
class RepriceResult:
    """What `reprice` did."""

    priced: int
    still_unpriced: int
    months: list[dt.date]


def reprice(
    engine: Engine, pricer: Pricer, month: dt.date | None = None, chunk: int = 5000
) -> RepriceResult:
    """Price rows whose cost_usd is NULL at their own created_at, where a price now exists.
    Rows that already have a cost are never touched. Then refreshes the affected rollups."""
    where = "cost_usd IS NULL"
    params: dict[str, Any] = {}
    if month is not None:
        start, end = month_bounds(month)
        where += " AND created_at >= :start AND created_at < :end"
        params = {"start": start, "end": end}
    priced = 0
    still = 0
    months: set[dt.date] = set()
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT id, model, provider, input_tokens, output_tokens, cache_read_tokens,"
                " cache_write_tokens, usage_details, success, created_at FROM ai_usage_logs"
                f" WHERE {where} ORDER BY created_at"
            ),
            params,
        ).all()
        updates: list[dict[str, Any]] = []
        for row_id, model, provider, inp, out, read, write, details, ok, created_at in rows:
            usage = Usage(inp, out, read or 0, write or 0, details or {})
            if usage.is_empty() and ok == "success":
                still += 1  # no usage reported: unknown, never free
                continue
            try:
                cost = pricer.price_usage(model, provider, usage, created_at)
            except PricingError:
                cost = None
            if cost is None:
                still += 1
                continue
            updates.append({"id": row_id, "cost": float(cost)})
            months.add(month_start(created_at))
        for i in range(0, len(updates), chunk):
            res = conn.execute(
                text(
                    "UPDATE ai_usage_logs SET cost_usd = :cost WHERE id = :id AND cost_usd IS NULL"
                ),
                updates[i : i + chunk],
            )
            priced += res.rowcount
    if months:
        run_rollup(engine, sorted(months), wait=True)
    return RepriceResult(priced=priced, still_unpriced=still, months=sorted(months))
