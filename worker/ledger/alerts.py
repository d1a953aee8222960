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
the same month sends nothing more.

The webhook, if configured, is not POSTed here: the caller schedules the delivery task
(`schedule`), so that a slow or broken receiver never holds a rollup. Each delivery run
(`deliver_due`) claims at most BATCH due alerts, POSTs them at once, each within the one
deadline, and records each outcome: sent; pending again, due after a backoff (`webhook_at` is
then when it is due); or failed after the last attempt, left for `ai-usage budget redeliver`.
A claim marks its alerts `sending`; one left so by a process that died is claimed again after
STUCK_AFTER, and `ai-usage check` warns about it meanwhile. A receiver may get an alert twice
(a crash between its answer and our commit): the `webhook-id` header, the same for every
delivery of an alert, lets it drop the repeat."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, text

from worker import metrics
from worker.ledger import webhooks
from worker.ledger.budgets import standings
from worker.settings import webhook_secret_problem, webhook_url_problem

log = logging.getLogger(__name__)

#: A delivery run POSTs at most this many alerts (at once); more are left to the next run.
BATCH = 8
#: An alert `sending` for longer than this was left by a process that died: claimed again.
STUCK_AFTER = dt.timedelta(minutes=10)

_INSERT = """
INSERT INTO ai_usage_budget_alerts (tenant_id, month, threshold_pct, cost_usd, budget_usd,
    forecast_usd, on_track_to_exceed, webhook_status, webhook_at)
VALUES (:tenant, :month, :threshold, :cost, :budget, :forecast, :on_track, :webhook,
    CASE WHEN :webhook = 'pending' THEN now() END)
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
    "webhook_attempts",
)
_STUCK = (
    f"webhook_status = 'sending' AND webhook_at < now() - interval '{STUCK_AFTER.seconds} seconds'"
)
_DUE = f"""
UPDATE ai_usage_budget_alerts SET webhook_status = 'sending', webhook_at = now()
WHERE id IN (
    SELECT id FROM ai_usage_budget_alerts
    WHERE (webhook_status = 'pending' AND COALESCE(webhook_at, created_at) <= now())
       OR ({_STUCK})
    ORDER BY COALESCE(webhook_at, created_at), id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING {", ".join(COLUMNS)}
"""
_NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM min(COALESCE(webhook_at, created_at)) - now())
FROM ai_usage_budget_alerts WHERE webhook_status = 'pending'
"""
# Owed a delivery that no run is coming for: due for over a minute, or stuck `sending`.
_OWED = f"""
SELECT EXISTS (SELECT 1 FROM ai_usage_budget_alerts
    WHERE (webhook_status = 'pending' AND COALESCE(webhook_at, created_at)
           < now() - interval '1 minute') OR ({_STUCK}))
"""
_FAILED = """
SELECT id FROM ai_usage_budget_alerts
WHERE webhook_status = 'failed' AND (CAST(:tenant AS uuid) IS NULL OR tenant_id = :tenant)
ORDER BY created_at, id
"""
# One at a time: an alert is `sending` only while it is being delivered (see redeliver_failed).
_CLAIM_FAILED = f"""
UPDATE ai_usage_budget_alerts SET webhook_status = 'sending', webhook_at = now()
WHERE id = :id AND webhook_status = 'failed'
RETURNING {", ".join(COLUMNS)}
"""
_DONE = """
UPDATE ai_usage_budget_alerts SET webhook_status = :status, webhook_attempts = webhook_attempts
    + :attempts, webhook_error = :error,
    webhook_at = now() + make_interval(secs => CAST(:delay AS double precision)) WHERE id = :id
"""


@dataclass(frozen=True)
class Webhook:
    """Where and how alerts are POSTed. The secret is a SecretStr: this repr never shows it."""

    url: str
    secret: SecretStr
    attempts: int = 4
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        problem = webhook_url_problem(self.url)
        if problem:
            raise ValueError(f"webhook URL {problem}")
        problem = webhook_secret_problem(self.secret.get_secret_value())
        if problem:
            raise ValueError(f"webhook secret {problem}")


@dataclass(frozen=True)
class DeliveryRun:
    """What one delivery run did, and in how many seconds the next alert is due (None: none
    is pending)."""

    delivered: int
    retrying: int
    failed: int
    next_in_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "retrying": self.retrying,
            "failed": self.failed,
            "next_in_s": self.next_in_s,
        }


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
    schedule: Callable[[], None] | None = None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Raise the alerts due this UTC month; returns the payloads of the alerts this call sent.
    With `schedule` (a webhook is configured), new alerts are left `pending` and `schedule` is
    called after the commit to start a delivery run, as it is when a delivery is owed that no
    run is coming for (the run's message was lost)."""
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
                        "webhook": "pending" if schedule else "none",
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
        owed = schedule is not None and bool(conn.execute(text(_OWED)).scalar())
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
    if schedule is not None and (sent or owed):
        try:
            schedule()
        except Exception as exc:  # the alerts are kept pending: the next check schedules again
            log.error("budget alerts: delivery run not scheduled (%s); the next check retries", exc)
    return sent


def deliver_due(engine: Engine, webhook: Webhook) -> DeliveryRun:
    """One delivery run: POST the alerts due (at most BATCH, at once), record each outcome,
    and say when the next pending one is due."""
    with engine.begin() as conn:
        rows = [
            dict(zip(COLUMNS, r, strict=True)) for r in conn.execute(text(_DUE), {"limit": BATCH})
        ]
    outcomes: list[webhooks.Attempt] = []
    if rows:
        with ThreadPoolExecutor(len(rows), thread_name_prefix="ai-usage-deliver") as pool:
            outcomes = list(pool.map(lambda row: _post(webhook, row), rows))
    counts = {"sent": 0, "pending": 0, "failed": 0}
    with engine.begin() as conn:
        for row, attempt in zip(rows, outcomes, strict=True):
            tried = int(row["webhook_attempts"]) + 1
            status = "sent" if attempt.ok else "pending" if tried < webhook.attempts else "failed"
            delay = webhooks.backoff(tried) if status == "pending" else 0.0
            params = {"id": row["id"], "status": status, "attempts": 1, "delay": delay}
            conn.execute(text(_DONE), {**params, "error": attempt.reason})
            counts[status] += 1
            _log_outcome(row, status, attempt.reason, delay)
        next_in = conn.execute(text(_NEXT_DUE)).scalar()
    return DeliveryRun(
        counts["sent"],
        counts["pending"],
        counts["failed"],
        None if next_in is None else max(0.0, float(next_in)),
    )


def _post(webhook: Webhook, row: dict[str, Any]) -> webhooks.Attempt:
    body = json.dumps(payload(row), sort_keys=True).encode()
    headers = webhooks.signed_headers(webhook.secret, _webhook_id(row), body)
    return webhooks.post(webhook.url, body, headers, webhook.timeout_s)


def _webhook_id(row: dict[str, Any]) -> str:
    return webhooks.webhook_id(row["tenant_id"], row["month"], row["threshold_pct"])


def _log_outcome(row: dict[str, Any], status: str, reason: str | None, delay: float) -> None:
    if status == "pending":
        log.warning(
            "budget alert %s: webhook attempt failed (%s); again in %gs", row["id"], reason, delay
        )
    elif status == "failed":
        log.error("budget alert %s: webhook failed: %s", row["id"], reason)


def redeliver_failed(engine: Engine, webhook: Webhook, tenant: Any = None) -> tuple[int, int]:
    """POST again, from this process, every alert whose webhook `failed` (of one tenant, or
    all), with its attempts and backoff: (how many were tried, how many failed again). Each
    keeps its `webhook-id` and is signed with a fresh timestamp. Failed deliveries wait for
    this, after the receiver is mended, rather than being retried at every rollup, which
    would POST to a broken receiver every interval, forever."""
    with engine.connect() as conn:
        ids = list(conn.execute(text(_FAILED), {"tenant": tenant}).scalars())
    tried = failed = 0
    for alert_id in ids:
        # Claimed as it comes up, not all at first: a redelivery of many alerts to a receiver
        # still broken outlasts STUCK_AFTER, and alerts claimed but not yet reached would be
        # taken by a delivery run as left by a dead process (POSTed twice, at once).
        with engine.begin() as conn:
            claimed = conn.execute(text(_CLAIM_FAILED), {"id": alert_id}).one_or_none()
        if claimed is None:  # redelivered meanwhile by another `budget redeliver`
            continue
        row = dict(zip(COLUMNS, claimed, strict=True))
        tried += 1
        body = json.dumps(payload(row), sort_keys=True).encode()
        outcome = webhooks.deliver(
            webhook.url, webhook.secret, _webhook_id(row), body, webhook.attempts, webhook.timeout_s
        )
        with engine.begin() as conn:
            conn.execute(
                text(_DONE),
                {
                    "status": "sent" if outcome.ok else "failed",
                    "attempts": outcome.attempts,
                    "error": outcome.error,
                    "id": row["id"],
                    "delay": 0.0,
                },
            )
        if not outcome.ok:
            failed += 1
            _log_outcome(row, "failed", outcome.error, 0.0)
    return tried, failed


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
