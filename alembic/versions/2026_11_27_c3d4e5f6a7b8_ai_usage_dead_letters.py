"""ai_usage_dead_letters: events that could not be stored, with their reasons.

Revision ID: c3d4e5f6a7b8
Revises: b2c3d4e5f6g7
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "c3d4e5f6a7b8"
down_revision = "b2c3d4e5f6g7"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ai_usage_dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("dedupe_key", sa.String(80), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("field", sa.String(100), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "last_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_dead_letters"),
        sa.UniqueConstraint("dedupe_key", name="uq_ai_usage_dead_letters_dedupe_key"),
    )
    op.create_index("idx_ai_usage_dead_letters_created_at", "ai_usage_dead_letters", ["created_at"])


def downgrade() -> None:
    op.drop_index("idx_ai_usage_dead_letters_created_at", table_name="ai_usage_dead_letters")
    op.drop_table("ai_usage_dead_letters")
