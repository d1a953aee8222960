"""The layout of ai_usage_logs: `plain` (the spec's table) or `partitioned` (PARTITION BY RANGE
(created_at), one partition per UTC month, docs/ledger/scale.md).

AI_USAGE_LOG_LAYOUT is read once, by the migration c9d0e1f2a3b4. From then on the database is
the only authority: `log_layout` reads the catalog, so a worker, a CLI and a migration can never
disagree about which layout they are looking at."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from sqlalchemy import Connection, text

from worker.ledger.months import month_bounds

LogLayout = Literal["plain", "partitioned"]

#: The table every partition is a partition of.
PARENT = "ai_usage_logs"
#: `ai_usage_logs_YYYY_MM`: the one name a month's partition has.
PARTITION_NAME = re.compile(r"^ai_usage_logs_(\d{4})_(\d{2})$")


def log_layout(conn: Connection) -> LogLayout:
    """`partitioned` when ai_usage_logs is a partitioned table (relkind 'p'), else `plain`."""
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT}
    ).scalar()
    return "partitioned" if kind == "p" else "plain"


def partition_name(month: dt.date) -> str:
    """The name of `month`'s partition."""
    return f"{PARENT}_{month:%Y_%m}"


def partition_month(name: str) -> dt.date | None:
    """The month a partition's name stands for, or None if it is not one of ours."""
    match = PARTITION_NAME.match(name)
    if not match or not 1 <= int(match.group(2)) <= 12:
        return None
    return dt.date(int(match.group(1)), int(match.group(2)), 1)


def partition_statements(month: dt.date) -> list[str]:
    """The DDL that makes `month`'s partition: a table shaped like the parent, its unique index
    on (id), then ATTACH.

    ATTACH, not CREATE TABLE ... PARTITION OF: it locks the parent SHARE UPDATE EXCLUSIVE,
    which writers do not wait for, where PARTITION OF takes ACCESS EXCLUSIVE. The unique index
    on (id) alone is made before the table is attached, so that no row can reach the
    partition without it: with the primary key (id, created_at) it is what makes an id sent
    again with another created_at in the same month a conflicting duplicate, as in the plain
    layout. The parent's indexes, primary key and foreign keys are cloned by ATTACH."""
    name = partition_name(month)
    start, end = month_bounds(month)
    return [
        f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING STORAGE)",
        f"CREATE UNIQUE INDEX uq_{name}_id ON {name} (id)",
        f"ALTER TABLE {PARENT} ATTACH PARTITION {name}"
        f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')",
    ]
