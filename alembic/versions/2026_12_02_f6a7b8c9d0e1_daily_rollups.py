"""Daily rollups fed by transactional deltas, and closed (pruned) months.

- ai_usage_rollup_deltas: each statement on ai_usage_logs (INSERT, UPDATE, DELETE, whoever runs
  it) appends what it changed, grouped by bucket (tenant, UTC day, model, operation, success),
  with signed counts and sums, in the writer's own transaction: a delta is visible exactly when
  the rows it describes are. Writers only append; no lock a rollup holds is ever needed by them.
- ai_usage_daily_rollups: per bucket, calls, tokens, cost, unpriced and failed calls. A rollup
  run folds the deltas it can see into it and deletes them, in one REPEATABLE READ transaction,
  so each delta is folded exactly once; its cost is that of what changed, not of the month.
- ai_usage_monthly_rollups (kept, read by `ai-usage report`) is derived from the daily rows.
- ai_usage_closed_months: months whose raw rows retention pruned; their rollups are final.
  Retention's deletes set `ai_usage.pruning` so that they leave no delta.
The dirty-month marks (d4e5f6a7b8c9) go: the trigger that wrote them is replaced.

Revision ID: f6a7b8c9d0e1
Revises: e5f6a7b8c9d0
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "f6a7b8c9d0e1"
down_revision = "e5f6a7b8c9d0"
branch_labels = None
depends_on = None

_MEASURES = (
    "api_calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "unpriced_calls",
    "failed_calls",
)

# One aggregate of a transition table per bucket, signed (+1 for new rows, -1 for old ones).
_BUCKETS = """
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, model, operation, success,
               {s} * COUNT(*), {s} * SUM(input_tokens), {s} * SUM(output_tokens),
               {s} * SUM(total_tokens), {s} * COALESCE(SUM(cache_read_tokens), 0),
               {s} * COALESCE(SUM(cache_write_tokens), 0),
               {s} * COALESCE(SUM(cost_usd::numeric), 0),
               {s} * COUNT(*) FILTER (WHERE cost_usd IS NULL),
               {s} * COUNT(*) FILTER (WHERE success = 'failure')
        FROM {rows} GROUP BY 1, 2, 3, 4, 5"""
_INSERT = """
        INSERT INTO ai_usage_rollup_deltas (tenant_id, day, model, operation, success,
            api_calls, input_tokens, output_tokens, total_tokens, cache_read_tokens,
            cache_write_tokens, cost_usd, unpriced_calls, failed_calls)"""

_DELTA_FUNCTION = f"""
CREATE FUNCTION ai_usage_log_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Retention deletes the rows of closed months, whose rollups are final.
    IF TG_OP = 'DELETE' AND current_setting('ai_usage.pruning', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_INSERT}
        {_BUCKETS.format(s="1", rows="new_rows")};
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        {_INSERT}
        {_BUCKETS.format(s="-1", rows="old_rows")};
    END IF;
    RETURN NULL;
END $$;
"""

_TRIGGERS = (
    ("insert", "REFERENCING NEW TABLE AS new_rows"),
    ("update", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ("delete", "REFERENCING OLD TABLE AS old_rows"),
)

_MARK_DIRTY = """
CREATE FUNCTION ai_usage_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO ai_usage_rollup_dirty (tenant_id, month)
        SELECT DISTINCT tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date
        FROM new_rows
        ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO ai_usage_rollup_dirty (tenant_id, month)
        SELECT DISTINCT tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date
        FROM old_rows
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
"""


def _bucket_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("operation", sa.String(100), nullable=False),
        sa.Column("success", sa.String(20), nullable=False),
    ]


def _measure_columns() -> list[sa.Column[object]]:
    cols: list[sa.Column[object]] = [
        sa.Column(name, sa.BigInteger(), nullable=False) for name in _MEASURES
    ]
    # The exact sum of the priced rows' costs (unpriced rows are counted, not summed).
    cols.append(sa.Column("cost_usd", sa.Numeric(), nullable=False))
    return cols


def upgrade() -> None:
    op.create_table(
        "ai_usage_rollup_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        *_bucket_columns(),
        *_measure_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_rollup_deltas"),
    )
    op.create_table(
        "ai_usage_daily_rollups",
        *_bucket_columns(),
        *_measure_columns(),
        sa.Column(
            "computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "day", "model", "operation", "success", name="pk_ai_usage_daily_rollups"
        ),
    )
    op.create_index("idx_ai_usage_daily_rollups_day", "ai_usage_daily_rollups", ["day"])
    op.create_table(
        "ai_usage_closed_months",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column(
            "closed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("rows_pruned", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("month", name="pk_ai_usage_closed_months"),
    )
    for name, _ in _TRIGGERS:
        op.execute(f"DROP TRIGGER ai_usage_logs_dirty_{name} ON ai_usage_logs")
    op.execute("DROP FUNCTION ai_usage_mark_dirty()")
    op.drop_table("ai_usage_rollup_dirty")
    op.execute(_DELTA_FUNCTION)
    for name, refs in _TRIGGERS:
        op.execute(
            f"CREATE TRIGGER ai_usage_logs_delta_{name} AFTER {name.upper()} ON ai_usage_logs"
            f" {refs} FOR EACH STATEMENT EXECUTE FUNCTION ai_usage_log_delta()"
        )
    # An existing ledger: its daily rows from the log, then its monthly rows from those.
    op.execute(
        "INSERT INTO ai_usage_daily_rollups (tenant_id, day, model, operation, success,"
        " api_calls, input_tokens, output_tokens, total_tokens, cache_read_tokens,"
        " cache_write_tokens, cost_usd, unpriced_calls, failed_calls)"
        + _BUCKETS.format(s="1", rows="ai_usage_logs")
    )
    op.execute("DELETE FROM ai_usage_monthly_rollups")
    op.execute(
        "INSERT INTO ai_usage_monthly_rollups (tenant_id, month, api_calls, total_input_tokens,"
        " total_output_tokens, total_tokens, total_cost_usd, failed_calls, unpriced_calls,"
        " total_cache_read_tokens, total_cache_write_tokens)"
        " SELECT tenant_id, date_trunc('month', day)::date, SUM(api_calls), SUM(input_tokens),"
        " SUM(output_tokens), SUM(total_tokens),"
        " CASE WHEN SUM(api_calls) > SUM(unpriced_calls) THEN SUM(cost_usd) END,"
        " SUM(failed_calls), SUM(unpriced_calls), SUM(cache_read_tokens),"
        " SUM(cache_write_tokens) FROM ai_usage_daily_rollups GROUP BY 1, 2"
    )


def downgrade() -> None:
    for name, _ in _TRIGGERS:
        op.execute(f"DROP TRIGGER ai_usage_logs_delta_{name} ON ai_usage_logs")
    op.execute("DROP FUNCTION ai_usage_log_delta()")
    op.create_table(
        "ai_usage_rollup_dirty",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "month", name="pk_ai_usage_rollup_dirty"),
    )
    op.execute(_MARK_DIRTY)
    for name, refs in _TRIGGERS:
        op.execute(
            f"CREATE TRIGGER ai_usage_logs_dirty_{name} AFTER {name.upper()} ON ai_usage_logs"
            f" {refs} FOR EACH STATEMENT EXECUTE FUNCTION ai_usage_mark_dirty()"
        )
    # Every month with rows is recomputed by the first run of the older code.
    op.execute(
        "INSERT INTO ai_usage_rollup_dirty (tenant_id, month) SELECT DISTINCT tenant_id,"
        " date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM ai_usage_logs"
    )
    op.drop_table("ai_usage_closed_months")
    op.drop_index("idx_ai_usage_daily_rollups_day", table_name="ai_usage_daily_rollups")
    op.drop_table("ai_usage_daily_rollups")
    op.drop_table("ai_usage_rollup_deltas")
