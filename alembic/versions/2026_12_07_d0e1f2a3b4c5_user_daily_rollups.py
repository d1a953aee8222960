"""Per-user daily rollups: `report --by user` reads what the tenant's range holds, not the log.

- ai_usage_rollup_deltas gains `user_id` (NULL: events without a user) and the delta trigger
  function groups by it too, so each delta says which user it belongs to.
- ai_usage_user_daily_rollups: per tenant, UTC day and user, the measures of the daily rollups.
  Its key is the primary key (tenant_id, day, user_id), which also serves the report's read
  (one tenant, a range of days). Events without a user are kept under the nil UUID
  (00000000-0000-0000-0000-000000000000), which no user has: a primary key cannot hold NULL,
  and the nil UUID works with ON CONFLICT on every PostgreSQL, where `UNIQUE NULLS NOT
  DISTINCT` needs 15 and leaves the table without a primary key (nor a replica identity for
  logical replication). The report shows it as "(none)", as it showed a NULL user.
- A rollup run folds its deltas into both tables in one statement. Old rollup code would fold
  them into the daily rows only and drop their users: a statement trigger refuses any DELETE on
  the deltas that has not set `ai_usage.folding` (new code sets it), so a not-yet-upgraded beat
  fails loudly and leaves the deltas to the upgraded one.
- Backfill, with writers to ai_usage_logs held off (SHARE ROW EXCLUSIVE) and the rollup's
  advisory lock taken for the transaction: the pending deltas (which have no user) are first
  folded into the daily and monthly rollups, then the per-user rows are computed from the log.
  Each row is then counted once in each table: the log's rows are in the backfill, later
  statements leave per-user deltas.
- Closed months (retention pruned their rows) have no per-user figures: ai_usage_closed_months
  gains `has_user_rollups`, false for the months closed before this revision (true for those
  closed later, whose per-user rows were kept while their raw rows existed). The report refuses
  a range over such a month, naming it.

Revision ID: d0e1f2a3b4c5
Revises: b8c9d0e1f2a3
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "d0e1f2a3b4c5"
down_revision = "b8c9d0e1f2a3"
branch_labels = None
depends_on = None

#: worker.ledger.rollups.ROLLUP_LOCK_KEY, frozen here as this revision knows it.
_ROLLUP_LOCK_KEY = 0x616975736167
_NO_USER = "'00000000-0000-0000-0000-000000000000'::uuid"
_KEY = "tenant_id, day, model, operation, success"
_MEASURES = (
    "api_calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "unpriced_calls",
    "failed_calls",
    "cost_usd",
)
_M = ", ".join(_MEASURES)
_SUMS = ", ".join(f"SUM({m})" for m in _MEASURES)

# One aggregate of a transition table per bucket and user, signed (+1 new rows, -1 old ones).
_BUCKETS = """
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, model, operation, success,
               {user}{s} * COUNT(*), {s} * SUM(input_tokens), {s} * SUM(output_tokens),
               {s} * SUM(total_tokens), {s} * COALESCE(SUM(cache_read_tokens), 0),
               {s} * COALESCE(SUM(cache_write_tokens), 0),
               {s} * COALESCE(SUM(cost_usd::numeric), 0),
               {s} * COUNT(*) FILTER (WHERE cost_usd IS NULL),
               {s} * COUNT(*) FILTER (WHERE success = 'failure')
        FROM {rows} GROUP BY {group}"""
_INSERT = """
        INSERT INTO ai_usage_rollup_deltas (tenant_id, day, model, operation, success,{user}
            api_calls, input_tokens, output_tokens, total_tokens, cache_read_tokens,
            cache_write_tokens, cost_usd, unpriced_calls, failed_calls)"""


def _function(with_user: bool) -> str:
    """The delta trigger function: f6a7b8c9d0e1's, or this revision's (grouped by user too)."""
    user = "user_id, " if with_user else ""
    group = "1, 2, 3, 4, 5, 6" if with_user else "1, 2, 3, 4, 5"
    insert = _INSERT.format(user=" user_id," if with_user else "")
    plus = _BUCKETS.format(s="1", rows="new_rows", user=user, group=group)
    minus = _BUCKETS.format(s="-1", rows="old_rows", user=user, group=group)
    return f"""
CREATE OR REPLACE FUNCTION ai_usage_log_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Retention deletes the rows of closed months, whose rollups are final.
    IF TG_OP = 'DELETE' AND current_setting('ai_usage.pruning', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {insert}
        {plus};
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        {insert}
        {minus};
    END IF;
    RETURN NULL;
END $$;
"""


_GUARD = """
CREATE FUNCTION ai_usage_rollup_deltas_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only a fold that also writes the per-user rows may consume deltas.
    IF current_setting('ai_usage.folding', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'ai_usage_rollup_deltas: this rollup predates the per-user rollups'
            ' (revision d0e1f2a3b4c5) and would lose them; upgrade the worker and beat'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END $$;
"""

# The pending deltas (no user), folded as a run of the previous code would: daily rows, emptied
# buckets dropped, then the monthly rows of the tenant-months they touched, from the daily rows.
_FOLD_PENDING = (
    f"""
INSERT INTO ai_usage_daily_rollups AS d ({_KEY}, {_M}, computed_at)
SELECT {_KEY}, {_SUMS}, now() FROM ai_usage_rollup_deltas GROUP BY {_KEY}
ON CONFLICT ({_KEY}) DO UPDATE SET
    {", ".join(f"{m} = d.{m} + EXCLUDED.{m}" for m in _MEASURES)},
    computed_at = EXCLUDED.computed_at
""",
    """
DELETE FROM ai_usage_daily_rollups d USING (
    SELECT DISTINCT tenant_id, day, model, operation, success FROM ai_usage_rollup_deltas
) k WHERE d.tenant_id = k.tenant_id AND d.day = k.day AND d.model = k.model
  AND d.operation = k.operation AND d.success = k.success AND d.api_calls = 0
""",
    """
CREATE TEMPORARY TABLE ai_usage_pending_months ON COMMIT DROP AS
SELECT DISTINCT tenant_id, date_trunc('month', day)::date AS month FROM ai_usage_rollup_deltas
""",
    """
DELETE FROM ai_usage_monthly_rollups r USING ai_usage_pending_months k
WHERE r.tenant_id = k.tenant_id AND r.month = k.month
""",
    """
INSERT INTO ai_usage_monthly_rollups (tenant_id, month, api_calls, total_input_tokens,
    total_output_tokens, total_tokens, total_cost_usd, failed_calls, unpriced_calls,
    total_cache_read_tokens, total_cache_write_tokens)
SELECT d.tenant_id, k.month, SUM(d.api_calls), SUM(d.input_tokens), SUM(d.output_tokens),
       SUM(d.total_tokens),
       CASE WHEN SUM(d.api_calls) > SUM(d.unpriced_calls) THEN SUM(d.cost_usd) END,
       SUM(d.failed_calls), SUM(d.unpriced_calls), SUM(d.cache_read_tokens),
       SUM(d.cache_write_tokens)
FROM ai_usage_pending_months k JOIN ai_usage_daily_rollups d
  ON d.tenant_id = k.tenant_id AND d.day >= k.month
 AND d.day < CAST(k.month + interval '1 month' AS date)
GROUP BY d.tenant_id, k.month
""",
    "DELETE FROM ai_usage_rollup_deltas",
)

# The per-user rows of every open month, from the log (closed months have no raw rows).
_BACKFILL = f"""
INSERT INTO ai_usage_user_daily_rollups (tenant_id, day, user_id, {_M})
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, COALESCE(user_id, {_NO_USER}),
       COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(total_tokens),
       COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),
       COUNT(*) FILTER (WHERE cost_usd IS NULL), COUNT(*) FILTER (WHERE success = 'failure'),
       COALESCE(SUM(cost_usd::numeric), 0)
FROM ai_usage_logs l
WHERE NOT EXISTS (
    SELECT 1 FROM ai_usage_closed_months c
    WHERE c.month = date_trunc('month', l.created_at AT TIME ZONE 'UTC')::date
)
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    # No run folds meanwhile, and no writer is between its rows and its deltas: a writer
    # already in its statement finishes first (its deltas are folded below), a later one waits
    # for this transaction and then runs the new function.
    op.execute(f"SELECT pg_advisory_xact_lock({_ROLLUP_LOCK_KEY})")
    op.execute("LOCK TABLE ai_usage_logs IN SHARE ROW EXCLUSIVE MODE")
    for statement in _FOLD_PENDING:
        op.execute(statement)
    op.add_column(
        "ai_usage_rollup_deltas",
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=True),
    )
    op.execute(_function(with_user=True))
    op.execute(_GUARD)
    op.execute(
        "CREATE TRIGGER ai_usage_rollup_deltas_guard BEFORE DELETE ON ai_usage_rollup_deltas"
        " FOR EACH STATEMENT EXECUTE FUNCTION ai_usage_rollup_deltas_guard()"
    )
    op.create_table(
        "ai_usage_user_daily_rollups",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        *[sa.Column(m, sa.BigInteger(), nullable=False) for m in _MEASURES[:-1]],
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column(
            "computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "day", "user_id", name="pk_ai_usage_user_daily_rollups"
        ),
    )
    op.execute(_BACKFILL)
    # Months closed before now: false (their rows were pruned before any per-user row was kept).
    op.add_column(
        "ai_usage_closed_months",
        sa.Column("has_user_rollups", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.alter_column("ai_usage_closed_months", "has_user_rollups", server_default=sa.true())


def downgrade() -> None:
    # Per-user deltas pending now fold, by the previous code, into the daily rows: they carry
    # every measure of their bucket, and the user column simply goes.
    op.drop_column("ai_usage_closed_months", "has_user_rollups")
    op.drop_table("ai_usage_user_daily_rollups")
    op.execute("DROP TRIGGER ai_usage_rollup_deltas_guard ON ai_usage_rollup_deltas")
    op.execute("DROP FUNCTION ai_usage_rollup_deltas_guard()")
    op.execute(_function(with_user=False))
    op.drop_column("ai_usage_rollup_deltas", "user_id")
