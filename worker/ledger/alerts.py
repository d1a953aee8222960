"""Budget alerts: after each rollup, every budgeted tenant-month that has crossed a threshold
gets exactly one alert.

The alert row's unique key (tenant, month, threshold) decides who sends: an INSERT ... ON
CONFLICT DO NOTHING that returns the row owns it, and sends the `ai_usage.budget_alert` task
in the same transaction (a failed send rolls the row back: the next check tries again). Two
checks at once, a rerun, a redelivered rollup task: one alert. The one window left is a crash
between the send and the commit, which sends the alert again at the next check (the payload's
alert key lets a consumer drop it).

A reprice that lowers a month's cost below a threshold already alerted leaves the alert as it
was (it was true when sent) and does not arm the threshold again: crossing it a second time in
the same month sends nothing more. The webhook, if configured, is delivered after the commit
(with retries and backoff, outcome recorded on the row); a check also retries deliveries left
pending by a process that died."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from worker import metrics
from worker.ledger import webhooks
from worker.ledger.budgets import standings

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO ai_usage_budget_alerts (tenant_id, month, threshold_pct, cost_usd, budget_usd,
    forecast_usd, on_track_to_exceed, webhook_status)
VALUES (:tenant, :month, :threshold, :cost, :budget, :forecast, :on_track, :webhook)
ON CONFLICT (tenant_id, month, threshold_pct) DO NOTHING
RETURNING id, created_at
"""
COLUMNS = (
    "id",
    "tenant_id",
    "month",
    "threshold_pct",
    "cost_usd",
    "budget_usd",
    "forecast_usd",
    "on_track_to_exceed",
    "created_at",
)
# A claim marks its alerts `sending` (reclaimed after 10 minutes, should the sender die).
_CLAIM = f"""
UPDATE ai_usage_budget_alerts SET webhook_status = 'sending', webhook_at = now()
WHERE id IN (
    SELECT id FROM ai_usage_budget_alerts
    WHERE webhook_status = 'pending'
       OR (webhook_status = 'sending' AND webhook_at < now() - interval '10 minutes')
    ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING {", ".join(COLUMNS)}
"""
_CLAIM_FAILED = f"""
UPDATE ai_usage_budget_alerts SET webhook_status = 'sending', webhook_at = now()
WHERE webhook_status = 'failed' AND (CAST(:tenant AS uuid) IS NULL OR tenant_id = :tenant)
RETURNING {", ".join(COLUMNS)}
"""
_DONE = """
UPDATE ai_usage_budget_alerts SET webhook_status = :status, webhook_attempts = webhook_attempts
    + :attempts, webhook_error = :error, webhook_at = now() WHERE id = :id
"""


@dataclass
class Webhook:
    """Where and how alerts are POSTed."""

    url: str
    secret: str | None
    attempts: int = 4
    sleep: Callable[[float], None] | None = None


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """What the task and the webhook carry."""
    forecast = row["forecast_usd"]
    return {
        "alert_id": int(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "month": row["month"].strftime("%Y-%m"),
        "threshold_pct": int(row["threshold_pct"]),
        "cost_usd": str(row["cost_usd"]),
        "budget_usd": str(row["budget_usd"]),
        "forecast_usd": None if forecast is None else str(forecast),
        "on_track_to_exceed": bool(row["on_track_to_exceed"]),
        "created_at": row["created_at"].isoformat(),
    }


def check_budgets(
    engine: Engine,
    send: Callable[[dict[str, Any]], None],
    webhook: Webhook | None = None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Raise the alerts due this UTC month; returns the payloads of the alerts this call sent."""
    sent: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for st in standings(conn, now=now):
            for threshold in st.crossed():
                row = conn.execute(
                    text(_INSERT),
                    {
                        "tenant": st.tenant_id,
                        "month": st.month,
                        "threshold": threshold,
                        "cost": st.cost_usd,
                        "budget": st.budget_usd,
                        "forecast": st.forecast_usd,
                        "on_track": st.on_track_to_exceed,
                        "webhook": "pending" if webhook else "none",
                    },
                ).first()
                if row is None:
                    continue  # alerted before, by this or another process
                body = payload(
                    {
                        "id": row.id,
                        "tenant_id": st.tenant_id,
                        "month": st.month,
                        "threshold_pct": threshold,
                        "cost_usd": st.cost_usd,
                        "budget_usd": st.budget_usd,
                        "forecast_usd": st.forecast_usd,
                        "on_track_to_exceed": st.on_track_to_exceed,
                        "created_at": row.created_at,
                    }
                )
                send(body)
                conn.execute(
                    text("UPDATE ai_usage_budget_alerts SET sent_at = now() WHERE id = :id"),
                    {"id": row.id},
                )
                sent.append(body)
    for body in sent:
        metrics.BUDGET_ALERTS.labels(threshold=str(body["threshold_pct"])).inc()
        log.warning(
            "budget alert: tenant %s at %s%% of %s USD for %s (cost %s USD, forecast %s USD)",
            body["tenant_id"],
            body["threshold_pct"],
            body["budget_usd"],
            body["month"],
            body["cost_usd"],
            body["forecast_usd"],
        )
    if webhook is not None:
        deliver_pending(engine, webhook)
    return sent


def deliver_pending(engine: Engine, webhook: Webhook) -> int:
    """POST every alert whose webhook is pending; returns how many were delivered."""
    with engine.begin() as conn:
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in conn.execute(text(_CLAIM))]
    return sum(_deliver(engine, webhook, row) for row in rows)


def _deliver(engine: Engine, webhook: Webhook, row: dict[str, Any]) -> int:
    if not webhook.secret:
        outcome = webhooks.Delivery(False, 0, "AI_USAGE_ALERT_WEBHOOK_SECRET is not set")
    else:
        body = json.dumps(payload(row), sort_keys=True).encode()
        outcome = webhooks.deliver(
            webhook.url, webhook.secret, body, webhook.attempts, **_sleep(webhook)
        )
    with engine.begin() as conn:
        conn.execute(
            text(_DONE),
            {
                "status": "sent" if outcome.ok else "failed",
                "attempts": outcome.attempts,
                "error": outcome.error,
                "id": row["id"],
            },
        )
    if not outcome.ok:
        log.error("budget alert %s: webhook failed: %s", row["id"], outcome.error)
    return int(outcome.ok)


def redeliver_failed(engine: Engine, webhook: Webhook, tenant: Any = None) -> tuple[int, int]:
    """POST again every alert whose webhook `failed` (of one tenant, or all): (how many were
    tried, how many failed again). Failed deliveries wait for this, after the receiver is
    mended, rather than being retried at every rollup, which would POST to a broken receiver
    every interval, forever."""
    with engine.begin() as conn:
        rows = [
            dict(zip(COLUMNS, r, strict=True))
            for r in conn.execute(text(_CLAIM_FAILED), {"tenant": tenant})
        ]
    delivered = sum(_deliver(engine, webhook, row) for row in rows)
    return len(rows), len(rows) - delivered


def _sleep(webhook: Webhook) -> dict[str, Any]:
    return {"sleep": webhook.sleep} if webhook.sleep is not None else {}


def list_alerts(
    engine: Engine, tenant: Any = None, month: dt.date | None = None
) -> list[dict[str, Any]]:
    """Every alert kept, newest first, as plain values (Decimal kept exact as text)."""
    sql = (
        "SELECT id, tenant_id, month, threshold_pct, cost_usd, budget_usd, forecast_usd,"
        " on_track_to_exceed, created_at, sent_at, webhook_status, webhook_attempts,"
        " webhook_error FROM ai_usage_budget_alerts WHERE true"
    )
    params: dict[str, Any] = {}
    if tenant is not None:
        sql += " AND tenant_id = :tenant"
        params["tenant"] = tenant
    if month is not None:
        sql += " AND month = :month"
        params["month"] = month
    sql += " ORDER BY created_at DESC, id DESC"
    out = []
    with engine.connect() as conn:
        for r in conn.execute(text(sql), params).mappings():
            item = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()}
            item["tenant_id"] = str(r["tenant_id"])
            item["month"] = r["month"].strftime("%Y-%m")
            for k in ("created_at", "sent_at"):
                item[k] = None if r[k] is None else r[k].isoformat()
            out.append(item)
    return out
