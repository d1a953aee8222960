"""Partition maintenance in the partitioned layout (worker.ledger.layout): list the months'
partitions, make the ones ahead (Beat's `ai_usage.partitions`, daily), and, for retention, detach
and drop those of closed months. In the plain layout listing is empty and ensuring does nothing.

There is no DEFAULT partition, on purpose: `DETACH PARTITION ... CONCURRENTLY` is refused while
one exists, and rows in it would block making their month's partition. An event for a month
without a partition is dead-lettered instead (worker.ledger.ingest), to be replayed once
`ai-usage partitions create YYYY-MM` has made it."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker.ledger.layout import (
    PARENT,
    log_layout,
    partition_month,
    partition_name,
    partition_statements,
)
from worker.ledger.months import add_months, month_start

__all__ = [
    "AHEAD",
    "RETENTION_MARK",
    "Partition",
    "PartitionError",
    "create_partition",
    "drop_partitions_before",
    "ensure_partitions",
    "list_partitions",
]

#: Months made ahead of the current one by ensure_partitions (and by the migration).
AHEAD = 3
# One key for everything that adds or removes partitions: two Beats, a CLI and a prune never
# race each other into "already exists" or a half-made month.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('ai_usage_logs partitions'))"
_SESSION_LOCK = "SELECT pg_advisory_lock(hashtext('ai_usage_logs partitions'))"
_SESSION_UNLOCK = "SELECT pg_advisory_unlock(hashtext('ai_usage_logs partitions'))"
_LIST = f"""
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass('{PARENT}') ORDER BY c.relname
"""
#: The comment retention puts on a partition before it detaches it: a table that bears it and
#: is no longer a partition was left by a run interrupted between its DETACH and its DROP.
#: A partition the operator detached by hand (to archive it, say) never bears it.
RETENTION_MARK = "ai-usage retention: detached to be dropped"
_LEFT_DETACHED = f"""
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
  AND c.relname ~ '^{PARENT}_[0-9]{{4}}_[0-9]{{2}}$' AND NOT c.relispartition
  AND obj_description(c.oid, 'pg_class') = '{RETENTION_MARK}'
"""
_CLOSED = "SELECT month FROM ai_usage_closed_months"
_COUNT = """
INSERT INTO ai_usage_closed_months (month, rows_pruned) VALUES (:month, :n)
ON CONFLICT (month) DO UPDATE SET rows_pruned = ai_usage_closed_months.rows_pruned + :n
"""


class PartitionError(Exception):
    """A partition operation refused, with one line saying why (the CLI's exit code 2)."""


@dataclass(frozen=True)
class Partition:
    """One partition of ai_usage_logs."""

    name: str
    #: The month its name stands for (None: not one of ours, attached by hand).
    month: dt.date | None
    #: PostgreSQL's own text of its bounds (FOR VALUES FROM (...) TO (...)).
    bounds: str
    #: Left half-detached by an interrupted `DETACH ... CONCURRENTLY` (retention finishes it).
    detach_pending: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "month": self.month.strftime("%Y-%m") if self.month else None,
            "bounds": self.bounds,
            "detach_pending": self.detach_pending,
        }


def list_partitions(engine: Engine) -> list[Partition]:
    """The partitions of ai_usage_logs, by name (empty in the plain layout)."""
    with engine.connect() as conn:
        return _partitions(conn)


def _partitions(conn: Connection) -> list[Partition]:
    return [
        Partition(str(name), partition_month(str(name)), str(bounds), bool(pending))
        for name, bounds, pending in conn.execute(text(_LIST))
    ]


def months_with_rows(engine: Engine, before: dt.date) -> set[dt.date]:
    """The months before `before` whose partition holds at least one row (one index probe
    each, never a count)."""
    with engine.connect() as conn:
        parts = [p for p in _partitions(conn) if p.month is not None and p.month < before]
        return {
            p.month
            for p in parts
            if p.month and conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {p.name})")).scalar()
        }


def create_partition(engine: Engine, month: dt.date) -> bool:
    """Make `month`'s partition; False if it exists already. Refuses (PartitionError) in the
    plain layout and for a month closed by retention, whose rollups are final."""
    month = month_start(month)
    with engine.begin() as conn:
        if log_layout(conn) != "partitioned":
            raise PartitionError(
                f"{PARENT} is not partitioned (it was migrated with AI_USAGE_LOG_LAYOUT=plain):"
                " there are no partitions to make"
            )
        conn.execute(text(_LOCK))
        if month in set(conn.execute(text(_CLOSED)).scalars()):
            raise PartitionError(
                f"{month:%Y-%m} is closed by retention (its raw rows were pruned and its rollups"
                " are final): no partition is made for it, and its late events stay refused"
            )
        return _create(conn, month)


def _create(conn: Connection, month: dt.date) -> bool:
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": partition_name(month)}).scalar():
        return False
    for statement in partition_statements(month):
        conn.execute(text(statement))
    return True


def ensure_partitions(
    engine: Engine, ahead: int = AHEAD, *, now: dt.datetime | None = None
) -> list[dt.date]:
    """Make whatever is missing of the previous month's partition to the one `ahead` months
    after the current (UTC) month; the months made. Idempotent; nothing in the plain layout.
    Closed months are skipped (create_partition refuses them)."""
    current = month_start(now or dt.datetime.now(dt.UTC))
    return ensure_months(engine, [add_months(current, n) for n in range(-1, ahead + 1)])


def ensure_months(engine: Engine, months: list[dt.date]) -> list[dt.date]:
    """Make the partitions of `months` that are missing and not closed; the months made."""
    with engine.begin() as conn:
        if log_layout(conn) != "partitioned":
            return []
        conn.execute(text(_LOCK))
        closed = set(conn.execute(text(_CLOSED)).scalars())
        existing = {p.month for p in _partitions(conn)}
        made = []
        for month in sorted({month_start(m) for m in months} - existing - closed):
            if _create(conn, month):
                made.append(month)
        return made


def drop_partitions_before(engine: Engine, cutoff: dt.date) -> Counter[dt.date]:
    """Retention in the partitioned layout: each partition of a month before `cutoff` is
    detached (`CONCURRENTLY`: writers of other months never wait for it; a detach an
    interrupted run left pending is finished with `FINALIZE`), then counted and dropped in one
    transaction that adds its count to ai_usage_closed_months.rows_pruned. The rows counted
    by month. The caller has closed those months first. A DROP fires no trigger: it leaves no
    rollup delta, and the closed months' rollups stay final."""
    pruned: Counter[dt.date] = Counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # DETACH ... CONCURRENTLY cannot run in a transaction block: this connection
        # autocommits, and holds the maintenance lock for the session instead.
        conn.execute(text(_SESSION_LOCK))
        try:
            for part in _partitions(conn):
                if part.month is None or part.month >= cutoff:
                    continue
                # Pending: an interrupted run's (or the operator's) detach of an old month,
                # finished and dropped as retention's own.
                how = "FINALIZE" if part.detach_pending else "CONCURRENTLY"
                conn.execute(text(f"COMMENT ON TABLE {part.name} IS '{RETENTION_MARK}'"))
                conn.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {part.name} {how}"))
            # This run's detached tables, and any an interrupted run left.
            for name in conn.execute(text(_LEFT_DETACHED)).scalars():
                month = partition_month(str(name))
                if month is not None and month < cutoff:
                    pruned[month] += _count_and_drop(engine, str(name), month)
        finally:
            conn.execute(text(_SESSION_UNLOCK))
    return pruned


def _count_and_drop(engine: Engine, name: str, month: dt.date) -> int:
    """The detached table's exact row count (no writer can reach it any more), recorded with
    its DROP in one transaction: a rerun never counts it twice."""
    with engine.begin() as conn:
        rows = int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())
        if rows:
            # Closed by the caller; or, a late event having reached a partition that was empty
            # when the months were closed, closed here: a month whose rows were pruned is one.
            conn.execute(text(_COUNT), {"n": rows, "month": month})
        conn.execute(text(f"DROP TABLE {name}"))
    return rows
