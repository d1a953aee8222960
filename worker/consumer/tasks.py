"""Celery tasks (thin: the logic is in worker.ledger).

`ai_usage.record` (one event as kwargs) and `ai_usage.record_batch` (one list of events) are
the contract's task names; on a worker, their messages are read by the ingest step
(worker.consumer.step), not run one by one. Run directly (`.apply()`), they write at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.client.envelope import RECORD, RECORD_BATCH
from worker.consumer.app import app
from worker.ledger.alerts import Webhook
from worker.ledger.db import get_engine
from worker.ledger.ingest import WriteResult, write_batch
from worker.ledger.pricing import default_pricer
from worker.settings import PARTITIONS_TASK, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: The webhook delivery task (worker.ledger.alerts.deliver_due).
DELIVER_ALERTS = "ai_usage.deliver_alerts"


def _write(payloads: list[Any]) -> WriteResult:
    return write_batch(get_engine(), payloads, default_pricer())


@app.task(name=RECORD)
def record(**event: Any) -> dict[str, int]:
    """Store one usage event (kwargs)."""
    return _summary(_write([event]))


@app.task(name=RECORD_BATCH)
def record_batch(events: list[Any]) -> dict[str, int]:
    """Store a list of usage events."""
    return _summary(_write(list(events)))


@app.task(name="ai_usage.rollup_monthly", acks_late=True)
def rollup_monthly() -> dict[str, Any]:
    """Fold the log's changes into the daily and monthly rollups (Beat, every 5 min), then
    raise the budget alerts they make due (so an alert is at most one interval late)."""
    from worker.ledger.rollups import run_rollup

    engine = get_engine()
    result = run_rollup(engine).as_dict()
    result["alerts"] = len(raise_alerts(engine))
    return result


def raise_alerts(engine: Engine) -> list[dict[str, Any]]:
    """Raise the budget alerts due after a rollup: the Beat task's and `ai-usage rollup`'s
    one way, so that both keep the one-alert-per-threshold guarantee. The webhook is left to
    the delivery task."""
    from worker.ledger.alerts import check_budgets

    configured = get_settings().alert_webhook_url is not None
    return check_budgets(engine, send_alert, schedule_delivery if configured else None)


def send_alert(body: dict[str, Any]) -> None:
    """Publish one alert as the task `ai_usage.budget_alert` on the alert queue, for the
    application's own consumer (no worker of this app reads that queue)."""
    queue = get_settings().alert_queue
    app.send_task("ai_usage.budget_alert", kwargs=body, queue=queue, routing_key=queue)


@app.task(name=DELIVER_ALERTS, acks_late=True)
def deliver_alerts() -> dict[str, Any]:
    """One delivery run of the alert webhook (worker.ledger.alerts.deliver_due); sends itself
    again for when the next pending alert is due (a retry's backoff)."""
    from worker.ledger.alerts import deliver_due

    webhook = alert_webhook()
    if webhook is None:  # unset since: pending alerts wait, and `ai-usage check` says so
        return {"delivered": 0, "retrying": 0, "failed": 0, "next_in_s": None}
    run = deliver_due(get_engine(), webhook)
    if run.next_in_s is not None:
        schedule_delivery(run.next_in_s)
    return run.as_dict()


def schedule_delivery(countdown: float = 0.0) -> None:
    """Send the delivery task to AI_USAGE_ALERT_DELIVERY_QUEUE, to run in `countdown` s."""
    queue = get_settings().alert_delivery_queue
    deliver_alerts.apply_async(countdown=countdown or None, queue=queue, routing_key=queue)


def alert_webhook() -> Webhook | None:
    """The webhook of the settings, or None if AI_USAGE_ALERT_WEBHOOK_URL is unset."""
    s = get_settings()
    if s.alert_webhook_url is None or s.alert_webhook_secret is None:
        return None
    return Webhook(
        s.alert_webhook_url,
        s.alert_webhook_secret,
        s.alert_webhook_attempts,
        s.alert_webhook_timeout_s,
    )


@app.task(name="ai_usage.prune", acks_late=True)
def prune(older_than_months: int) -> dict[str, Any]:
    """Retention (Beat, daily, when AI_USAGE_RETENTION_MONTHS is set): see ai-usage prune."""
    from worker.ledger.retention import prune as prune_rows

    return prune_rows(get_engine(), older_than_months).as_dict()


@app.task(name=PARTITIONS_TASK, acks_late=True)
def partitions() -> dict[str, Any]:
    """The partitioned layout's partitions from the previous month to 3 ahead (Beat, daily and
    at its start): see `ai-usage partitions ensure`. Nothing in the plain layout."""
    from worker.ledger.partitions import ensure_partitions

    return {"made": [f"{m:%Y-%m}" for m in ensure_partitions(get_engine())]}


def _summary(result: WriteResult) -> dict[str, int]:
    return result.counts()


# --- Reconciliation with the providers' usage and cost reports (issue 25).


@app.task(name="ai_usage.reconcile", acks_late=True)
def reconcile() -> dict[str, Any]:
    """Reconcile each provider of AI_USAGE_RECONCILE_PROVIDERS over the last
    AI_USAGE_RECONCILE_DAYS days (Beat, daily); set the drift gauges."""
    from worker.ledger.reconcile import reconcile_configured
    from worker.metrics import record_reconcile

    summary: dict[str, Any] = {}
    for outcome in reconcile_configured(get_engine(), get_settings()):
        if outcome.result is None:
            summary[outcome.provider] = {"error": outcome.error}
            continue
        drifting = len(outcome.result.drifting())
        record_reconcile(outcome.provider, outcome.result.drift_by_measure(), drifting)
        summary[outcome.provider] = {
            "run_id": outcome.result.run_id,
            "rows": len(outcome.result.rows),
            "drifting": drifting,
        }
    return summary
