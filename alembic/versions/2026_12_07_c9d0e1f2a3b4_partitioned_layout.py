"""The opt-in monthly partitioned layout of ai_usage_logs (issue 27, docs/ledger/scale.md).

AI_USAGE_LOG_LAYOUT is read when this revision runs:
- `plain` (the default): nothing changes; the spec's table stays exactly as it is.
- `partitioned`: ai_usage_logs becomes PARTITION BY RANGE (created_at), one partition per UTC
  month named ai_usage_logs_YYYY_MM (every month holding rows, the previous month, the current
  one and 3 ahead). Its columns, defaults, checks, foreign keys (by name), the spec's four
  index names (on the parent) and its statement-level triggers are kept; the primary key
  pk_ai_usage_logs becomes (id, created_at), as PostgreSQL requires of a partitioned table,
  and each partition also has a unique index on (id) alone. The old table is renamed out of
  the way, its rows copied, and dropped. The triggers are made again after the copy: the
  moved rows are in the rollups already and leave no delta.
The downgrade follows the database, not the setting: a partitioned table becomes the plain one
again, rows kept. It refuses, naming them, ids stored in more than one month (the plain
primary key cannot hold them).

Indexes or triggers a host application added to ai_usage_logs: the triggers are kept (made
again from the catalog); indexes other than the spec's are not (they go with the old table).

Revision ID: c9d0e1f2a3b4
Revises: d0e1f2a3b4c5
Create Date: 2026-12-07
"""

from __future__ import annotations

import datetime as dt

from alembic.util import CommandError
from sqlalchemy import Connection, text

from alembic import context, op
from worker.ledger.layout import log_layout, partition_statements
from worker.ledger.months import add_months, month_start
from worker.settings import get_settings

revision = "c9d0e1f2a3b4"
down_revision = "d0e1f2a3b4c5"
branch_labels = None
depends_on = None

#: The spec's four indexes (name, columns); kept by name in either layout.
INDEXES = (
    ("idx_ai_usage_logs_tenant_id", "tenant_id"),
    ("idx_ai_usage_logs_operation", "operation"),
    ("idx_ai_usage_logs_created_at", "created_at"),
    ("idx_ai_usage_logs_tenant_created", "tenant_id, created_at"),
)
#: Where the table being replaced is while its rows are copied.
OLD = "ai_usage_logs_replaced"
#: Months made ahead of the current one (Beat's ai_usage.partitions keeps the same margin).
AHEAD = 3


def upgrade() -> None:
    if get_settings().log_layout != "partitioned":
        return
    if context.is_offline_mode():
        # The months to make are those of the rows: only a live database can say.
        raise CommandError(
            "AI_USAGE_LOG_LAYOUT=partitioned: revision c9d0e1f2a3b4 reads the table's months"
            " and cannot be rendered as SQL (--sql); run it against the database"
        )
    conn = op.get_bind()
    if log_layout(conn) == "partitioned":
        return
    triggers, fks = _set_aside(conn)
    op.execute(
        f"CREATE TABLE ai_usage_logs (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (created_at)"
    )
    op.execute(
        "ALTER TABLE ai_usage_logs ADD CONSTRAINT pk_ai_usage_logs PRIMARY KEY (id, created_at)"
    )
    _finish(conn, fks)
    current = month_start(dt.datetime.now(dt.UTC))
    months = {add_months(current, n) for n in range(-1, AHEAD + 1)}
    months.update(
        conn.execute(
            text(
                "SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date"
                f" FROM {OLD}"
            )
        ).scalars()
    )
    for month in sorted(months):
        for statement in partition_statements(month):
            op.execute(statement)
    _move_rows(conn, triggers)


def downgrade() -> None:
    if context.is_offline_mode():
        return  # SQL rendered without a database (--sql) is for the plain layout
    conn = op.get_bind()
    if log_layout(conn) != "partitioned":
        return
    twice = (
        conn.execute(
            text("SELECT id FROM ai_usage_logs GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 6")
        )
        .scalars()
        .all()
    )
    if twice:
        shown = ", ".join(str(i) for i in twice[:5]) + (", ..." if len(twice) > 5 else "")
        raise CommandError(
            "ai_usage_logs: ids stored in more than one month (" + shown + ") cannot go back"
            " to the plain layout, whose primary key is id alone; delete the extra rows first"
        )
    triggers, fks = _set_aside(conn)
    op.execute(
        f"CREATE TABLE ai_usage_logs (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING STORAGE INCLUDING COMMENTS)"
    )
    op.execute("ALTER TABLE ai_usage_logs ADD CONSTRAINT pk_ai_usage_logs PRIMARY KEY (id)")
    _finish(conn, fks)
    _move_rows(conn, triggers)


def _set_aside(conn: Connection) -> tuple[list[str], list[tuple[str, str]]]:
    """Read the table's triggers and foreign keys, then rename it and its index-backed names
    (index names are per schema) out of the way. Returns the triggers' and keys' definitions."""
    triggers = [
        str(d)
        for d in conn.execute(
            text(
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                " WHERE tgrelid = 'ai_usage_logs'::regclass AND NOT tgisinternal"
                " AND tgparentid = 0 ORDER BY tgname"
            )
        ).scalars()
    ]
    fks = [
        (str(name), str(definition))
        for name, definition in conn.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'ai_usage_logs'::regclass AND contype = 'f'"
                " AND conparentid = 0 ORDER BY conname"
            )
        )
    ]
    op.execute(f"ALTER TABLE ai_usage_logs RENAME TO {OLD}")
    for name in ("pk_ai_usage_logs", *(i for i, _ in INDEXES)):
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_replaced")
    return triggers, fks


def _finish(conn: Connection, fks: list[tuple[str, str]]) -> None:
    """The new table's foreign keys (same names and actions) and the spec's indexes."""
    for name, definition in fks:
        op.execute(f"ALTER TABLE ai_usage_logs ADD CONSTRAINT {name} {definition}")
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON ai_usage_logs ({columns})")


def _move_rows(conn: Connection, triggers: list[str]) -> None:
    """Copy every row into the new table, then make its triggers (so that the copy leaves no
    rollup delta: those rows are counted already), then drop the old table."""
    columns = ", ".join(
        f'"{c}"'
        for c in conn.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass)"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            {"t": OLD},
        ).scalars()
    )
    op.execute(f"INSERT INTO ai_usage_logs ({columns}) SELECT {columns} FROM {OLD}")
    for definition in triggers:
        # Read while the table was still ai_usage_logs: the definitions name it, not OLD.
        op.execute(definition)
    op.execute(f"DROP TABLE {OLD}")
