"""Monthly budgets per tenant and the alerts sent when a tenant-month crosses a threshold.

ai_usage_budget_alerts has one row per (tenant, month, threshold) at most: the unique key is
what makes an alert go out once, whoever checks (two beats, a rerun, a redelivered task).

Revision ID: a7b8c9d0e1f2
Revises: f6a7b8c9d0e1
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "a7b8c9d0e1f2"
down_revision = "f6a7b8c9d0e1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    now = sa.func.now()
    op.create_table(
        "ai_usage_budgets",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("monthly_usd", sa.Numeric(), nullable=False),
        sa.Column(
            "thresholds",
            postgresql.ARRAY(sa.Integer()),
            server_default=sa.text("'{50,80,100}'"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_ai_usage_budgets_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_ai_usage_budgets"),
        sa.CheckConstraint("monthly_usd > 0", name="ck_ai_usage_budgets_positive"),
    )
    op.create_table(
        "ai_usage_budget_alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("threshold_pct", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("budget_usd", sa.Numeric(), nullable=False),
        sa.Column("forecast_usd", sa.Numeric(), nullable=True),
        sa.Column("on_track_to_exceed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("webhook_status", sa.String(20), nullable=False),
        sa.Column("webhook_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("webhook_error", sa.Text(), nullable=True),
        sa.Column("webhook_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_ai_usage_budget_alerts_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_budget_alerts"),
        sa.UniqueConstraint(
            "tenant_id", "month", "threshold_pct", name="uq_ai_usage_budget_alerts_once"
        ),
    )


def downgrade() -> None:
    op.drop_table("ai_usage_budget_alerts")
    op.drop_table("ai_usage_budgets")
