"""The per-user daily rollups against the log: every (tenant, UTC day, user) bucket, exactly."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from worker.ledger.rollup_sql import NO_USER

# Every per-user bucket of the log, as ai_usage_user_daily_rollups keys them.
USERS_FROM_LOG = f"""
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date,
       COALESCE(user_id, CAST('{NO_USER}' AS uuid)),
       COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(total_tokens),
       COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),
       COUNT(*) FILTER (WHERE cost_usd IS NULL), COUNT(*) FILTER (WHERE success = 'failure'),
       COALESCE(SUM(cost_usd::numeric), 0)
FROM ai_usage_logs {{where}} GROUP BY 1, 2, 3
"""
USERS = """
SELECT tenant_id, day, user_id, api_calls, input_tokens, output_tokens, total_tokens,
       cache_read_tokens, cache_write_tokens, unpriced_calls, failed_calls, cost_usd
FROM ai_usage_user_daily_rollups {where}
"""


def user_buckets(engine: Engine, sql: str, where: str = "") -> dict[Any, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(text(sql.format(where=where))).all()
    return {tuple(r[:3]): tuple(r[3:]) for r in rows}


def assert_users_exact(engine: Engine, where: str = "") -> int:
    """Every per-user row equals the log's GROUP BY, and no row is left without log rows
    (`where` on `day`, as for the daily rows). Returns the number of buckets."""
    expected = user_buckets(engine, USERS_FROM_LOG, where.replace("day", "created_at"))
    got = user_buckets(engine, USERS, where)
    diff = {k: (expected.get(k), got.get(k)) for k in set(expected) | set(got)}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    assert not diff, list(diff.items())[:5]
    return len(expected)
