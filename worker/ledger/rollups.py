"""Rollups: daily buckets (tenant, UTC day, model, operation, success) and per-user daily
buckets (tenant, UTC day, user) folded from the log's transactional deltas, and the monthly
per-tenant rows derived from the daily ones.

Every statement on ai_usage_logs appends what it changed, per bucket and user, signed, to
ai_usage_rollup_deltas, in the writer's own transaction (the trigger of revision f6a7b8c9d0e1,
grouped by user since d0e1f2a3b4c5). A run, in one REPEATABLE READ transaction:
1. deletes the deltas its snapshot sees and adds them, in the same statement, into the daily
   rows and the per-user rows;
2. drops the buckets of either table left with no call;
3. recomputes the monthly rows of the tenant-months it touched from their daily rows.
A delta is visible exactly when its rows are, and a run consumes what it sees in the same
transaction it folds it, so a row committed at any moment is counted once: by this run or by the
next. Writers only append deltas, so nothing a run holds makes them wait, and a run's cost is
that of what changed since the last, not that of the month. Runs are serialised by a session
advisory lock, taken before the snapshot. The sums are NUMERIC and integers: exact whatever the
order, so folding equals recomputing (the randomised tests compare every bucket with the log).
`ai-usage rollup --month` recomputes months from the log outright, per-user rows included.
The run sets `ai_usage.folding`: without it the deltas table refuses a DELETE, so rollup code
that predates the per-user rows (and would fold the deltas into the daily rows only) fails
instead of losing them.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker import metrics
from worker.ledger import rollup_sql as sql
from worker.ledger.months import month_bounds, month_start, next_month, parse_month

__all__ = [
    "ROLLUP_LOCK_KEY",
    "ClosedMonthError",
    "RollupResult",
    "closed_months",
    "month_bounds",
    "month_start",
    "parse_month",
    "rollup_lock",
    "run_rollup",
]

#: Advisory lock key of the rollup ("aiusage" in ASCII, as a bigint).
ROLLUP_LOCK_KEY = 0x616975736167


class ClosedMonthError(ValueError):
    """A month retention closed cannot be recomputed: its raw rows are gone."""


@dataclass
class RollupResult:
    """What one run did."""

    ran: bool
    months: list[dt.date] = field(default_factory=list)
    buckets: int = 0
    rows_written: int = 0
    rows_deleted: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "months": [m.isoformat() for m in self.months],
            "buckets": self.buckets,
            "rows_written": self.rows_written,
            "rows_deleted": self.rows_deleted,
            "seconds": round(self.seconds, 3),
        }


@contextmanager
def rollup_lock(conn: Connection, wait: bool) -> Iterator[bool]:
    """Hold the rollup's session advisory lock on `conn` (outside any snapshot the run takes).
    Yields False, holding nothing, when another run has it and `wait` is false."""
    fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    got = conn.execute(text(f"SELECT {fn}(:k)"), {"k": ROLLUP_LOCK_KEY}).scalar()
    got = True if wait else bool(got)
    conn.commit()
    try:
        yield got
    finally:
        if got:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ROLLUP_LOCK_KEY})
            conn.commit()


def closed_months(conn: Connection) -> set[dt.date]:
    """The months retention has closed."""
    return set(conn.execute(text("SELECT month FROM ai_usage_closed_months")).scalars())


def run_rollup(
    engine: Engine,
    months: Iterable[dt.date] | None = None,
    *,
    wait: bool = False,
) -> RollupResult:
    """One run: fold the deltas, and with `months` (the CLI) recompute those months from the
    log. Returns `ran=False` at once if another run holds the lock, unless `wait`."""
    started = time.perf_counter()
    recompute = sorted({month_start(m) for m in months or ()})
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ")
        with rollup_lock(conn, wait) as got:
            if not got:
                return RollupResult(ran=False)
            with conn.begin():
                closed = closed_months(conn) & set(recompute)
                if closed:
                    names = ", ".join(m.strftime("%Y-%m") for m in sorted(closed))
                    raise ClosedMonthError(
                        f"month {names} is closed by retention (its raw rows were pruned):"
                        " its rollups are final and cannot be recomputed"
                    )
                result = _run(conn, recompute)
                result.seconds = time.perf_counter() - started
                conn.execute(
                    text(sql.STATE), {"ms": int(result.seconds * 1000), "n": len(result.months)}
                )
    metrics.ROLLUP_SECONDS.observe(result.seconds)
    metrics.ROLLUP_LAST_SUCCESS.set_to_current_time()
    return result


def _run(conn: Connection, recompute: list[dt.date]) -> RollupResult:
    result = RollupResult(ran=True)
    touched: set[tuple[uuid.UUID, dt.date]] = set()
    empty: list[tuple[Any, ...]] = []
    empty_users: list[tuple[Any, ...]] = []
    conn.execute(text("SET LOCAL ai_usage.folding = 'on'"))
    for table, tenant, day, model, operation, success, calls in conn.execute(text(sql.FOLD)):
        if table == "u":  # a per-user bucket left with no call; `model` holds its user_id
            empty_users.append((tenant, day, model))
            continue
        result.buckets += 1
        touched.add((tenant, month_start(day)))
        if calls == 0:
            empty.append((tenant, day, model, operation, success))
    if empty_users:
        cols = list(zip(*empty_users, strict=True))
        conn.execute(
            text(sql.DROP_EMPTY_USERS), {"t": list(cols[0]), "d": list(cols[1]), "u": list(cols[2])}
        )
    if empty:
        cols = list(zip(*empty, strict=True))
        conn.execute(
            text(sql.DROP_EMPTY),
            {
                "t": list(cols[0]),
                "d": list(cols[1]),
                "m": list(cols[2]),
                "o": list(cols[3]),
                "s": list(cols[4]),
            },
        )
    for month in recompute:
        start, end = month_bounds(month)
        bounds = {"first": month, "after": next_month(month), "start": start, "end": end}
        for statement in (sql.CLEAR_DAYS, sql.FROM_LOG):
            touched.update((t, month) for t in conn.execute(text(statement), bounds).scalars())
    if touched:
        pairs = sorted(touched)
        written, deleted = conn.execute(
            text(sql.MONTHLY), {"t": [t for t, _ in pairs], "m": [m for _, m in pairs]}
        ).one()
        result.rows_written, result.rows_deleted = int(written), int(deleted)
    result.months = sorted({m for _, m in touched})
    return result
