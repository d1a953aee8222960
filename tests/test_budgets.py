"""Budgets and alerts on real PostgreSQL and Redis: one alert per tenant, month and threshold
whoever checks and however often, through a real worker too; the webhook's retries, failures,
redelivery and `ai-usage check` warnings (hostile receivers: test_webhooks.py); the CLI; a
reprice that raises or lowers the cost."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import SecretStr
from sqlalchemy import Engine, text
from standardwebhooks import Webhook as Verifier

from tests import webhook_receivers as rx
from tests.conftest import WorkerProcess, landed, make_tenant, wait_for
from tests.factories import event
from worker.cli import main as cli
from worker.health.ledger import check_ledger
from worker.ledger.alerts import (
    Webhook,
    check_budgets,
    deliver_due,
    list_alerts,
    redeliver_failed,
)
from worker.ledger.budgets import forecast, set_budget, standings
from worker.ledger.ingest import write_batch
from worker.ledger.months import month_start
from worker.ledger.pricing import Pricer
from worker.ledger.rollups import run_rollup
from worker.settings import get_settings, load_settings

NOW = dt.datetime.now(dt.UTC)
SECRET = SecretStr("whsec_" + base64.b64encode(b"test-secret-of-32-bytes-long-ok!").decode())


def spend(engine: Engine, tenant: uuid.UUID, *costs: float) -> None:
    """Events whose cost the producer gives, dated now."""
    write_batch(engine, [event(tenant, cost_usd=c) for c in costs], Pricer())
    run_rollup(engine, wait=True)


class Sent:
    """A `send` that records what it was given."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.bodies.append(body)


def test_each_threshold_alerts_once_whoever_checks(db: Engine) -> None:
    tenant, unbudgeted = make_tenant(db, "a"), make_tenant(db, "b")
    set_budget(db, tenant, Decimal("2.00"), [50, 80, 100])
    spend(db, tenant, 0.4, 0.7)  # 1.10 = 55%
    spend(db, unbudgeted, 50.0)
    sent = Sent()
    threads = [threading.Thread(target=check_budgets, args=(db, sent)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_budgets(db, sent)  # a rerun
    assert [(b["tenant_id"], b["threshold_pct"]) for b in sent.bodies] == [(str(tenant), 50)]
    spend(db, tenant, 0.6, 0.5)  # 2.20 = 110%: 80 and 100 at once
    check_budgets(db, sent)
    check_budgets(db, sent)
    assert sorted(b["threshold_pct"] for b in sent.bodies) == [50, 80, 100]
    alerts = list_alerts(db)
    assert {a["tenant_id"] for a in alerts} == {str(tenant)}
    last = next(a for a in alerts if a["threshold_pct"] == 100)
    assert (last["cost_usd"], last["budget_usd"]) == ("2.2", "2.00")
    assert last["sent_at"] is not None and last["webhook_status"] == "none"


def test_a_failed_send_leaves_no_alert_and_the_next_check_sends_it(db: Engine) -> None:
    tenant = make_tenant(db)
    set_budget(db, tenant, Decimal(1), [50])
    spend(db, tenant, 0.75)

    def broken(body: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        check_budgets(db, broken)
    assert list_alerts(db) == []
    sent = Sent()
    check_budgets(db, sent)
    assert [b["threshold_pct"] for b in sent.bodies] == [50]


def test_a_reprice_that_lowers_the_cost_does_not_rearm_a_threshold(db: Engine) -> None:
    tenant = make_tenant(db)
    set_budget(db, tenant, Decimal(1), [50, 100])
    spend(db, tenant, 0.6)
    sent = Sent()
    check_budgets(db, sent)
    with db.begin() as conn:  # a reprice lowers the month's cost to 0.2
        conn.execute(
            text("UPDATE ai_usage_logs SET cost_usd = 0.2 WHERE tenant_id = :t"), {"t": tenant}
        )
    run_rollup(db, wait=True)
    check_budgets(db, sent)
    with db.begin() as conn:  # and raises it again past 50%
        conn.execute(
            text("UPDATE ai_usage_logs SET cost_usd = 0.7 WHERE tenant_id = :t"), {"t": tenant}
        )
    run_rollup(db, wait=True)
    check_budgets(db, sent)
    assert [b["threshold_pct"] for b in sent.bodies] == [50]


def test_forecast_is_the_linear_run_rate_of_the_month() -> None:
    month = dt.date(2026, 11, 1)
    ten_days = dt.datetime(2026, 11, 11, tzinfo=dt.UTC)
    assert forecast(Decimal(10), month, ten_days) == Decimal(30)
    assert forecast(Decimal(10), month, dt.datetime(2026, 12, 5, tzinfo=dt.UTC)) == Decimal(10)


@pytest.fixture
def failing_hook() -> Iterator[rx.Receiver]:
    """A receiver that answers 503 until it is mended (`respond` replaced)."""
    receiver = rx.Receiver(rx.status(503))
    yield receiver
    receiver.close()


def test_a_failing_webhook_is_retried_then_recorded_failed(
    db: Engine, failing_hook: rx.Receiver
) -> None:
    tenant = make_tenant(db)
    set_budget(db, tenant, Decimal(1), [50])
    spend(db, tenant, 0.9)
    scheduled: list[bool] = []
    check_budgets(db, Sent(), lambda: scheduled.append(True))
    assert scheduled == [True]  # the delivery is the task's, not the check's
    assert failing_hook.requests == []
    webhook = Webhook(failing_hook.url, SECRET, attempts=3, timeout_s=5)
    while (run := deliver_due(db, webhook)).next_in_s is not None:
        threading.Event().wait(run.next_in_s)
    assert len(failing_hook.requests) == 3
    [alert] = list_alerts(db)
    assert (alert["webhook_status"], alert["webhook_attempts"]) == ("failed", 3)
    assert alert["webhook_error"] == "HTTP 503"
    assert alert["sent_at"] is not None  # the task went out all the same


def test_a_failed_webhook_shows_in_check_until_redelivered(
    db: Engine,
    failing_hook: rx.Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = failing_hook.url
    tenants = [make_tenant(db, "a"), make_tenant(db, "b")]
    for t in tenants:
        set_budget(db, t, Decimal(1), [50])
        spend(db, t, 0.9)
    check_budgets(db, Sent(), lambda: None)
    deliver_due(db, Webhook(url, SECRET, attempts=1))
    settings = load_settings()

    def webhook_check() -> list[str]:
        return [c.detail for c in check_ledger(db, settings) if c.name == "alert_webhook"]

    assert webhook_check() == [
        "2 budget alerts whose webhook failed (see `ai-usage budget alerts`;"
        " mend the receiver, then `ai-usage budget redeliver`)"
    ]
    get_settings.cache_clear()
    assert cli(["budget", "redeliver"]) == 2  # no webhook is configured in this process
    assert "AI_USAGE_ALERT_WEBHOOK_URL" in capsys.readouterr().err
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_URL", url)
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_SECRET", SECRET.get_secret_value())
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_ATTEMPTS", "1")
    get_settings.cache_clear()
    try:
        posts = len(failing_hook.requests)
        assert cli(["budget", "redeliver", "--tenant", str(tenants[0])]) == 1  # still broken
        assert "1 failed deliveries tried again: 0 delivered, 1 failed" in capsys.readouterr().out
        assert len(failing_hook.requests) == posts + 1  # one tenant's alert, one attempt
        failing_hook.respond = rx.status(204)  # the receiver is mended
        assert cli(["budget", "redeliver"]) == 0
        assert "2 failed deliveries tried again: 2 delivered, 0 failed" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    by_tenant = {a["tenant_id"]: a for a in list_alerts(db)}
    assert [
        (by_tenant[str(t)]["webhook_status"], by_tenant[str(t)]["webhook_attempts"])
        for t in tenants
    ] == [("sent", 3), ("sent", 2)]
    verifier = Verifier(SECRET.get_secret_value())
    ids: dict[int, set[str]] = {}
    for got in failing_hook.requests:  # a redelivery keeps the alert's id, signed afresh
        alert_id = verifier.verify(got.body, got.headers)["alert_id"]
        ids.setdefault(alert_id, set()).add(got.headers["webhook-id"])
    assert sorted(len(v) for v in ids.values()) == [1, 1] and len(ids) == 2
    assert webhook_check() == []
    assert redeliver_failed(db, Webhook(url, SECRET)) == (0, 0)  # nothing left to redeliver


def test_check_warns_of_deliveries_stuck_sending_or_overdue(db: Engine) -> None:
    tenants = [make_tenant(db, "a"), make_tenant(db, "b"), make_tenant(db, "c")]
    for t in tenants:
        set_budget(db, t, Decimal(1), [50])
        spend(db, t, 0.9)
    check_budgets(db, Sent(), lambda: None)
    settings = load_settings()

    def webhook_check() -> list[str]:
        return [c.line() for c in check_ledger(db, settings) if c.name == "alert_webhook"]

    assert webhook_check() == []  # pending, and due just now: a run is on its way
    with db.begin() as conn:
        conn.execute(  # one claimed by a process that died, one no run came for
            text(
                "UPDATE ai_usage_budget_alerts SET webhook_at = now() - interval '11 minutes',"
                " webhook_status = CASE WHEN tenant_id = :a THEN 'sending' ELSE 'pending' END"
                " WHERE tenant_id IN (:a, :b)"
            ),
            {"a": tenants[0], "b": tenants[1]},
        )
    assert webhook_check() == [
        "WARN alert_webhook  1 budget alerts stuck `sending` for over 10 min (the process"
        " delivering them died; the next delivery run takes them up again)",
        "WARN alert_webhook  1 budget alerts due for delivery for over 10 min: is a worker"
        " reading AI_USAGE_ALERT_DELIVERY_QUEUE, with AI_USAGE_ALERT_WEBHOOK_URL set?",
    ]


def test_budget_cli(db: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = make_tenant(db, "Acme")
    assert cli(["budget", "set", "--tenant", str(tenant), "--usd", "500"]) == 0
    assert "alerts at 50,80,100%" in capsys.readouterr().out
    assert cli(["budget", "set", "--tenant", str(uuid.uuid4()), "--usd", "5"]) == 2
    assert "no tenant with id" in capsys.readouterr().err
    for bad, field in (
        (["--usd", "-3"], "--usd"),
        (["--usd", "ten"], "--usd"),
        (["--usd", "5", "--thresholds", "50,x"], "--thresholds"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli(["budget", "set", "--tenant", str(tenant), *bad])
        assert exit_.value.code == 2
        assert f"argument {field}: " in capsys.readouterr().err
    spend(db, tenant, 1.5)
    assert cli(["budget", "list", "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["tenant_id"], row["budget_usd"], row["cost_usd"]) == (str(tenant), "500", "1.5")
    later = standings(db)[0].forecast_usd  # the run rate falls as the month goes by
    assert later <= Decimal(row["forecast_usd"]) <= later * Decimal("1.001")
    assert row["on_track_to_exceed"] is (later > 500)
    assert cli(["budget", "alerts", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli(["budget", "set", "--tenant", str(tenant), "--usd", "2", "--thresholds", "50"]) == 0
    check_budgets(db, Sent())
    capsys.readouterr()
    assert cli(["budget", "alerts", "--tenant", str(tenant), "--format", "json"]) == 0
    [alert] = json.loads(capsys.readouterr().out)
    required = {"tenant_id", "month", "threshold_pct", "cost_usd", "budget_usd", "sent_at"}
    assert required <= set(alert) and alert["month"] == f"{month_start(NOW):%Y-%m}"
    assert cli(["budget", "alerts"]) == 0 and "50%" in capsys.readouterr().out


def _alerts_on_queue(redis_url: str, queue: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        out = []
        for item in client.lrange(queue, 0, -1):
            envelope = json.loads(item)
            assert envelope["headers"]["task"] == "ai_usage.budget_alert"
            _, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
            out.append(kwargs)
        return out
    finally:
        client.close()


@pytest.mark.e2e
def test_thresholds_crossed_through_a_real_worker_alert_once(
    db: Engine, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    tenant, unbudgeted = make_tenant(db, "a"), make_tenant(db, "b")
    set_budget(db, tenant, Decimal("1.00"), [50, 80])
    hook = rx.Receiver(rx.status(204))
    env = {
        "AI_USAGE_ALERT_QUEUE": "test.alerts",
        "AI_USAGE_ALERT_WEBHOOK_URL": hook.url,
        "AI_USAGE_ALERT_WEBHOOK_SECRET": SECRET.get_secret_value(),
    }
    start_worker(env=env, args=["--concurrency", "2"])
    producer = Celery("app", broker=redis_url, set_as_current=False)
    events = [event(tenant, cost_usd=0.1) for _ in range(6)]
    events += [event(unbudgeted, cost_usd=5.0) for _ in range(3)]
    producer.send_task("ai_usage.record_batch", args=[events], queue="ai_usage")
    wait_for(lambda: landed(db, [e["id"] for e in events]).rows == 9, 60, what="9 rows")
    for _ in range(2):  # two rollups at once (two pool processes)
        producer.send_task("ai_usage.rollup_monthly", queue="ai_usage.periodic")
    wait_for(lambda: len(list_alerts(db)) == 1, 60, what="the 50% alert")
    more = [event(tenant, cost_usd=0.1) for _ in range(3)]  # 0.90: 80% crossed
    producer.send_task("ai_usage.record_batch", args=[more], queue="ai_usage")
    wait_for(lambda: landed(db, [e["id"] for e in more]).rows == 3, 60, what="3 rows")
    for _ in range(3):
        producer.send_task("ai_usage.rollup_monthly", queue="ai_usage.periodic")
    wait_for(lambda: len(list_alerts(db)) == 2, 60, what="the 80% alert")
    producer.close()
    wait_for(lambda: len(_alerts_on_queue(redis_url, "test.alerts")) >= 2, 30)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.llen("ai_usage.periodic") == 0, 60, what="rollups done")
    client.close()
    got = _alerts_on_queue(redis_url, "test.alerts")
    assert sorted((a["tenant_id"], a["threshold_pct"]) for a in got) == [
        (str(tenant), 50),
        (str(tenant), 80),
    ]
    for a in got:  # the forecast travels with the alert, and agrees with its flag
        assert a["on_track_to_exceed"] is (Decimal(a["forecast_usd"]) > Decimal(a["budget_usd"]))
    # Delivery tasks ran in both pool processes, alongside the rollups: each alert POSTed once.
    wait_for(lambda: {a["webhook_status"] for a in list_alerts(db)} == {"sent"}, 60, what="sent")
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.llen("ai_usage.periodic") == 0, 60, what="deliveries done")
    client.close()
    hook.close()
    verifier = Verifier(SECRET.get_secret_value())
    posted = sorted(verifier.verify(r.body, r.headers)["threshold_pct"] for r in hook.requests)
    assert posted == [50, 80]
    assert len({r.headers["webhook-id"] for r in hook.requests}) == 2


def test_html_needs_no_network_and_reports_the_json_numbers(
    db: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = make_tenant(db, "Acme </script><b>")
    set_budget(db, tenant, Decimal(3), [50])
    spend(db, tenant, 1.25, 0.5)
    write_batch(db, [event(tenant, model="in-house-llm-v1")], Pricer())  # unpriced
    run_rollup(db, wait=True)
    out = tmp_path / "r.html"
    assert cli(["report", "--html", str(out)]) == 0
    assert "offline" in capsys.readouterr().out
    page = out.read_text()
    assert cli(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    marker = '<script type="application/json" id="report-data">'
    start = page.index(marker) + len(marker)
    embedded = json.loads(page[start : page.index("</script>", start)].replace("<\\/", "</"))
    assert embedded == report
    assert '<b id="total-cost" title="1.75">1.75</b>' in page and 'id="unpriced"><b>1</b>' in page
    assert "Acme &lt;/script&gt;&lt;b&gt;" in page  # a tenant's name is text, never markup
    assert "Acme </script>" not in page
    assert "<script src" not in page and "<link" not in page  # nothing fetched
