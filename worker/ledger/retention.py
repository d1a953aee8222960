"""Retention: `ai-usage prune --older-than 13m` deletes the raw rows of closed months.

A month is closed when it began more than N months before the current UTC month (13m keeps the
current month and the 13 before it). Before any row goes, pending deltas are folded and the
months are recorded in ai_usage_closed_months: from then on their rollups are final (a
recompute refuses them) and the worker dead-letters late events for them. Rows are then deleted
in small batches, each its own short transaction (index on created_at, no table lock), with
`ai_usage.pruning` set so that the deletes leave no delta: ingestion goes on meanwhile.

In the partitioned layout (worker.ledger.layout) a closed month's rows go with its partition:
`DETACH PARTITION ... CONCURRENTLY`, then `DROP TABLE` (worker.ledger.partitions). No row is
deleted one by one, nothing is left to vacuum, and a DROP fires no trigger (no delta)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from worker.ledger.layout import log_layout
from worker.ledger.months import add_months, month_bounds, month_start

_CANDIDATES = """
SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date
FROM ai_usage_logs WHERE created_at < :cutoff
UNION
SELECT month FROM ai_usage_monthly_rollups WHERE month < :cutoff_month
"""
# Partitioned: the months with rows before the cutoff are those of its partitions (read from
# the catalog, not by scanning months of rows).
_PARTITION_CANDIDATES = """
SELECT month FROM ai_usage_monthly_rollups WHERE month < :cutoff_month
"""
_CLOSE = """
INSERT INTO ai_usage_closed_months (month) SELECT unnest(CAST(:months AS date[]))
ON CONFLICT (month) DO NOTHING RETURNING month
"""
_DELETE = """
DELETE FROM ai_usage_logs WHERE id IN (
    SELECT id FROM ai_usage_logs WHERE created_at < :cutoff LIMIT :batch
) RETURNING date_trunc('month', created_at AT TIME ZONE 'UTC')::date
"""
_COUNT = "UPDATE ai_usage_closed_months SET rows_pruned = rows_pruned + :n WHERE month = :month"


@dataclass
class PruneResult:
    """What `prune` did: the months closed and the raw rows deleted from each."""

    cutoff: dt.date
    #: Every month before the cutoff that holds rows or rollups (closed now or before).
    months: list[dt.date] = field(default_factory=list)
    #: Those this call closed.
    newly_closed: list[dt.date] = field(default_factory=list)
    rows_deleted: Counter[dt.date] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "months_closed": [m.strftime("%Y-%m") for m in self.months],
            "newly_closed": [m.strftime("%Y-%m") for m in self.newly_closed],
            "rows_deleted": sum(self.rows_deleted.values()),
        }


def cutoff_for(older_than_months: int, now: dt.datetime | None = None) -> dt.date:
    """The first month kept: months before it are closed."""
    if older_than_months < 1:
        raise ValueError("older-than must be at least 1 month")
    return add_months(month_start(now or dt.datetime.now(dt.UTC)), -older_than_months)


def prune(
    engine: Engine, older_than_months: int, *, batch: int = 5000, now: dt.datetime | None = None
) -> PruneResult:
    """Close every month before the cutoff and delete its raw rows: batch by batch, or, in
    the partitioned layout, by dropping its partition (`batch` is then unused)."""
    from worker.ledger.partitions import drop_partitions_before, months_with_rows
    from worker.ledger.rollups import run_rollup

    cutoff_month = cutoff_for(older_than_months, now)
    cutoff, _ = month_bounds(cutoff_month)
    result = PruneResult(cutoff_month)
    # Everything committed so far is in the rollups before they become final.
    run_rollup(engine, wait=True)
    with engine.begin() as conn:
        partitioned = log_layout(conn) == "partitioned"
    # A partition that holds rows is dropped only once its month is closed: late events for
    # it are then dead-lettered as for any closed month, never written into a partition about
    # to go. An empty one is just dropped (nothing to close; see drop_partitions_before).
    held = months_with_rows(engine, cutoff_month) if partitioned else set()
    with engine.begin() as conn:
        params = {"cutoff": cutoff, "cutoff_month": cutoff_month}
        found = conn.execute(
            text(_PARTITION_CANDIDATES if partitioned else _CANDIDATES), params
        ).scalars()
        result.months = sorted(set(found) | held)
        if result.months:
            closed = conn.execute(text(_CLOSE), {"months": result.months}).scalars()
            result.newly_closed = sorted(closed)
    if partitioned:
        result.rows_deleted.update(drop_partitions_before(engine, cutoff_month))
        return result
    while result.months:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL ai_usage.pruning = 'on'"))
            deleted = Counter(
                conn.execute(text(_DELETE), {"cutoff": cutoff, "batch": batch}).scalars()
            )
            for month, n in deleted.items():
                conn.execute(text(_COUNT), {"n": n, "month": month})
        if not deleted:
            break
        result.rows_deleted.update(deleted)
    return result
