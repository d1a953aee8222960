"""Add ai_usage_logs (migration guide, 2025-11-18).

Revision ID: b2c3d4e5f6g7
Revises: a1b2c3d4e5f6
Create Date: 2025-11-18
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "b2c3d4e5f6g7"
down_revision = "a1b2c3d4e5f6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    uuid = postgresql.UUID(as_uuid=True)
    op.create_table(
        "ai_usage_logs",
        sa.Column("id", uuid, nullable=False),
        sa.Column("tenant_id", uuid, nullable=False),
        sa.Column("user_id", uuid, nullable=True),
        sa.Column("operation", sa.String(100), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("assessment_id", uuid, nullable=True),
        sa.Column("lead_id", uuid, nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("success", sa.String(20), nullable=False),
        # timestamptz: stored in UTC whatever the session's time zone is.
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_ai_usage_logs_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_ai_usage_logs_user_id_users", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["assessment_id"],
            ["assessments.id"],
            name="fk_ai_usage_logs_assessment_id_assessments",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name="fk_ai_usage_logs_lead_id_leads", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_logs"),
    )
    op.create_index("idx_ai_usage_logs_tenant_id", "ai_usage_logs", ["tenant_id"])
    op.create_index("idx_ai_usage_logs_operation", "ai_usage_logs", ["operation"])
    op.create_index("idx_ai_usage_logs_created_at", "ai_usage_logs", ["created_at"])
    op.create_index(
        "idx_ai_usage_logs_tenant_created", "ai_usage_logs", ["tenant_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("idx_ai_usage_logs_tenant_created", table_name="ai_usage_logs")
    op.drop_index("idx_ai_usage_logs_created_at", table_name="ai_usage_logs")
    op.drop_index("idx_ai_usage_logs_operation", table_name="ai_usage_logs")
    op.drop_index("idx_ai_usage_logs_tenant_id", table_name="ai_usage_logs")
    op.drop_table("ai_usage_logs")
