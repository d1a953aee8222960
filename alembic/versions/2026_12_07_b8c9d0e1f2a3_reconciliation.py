"""Reconciliation with the providers' own usage and cost reports (`ai-usage reconcile`).

A run (ai_usage_reconcile_runs) keeps what the provider said, as received
(ai_usage_reconcile_buckets: one result row of a daily bucket each, with fetched_at), and its
verdicts (ai_usage_reconcile_results: one per UTC day, model and measure). Runs are never
overwritten: a later run over the same days adds its own rows, so a day's verdict can change
when late data arrives and the history shows it. No admin key is ever stored.

Revision ID: b8c9d0e1f2a3
Revises: a7b8c9d0e1f2
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "b8c9d0e1f2a3"
down_revision = "a7b8c9d0e1f2"
branch_labels = None
depends_on = None

STATUSES = (
    "match",
    "under_metered",
    "over_metered",
    "price_mismatch",
    "provisional",
    "not_covered",
)


def upgrade() -> None:
    now = sa.func.now()
    op.create_table(
        "ai_usage_reconcile_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column(
            "scope",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("tolerance_pct", sa.Numeric(), nullable=False),
        sa.Column("lag_hours", sa.Numeric(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(20), server_default="running", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_reconcile_runs"),
        sa.CheckConstraint(
            "outcome IN ('running', 'ok', 'failed')", name="ck_ai_usage_reconcile_runs_outcome"
        ),
    )
    op.create_index(
        "idx_ai_usage_reconcile_runs_provider", "ai_usage_reconcile_runs", ["provider", "id"]
    )
    op.create_table(
        "ai_usage_reconcile_buckets",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("report", sa.String(60), nullable=False),
        sa.Column("starting_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ending_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ai_usage_reconcile_runs.id"],
            name="fk_ai_usage_reconcile_buckets_run_id_ai_usage_reconcile_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_reconcile_buckets"),
    )
    op.create_index(
        "idx_ai_usage_reconcile_buckets_run_id", "ai_usage_reconcile_buckets", ["run_id"]
    )
    op.create_table(
        "ai_usage_reconcile_results",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("measure", sa.String(40), nullable=False),
        sa.Column("metered", sa.Numeric(), nullable=True),
        sa.Column("reported", sa.Numeric(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ai_usage_reconcile_runs.id"],
            name="fk_ai_usage_reconcile_results_run_id_ai_usage_reconcile_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ai_usage_reconcile_results"),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
            name="ck_ai_usage_reconcile_results_status",
        ),
    )
    op.create_index(
        "idx_ai_usage_reconcile_results_run_id", "ai_usage_reconcile_results", ["run_id"]
    )
    op.create_index(
        "idx_ai_usage_reconcile_results_provider_day",
        "ai_usage_reconcile_results",
        ["provider", "day"],
    )


def downgrade() -> None:
    op.drop_table("ai_usage_reconcile_results")
    op.drop_table("ai_usage_reconcile_buckets")
    op.drop_table("ai_usage_reconcile_runs")
