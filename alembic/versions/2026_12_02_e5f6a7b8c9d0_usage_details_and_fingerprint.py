"""The full usage of a call and a fingerprint of its event, on ai_usage_logs.

- cache_read_tokens, cache_write_tokens: parts of input_tokens (genai-prices' convention),
  priced at their own rates;
- usage_details: the other usage dimensions genai-prices prices (cache_write_1h_tokens,
  input_audio_tokens, web_searches, ...), so that a reprice has the whole usage;
- provider: the event's pricing hint, which a reprice needs too (an Azure or Bedrock price);
- fingerprint: a hash of the validated event, so that an event id sent again with other
  content is told apart from a redelivery.
The monthly rollups gain the cache totals. All new log columns are NULL for rows written before
this revision (nothing was known of them); adding them rewrites nothing.

Revision ID: e5f6a7b8c9d0
Revises: d4e5f6a7b8c9
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "e5f6a7b8c9d0"
down_revision = "d4e5f6a7b8c9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ai_usage_logs", sa.Column("cache_read_tokens", sa.Integer(), nullable=True))
    op.add_column("ai_usage_logs", sa.Column("cache_write_tokens", sa.Integer(), nullable=True))
    op.add_column("ai_usage_logs", sa.Column("usage_details", postgresql.JSONB(), nullable=True))
    op.add_column("ai_usage_logs", sa.Column("provider", sa.String(100), nullable=True))
    op.add_column("ai_usage_logs", sa.Column("fingerprint", sa.LargeBinary(), nullable=True))
    for column in ("total_cache_read_tokens", "total_cache_write_tokens"):
        op.add_column(
            "ai_usage_monthly_rollups",
            sa.Column(column, sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        )


def downgrade() -> None:
    for column in ("total_cache_write_tokens", "total_cache_read_tokens"):
        op.drop_column("ai_usage_monthly_rollups", column)
    for column in (
        "fingerprint",
        "provider",
        "usage_details",
        "cache_write_tokens",
        "cache_read_tokens",
    ):
        op.drop_column("ai_usage_logs", column)
