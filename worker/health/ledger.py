"""`ai-usage check`, the ledger half: dead letters, rollup freshness, unpriced events, alert
webhooks that failed."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, text

from worker.health.check import Check, Status
from worker.ledger.alerts import STUCK_AFTER
from worker.settings import Settings


def check_ledger(engine: Engine, settings: Settings, now: dt.datetime | None = None) -> list[Check]:
    now = now or dt.datetime.now(dt.UTC)
    out: list[Check] = []
    try:
        with engine.connect() as conn:
            dead = int(
                conn.execute(text("SELECT count(*) FROM ai_usage_dead_letters")).scalar_one()
            )
            last = conn.execute(
                text("SELECT last_success_at FROM ai_usage_rollup_state WHERE id = 1")
            ).scalar()
            unpriced = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM ai_usage_logs WHERE cost_usd IS NULL"
                        " AND created_at >= :since"
                    ),
                    {"since": now - dt.timedelta(days=1)},
                ).scalar_one()
            )
            webhook = conn.execute(text(_WEBHOOK), {"stuck": STUCK_AFTER}).one()
    except Exception as exc:
        return [Check("ledger", "fail", f"cannot read: {type(exc).__name__}")]
    out.append(
        Check(
            "dead_letters",
            "warn" if dead else "ok",
            f"{dead} dead letters" + (" (see `ai-usage dead-letters list`)" if dead else ""),
        )
    )
    limit = dt.timedelta(seconds=2 * settings.rollup_interval_s)
    if last is None:
        out.append(Check("rollup", "warn", "has never run (is beat running?)"))
    else:
        age = now - last
        status: Status = "fail" if age > limit else "ok"
        out.append(
            Check(
                "rollup",
                status,
                f"last ran {int(age.total_seconds())}s ago (limit {int(limit.total_seconds())}s)",
            )
        )
    out.append(
        Check(
            "pricing",
            "warn" if unpriced else "ok",
            f"{unpriced} events of the last 24h have no price"
            + (" (add a price override, then `ai-usage reprice`)" if unpriced else ""),
        )
    )
    out += webhook_checks(int(webhook.failed), int(webhook.stuck), int(webhook.overdue))
    return out


# Failed; `sending` for longer than a delivery can take (its process died: the next run takes
# it up again); pending and due for as long (no delivery run is coming: no worker reads the
# delivery queue, or the worker has no webhook configured).
_WEBHOOK = """
SELECT count(*) FILTER (WHERE webhook_status = 'failed') AS failed,
       count(*) FILTER (WHERE webhook_status = 'sending' AND webhook_at < now() - :stuck) AS stuck,
       count(*) FILTER (WHERE webhook_status = 'pending'
                        AND COALESCE(webhook_at, created_at) < now() - :stuck) AS overdue
FROM ai_usage_budget_alerts WHERE webhook_status IN ('failed', 'sending', 'pending')
"""


def webhook_checks(failed: int, stuck: int, overdue: int) -> list[Check]:
    """The `alert_webhook` warnings: one line per kind of trouble, none when all is well."""
    minutes = int(STUCK_AFTER.total_seconds() // 60)
    out = []
    if failed:
        out.append(
            Check(
                "alert_webhook",
                "warn",
                f"{failed} budget alerts whose webhook failed (see `ai-usage budget alerts`;"
                " mend the receiver, then `ai-usage budget redeliver`)",
            )
        )
    if stuck:
        out.append(
            Check(
                "alert_webhook",
                "warn",
                f"{stuck} budget alerts stuck `sending` for over {minutes} min (the process"
                " delivering them died; the next delivery run takes them up again)",
            )
        )
    if overdue:
        out.append(
            Check(
                "alert_webhook",
                "warn",
                f"{overdue} budget alerts due for delivery for over {minutes} min: is a worker"
                " reading AI_USAGE_ALERT_DELIVERY_QUEUE, with AI_USAGE_ALERT_WEBHOOK_URL set?",
            )
        )
    return out
