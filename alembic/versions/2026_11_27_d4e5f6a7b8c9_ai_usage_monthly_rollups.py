"""Monthly per-tenant rollups, the dirty-month trigger that feeds them, and rollup state.

Revision ID: d4e5f6a7b8c9
Revises: c3d4e5f6a7b8
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "d4e5f6a7b8c9"
down_revision = "c3d4e5f6a7b8"
branch_labels = None
depends_on = None

# Statement-level triggers with transition tables: one small INSERT per statement (not per row)
# marks every tenant-month a write touched, whoever wrote it (the worker, a host application,
# a manual DELETE), so the Beat rollup recomputes exactly those months.
_MARK = """
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


def upgrade() -> None:
    uuid = postgresql.UUID(as_uuid=True)
    op.create_table(
        "ai_usage_monthly_rollups",
        sa.Column("tenant_id", uuid, nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("api_calls", sa.BigInteger(), nullable=False),
        sa.Column("total_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_cost_usd", sa.Numeric(), nullable=True),
        sa.Column("failed_calls", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_calls", sa.BigInteger(), nullable=False),
        sa.Column(
            "computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("tenant_id", "month", name="pk_ai_usage_monthly_rollups"),
    )
    op.create_table(
        "ai_usage_rollup_dirty",
        sa.Column("tenant_id", uuid, nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "month", name="pk_ai_usage_rollup_dirty"),
    )
    op.create_table(
        "ai_usage_rollup_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_duration_ms", sa.Integer(), nullable=False),
        sa.Column("months_recomputed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_rollup_state"),
    )
    op.execute(_MARK)
    for op_name, refs in (
        ("insert", "REFERENCING NEW TABLE AS new_rows"),
        ("update", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("delete", "REFERENCING OLD TABLE AS old_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER ai_usage_logs_dirty_{op_name} AFTER {op_name.upper()} ON ai_usage_logs"
            f" {refs} FOR EACH STATEMENT EXECUTE FUNCTION ai_usage_mark_dirty()"
        )
    # Months that already hold rows (an existing ledger) are rolled up on the first run.
    op.execute(
        "INSERT INTO ai_usage_rollup_dirty (tenant_id, month) SELECT DISTINCT tenant_id,"
        " date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM ai_usage_logs"
    )


def downgrade() -> None:
    for op_name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER ai_usage_logs_dirty_{op_name} ON ai_usage_logs")
    op.execute("DROP FUNCTION ai_usage_mark_dirty()")
    op.drop_table("ai_usage_rollup_state")
    op.drop_table("ai_usage_rollup_dirty")
    op.drop_table("ai_usage_monthly_rollups")
