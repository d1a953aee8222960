"""Where alerts are raised and delivered: `ai-usage rollup` raises them exactly as the Beat task
does (one alert per threshold, whoever rolls up, at once), and schedules the delivery task; a
real worker delivers in that task, so a receiver that holds the POST does not hold the rollup,
and a retry (its countdown through the broker) keeps the alert's webhook id."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from standardwebhooks import Webhook as Verifier

from tests import webhook_receivers as rx
from tests.conftest import WorkerProcess, landed, make_tenant, wait_for
from tests.factories import event
from tests.test_budgets import SECRET, _alerts_on_queue
from worker.cli import main as cli
from worker.consumer.tasks import raise_alerts
from worker.ledger.alerts import list_alerts
from worker.ledger.budgets import set_budget
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer
from worker.ledger.rollups import run_rollup
from worker.settings import PERIODIC_QUEUE, get_settings


def _tasks_on(redis_url: str, queue: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(m)["headers"]["task"] for m in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def test_cli_rollup_raises_each_alert_once_alongside_beat(
    db: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AI_USAGE_ALERT_QUEUE", "test.cli-alerts")
    get_settings.cache_clear()
    try:
        tenant = make_tenant(db)
        set_budget(db, tenant, Decimal(1), [50, 80])
        write_batch(db, [event(tenant, cost_usd=0.3) for _ in range(2)], Pricer())  # 60%

        def beat() -> None:  # what ai_usage.rollup_monthly runs
            run_rollup(db, wait=True)
            raise_alerts(db)

        runs = [threading.Thread(target=cli, args=(["rollup"],)) for _ in range(2)]
        runs += [threading.Thread(target=beat) for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        got = _alerts_on_queue(redis_url, "test.cli-alerts")
        assert [(a["tenant_id"], a["threshold_pct"]) for a in got] == [(str(tenant), 50)]
        assert cli(["rollup"]) == 0  # nothing more to raise
        write_batch(db, [event(tenant, cost_usd=0.3)], Pricer())  # 90%
        assert cli(["rollup"]) == 0
        out = capsys.readouterr().out
        assert f"budget alert: tenant {tenant} at 80% of 1 USD" in out
        assert len(re.findall("budget alert: ", out)) <= 2  # 50% from a CLI run at most, 80%
        got = _alerts_on_queue(redis_url, "test.cli-alerts")
        assert sorted(a["threshold_pct"] for a in got) == [50, 80]
        assert len(list_alerts(db)) == 2
        assert _tasks_on(redis_url, PERIODIC_QUEUE) == []  # no webhook: no delivery task
    finally:
        get_settings.cache_clear()


def test_cli_rollup_schedules_the_delivery_task_when_a_webhook_is_set(
    db: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as nobody:  # never reached by the CLI
        url = f"http://127.0.0.1:{nobody.getsockname()[1]}/hooks"
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_URL", url)
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_SECRET", SECRET.get_secret_value())
    get_settings.cache_clear()
    try:
        tenant = make_tenant(db)
        set_budget(db, tenant, Decimal(1), [50])
        write_batch(db, [event(tenant, cost_usd=0.6)], Pricer())
        assert cli(["rollup"]) == 0
        [alert] = list_alerts(db)
        assert alert["webhook_status"] == "pending" and alert["webhook_attempts"] == 0
        assert _tasks_on(redis_url, PERIODIC_QUEUE) == ["ai_usage.deliver_alerts"]
    finally:
        get_settings.cache_clear()


def held_then_mended(calls: list[int]) -> rx.Respond:
    """The first POST is held until the test opens the gate, then answered 503; later ones 204."""

    def respond(conn: socket.socket, receiver: rx.Receiver) -> None:
        calls.append(1)
        if len(calls) == 1:
            receiver.gate.wait(120)
            rx.status(503)(conn, receiver)
        else:
            rx.status(204)(conn, receiver)

    return respond


@pytest.mark.e2e
def test_a_real_worker_delivers_in_its_own_task_and_retries_under_one_id(
    db: Engine, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    calls: list[int] = []
    hook = rx.Receiver(held_then_mended(calls))
    try:
        tenant = make_tenant(db)
        set_budget(db, tenant, Decimal(1), [50])
        worker = start_worker(  # the Procfile's worker: one process for every periodic task
            env={
                "AI_USAGE_ALERT_QUEUE": "test.alerts",
                "AI_USAGE_ALERT_WEBHOOK_URL": hook.url,
                "AI_USAGE_ALERT_WEBHOOK_SECRET": SECRET.get_secret_value(),
                "AI_USAGE_ALERT_WEBHOOK_TIMEOUT_S": "90",
                "AI_USAGE_ALERT_WEBHOOK_ATTEMPTS": "3",
            }
        )
        producer = Celery("app", broker=redis_url, set_as_current=False)
        events = [event(tenant, cost_usd=0.3) for _ in range(2)]
        producer.send_task("ai_usage.record_batch", args=[events], queue="ai_usage")
        wait_for(lambda: landed(db, [e["id"] for e in events]).rows == 2, 60, what="2 rows")
        producer.send_task("ai_usage.rollup_monthly", queue=PERIODIC_QUEUE)
        wait_for(lambda: len(hook.requests) == 1, 60, what="the first POST, held")
        # The rollup task is over while the receiver still holds the delivery's POST.
        wait_for(
            lambda: "ai_usage.rollup_monthly[" in worker.log() and "succeeded" in worker.log(),
            30,
            what="the rollup task done",
        )
        assert re.search(r"Task ai_usage\.rollup_monthly\[[^\]]+\] succeeded", worker.log())
        [alert] = list_alerts(db)
        assert alert["webhook_status"] == "sending"
        hook.gate.set()  # 503: retried after its backoff, through the broker
        wait_for(lambda: list_alerts(db)[0]["webhook_status"] == "sent", 60, what="delivered")
        producer.close()
    finally:
        hook.close()
    [alert] = list_alerts(db)
    assert (alert["webhook_attempts"], alert["webhook_error"]) == (2, None)
    assert len(hook.requests) == 2
    assert hook.requests[0].headers["webhook-id"] == hook.requests[1].headers["webhook-id"]
    verifier = Verifier(SECRET.get_secret_value())
    body: dict[str, Any] = verifier.verify(hook.requests[1].body, hook.requests[1].headers)
    assert (body["tenant_id"], body["threshold_pct"], body["cost_usd"]) == (str(tenant), 50, "0.6")
    [queued] = _alerts_on_queue(redis_url, "test.alerts")
    assert queued == body  # the application's task and the webhook carry the same alert
