"""The SQL of a rollup run (worker.ledger.rollups): fold the visible deltas into the daily and
the per-user daily rollups, drop emptied buckets, derive the monthly rows, recompute a month
from the log."""

from __future__ import annotations

import uuid

#: The measures of a bucket, in the column order of the delta and daily tables.
MEASURES = (
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
KEY = ("tenant_id", "day", "model", "operation", "success")
_COLS = ", ".join(KEY + MEASURES)
_SUMS = ", ".join(f"SUM({m})" for m in MEASURES)

#: The user_id under which ai_usage_user_daily_rollups keeps events without a user: the nil
#: UUID, which no user has (a primary key column cannot be NULL; see revision d0e1f2a3b4c5).
NO_USER = uuid.UUID(int=0)
_NO_USER = f"CAST('{NO_USER}' AS uuid)"
USER_KEY = ("tenant_id", "day", "user_id")
_USER_COLS = ", ".join(USER_KEY + MEASURES)
_ADD = ", ".join(f"{m} = {{t}}.{m} + EXCLUDED.{m}" for m in MEASURES)

# Under REPEATABLE READ the DELETE removes exactly the deltas this run's snapshot sees: a writer
# that commits later keeps its deltas for the next run, and its rows were not seen either. The
# taken deltas go into both tables in this one statement, so each is folded once into each.
# Rows out: every daily bucket it wrote ("d"), and the per-user buckets left with no call ("u",
# user_id in the model column's place), which the run then drops.
FOLD = f"""
WITH taken AS (
    DELETE FROM ai_usage_rollup_deltas RETURNING {_COLS}, user_id
), daily AS (
    INSERT INTO ai_usage_daily_rollups AS d ({_COLS}, computed_at)
    SELECT {", ".join(KEY)}, {_SUMS}, now() FROM taken GROUP BY {", ".join(KEY)}
    ON CONFLICT ({", ".join(KEY)}) DO UPDATE SET {_ADD.format(t="d")},
        computed_at = EXCLUDED.computed_at
    RETURNING d.tenant_id, d.day, d.model, d.operation, d.success, d.api_calls
), users AS (
    INSERT INTO ai_usage_user_daily_rollups AS u ({_USER_COLS}, computed_at)
    SELECT tenant_id, day, COALESCE(user_id, {_NO_USER}), {_SUMS}, now() FROM taken
    GROUP BY 1, 2, 3
    ON CONFLICT ({", ".join(USER_KEY)}) DO UPDATE SET {_ADD.format(t="u")},
        computed_at = EXCLUDED.computed_at
    RETURNING u.tenant_id, u.day, u.user_id, u.api_calls
)
SELECT 'd', tenant_id, day, model, operation, success, api_calls FROM daily
UNION ALL
SELECT 'u', tenant_id, day, CAST(user_id AS text), NULL, NULL, api_calls FROM users
WHERE api_calls = 0
"""

DROP_EMPTY = """
DELETE FROM ai_usage_daily_rollups d
USING unnest(CAST(:t AS uuid[]), CAST(:d AS date[]), CAST(:m AS text[]), CAST(:o AS text[]),
             CAST(:s AS text[])) AS k(tenant_id, day, model, operation, success)
WHERE d.tenant_id = k.tenant_id AND d.day = k.day AND d.model = k.model
  AND d.operation = k.operation AND d.success = k.success AND d.api_calls = 0
"""
DROP_EMPTY_USERS = """
DELETE FROM ai_usage_user_daily_rollups u
USING unnest(CAST(:t AS uuid[]), CAST(:d AS date[]), CAST(:u AS uuid[])) AS k(tenant_id, day, user_id)
WHERE u.tenant_id = k.tenant_id AND u.day = k.day AND u.user_id = k.user_id AND u.api_calls = 0
"""

# The monthly rows of the given (tenant, month) pairs, from the daily rows; a pair with no daily
# rows left loses its monthly row. total_cost_usd is NULL when no call was priced, as the
# spec's SUM(cost_usd) is.
MONTHLY = """
WITH k AS (
    SELECT DISTINCT * FROM unnest(CAST(:t AS uuid[]), CAST(:m AS date[])) AS k(tenant_id, month)
), agg AS (
    SELECT k.tenant_id, k.month, SUM(d.api_calls) AS api_calls,
           SUM(d.input_tokens) AS input_tokens, SUM(d.output_tokens) AS output_tokens,
           SUM(d.total_tokens) AS total_tokens,
           CASE WHEN SUM(d.api_calls) > SUM(d.unpriced_calls) THEN SUM(d.cost_usd) END AS cost,
           SUM(d.failed_calls) AS failed_calls, SUM(d.unpriced_calls) AS unpriced_calls,
           SUM(d.cache_read_tokens) AS cache_read, SUM(d.cache_write_tokens) AS cache_write
    FROM k JOIN ai_usage_daily_rollups d
      ON d.tenant_id = k.tenant_id AND d.day >= k.month
     AND d.day < CAST(k.month + interval '1 month' AS date)
    GROUP BY k.tenant_id, k.month
), upserted AS (
    INSERT INTO ai_usage_monthly_rollups (tenant_id, month, api_calls, total_input_tokens,
        total_output_tokens, total_tokens, total_cost_usd, failed_calls, unpriced_calls,
        total_cache_read_tokens, total_cache_write_tokens, computed_at)
    SELECT tenant_id, month, api_calls, input_tokens, output_tokens, total_tokens, cost,
           failed_calls, unpriced_calls, cache_read, cache_write, now()
    FROM agg
    ON CONFLICT (tenant_id, month) DO UPDATE SET
        api_calls = EXCLUDED.api_calls,
        total_input_tokens = EXCLUDED.total_input_tokens,
        total_output_tokens = EXCLUDED.total_output_tokens,
        total_tokens = EXCLUDED.total_tokens,
        total_cost_usd = EXCLUDED.total_cost_usd,
        failed_calls = EXCLUDED.failed_calls,
        unpriced_calls = EXCLUDED.unpriced_calls,
        total_cache_read_tokens = EXCLUDED.total_cache_read_tokens,
        total_cache_write_tokens = EXCLUDED.total_cache_write_tokens,
        computed_at = EXCLUDED.computed_at
    RETURNING 1
), deleted AS (
    DELETE FROM ai_usage_monthly_rollups r USING k
    WHERE r.tenant_id = k.tenant_id AND r.month = k.month
      AND NOT EXISTS (SELECT 1 FROM agg WHERE agg.tenant_id = r.tenant_id AND agg.month = r.month)
    RETURNING 1
)
SELECT (SELECT COUNT(*) FROM upserted), (SELECT COUNT(*) FROM deleted)
"""

# A month recomputed from the log (`ai-usage rollup --month`): its daily and per-user rows
# replaced. Both statements return the tenants they touch, whose monthly rows are then derived
# again: a separate SELECT DISTINCT over the log would scan the month a second time, and as a
# plain SELECT it may run as a parallel plan on every core, starving the writers (an INSERT ...
# SELECT never gets a parallel plan: it runs on one core, which leaves the others to
# ingestion). FROM_LOG reads the month once, grouped by bucket and user, and writes both tables
# from that.
CLEAR_DAYS = """
WITH users AS (
    DELETE FROM ai_usage_user_daily_rollups WHERE day >= :first AND day < :after
)
DELETE FROM ai_usage_daily_rollups WHERE day >= :first AND day < :after RETURNING tenant_id
"""
FROM_LOG = f"""
WITH g AS (
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, model, operation, success,
           user_id, COUNT(*) AS api_calls, SUM(input_tokens) AS input_tokens,
           SUM(output_tokens) AS output_tokens, SUM(total_tokens) AS total_tokens,
           COALESCE(SUM(cache_read_tokens), 0) AS cache_read_tokens,
           COALESCE(SUM(cache_write_tokens), 0) AS cache_write_tokens,
           COUNT(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
           COUNT(*) FILTER (WHERE success = 'failure') AS failed_calls,
           COALESCE(SUM(cost_usd::numeric), 0) AS cost_usd
    FROM ai_usage_logs WHERE created_at >= :start AND created_at < :end
    GROUP BY 1, 2, 3, 4, 5, 6
), users AS (
    INSERT INTO ai_usage_user_daily_rollups ({_USER_COLS})
    SELECT tenant_id, day, COALESCE(user_id, {_NO_USER}), {_SUMS} FROM g GROUP BY 1, 2, 3
)
INSERT INTO ai_usage_daily_rollups ({_COLS})
SELECT {", ".join(KEY)}, {_SUMS} FROM g GROUP BY {", ".join(KEY)}
RETURNING tenant_id
"""

STATE = """
INSERT INTO ai_usage_rollup_state (id, last_success_at, last_duration_ms, months_recomputed)
VALUES (1, now(), :ms, :n) ON CONFLICT (id) DO UPDATE SET
    last_success_at = EXCLUDED.last_success_at,
    last_duration_ms = EXCLUDED.last_duration_ms,
    months_recomputed = EXCLUDED.months_recomputed
"""
