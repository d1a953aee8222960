"""The alert webhook against hostile receivers on 127.0.0.1: redirects, malformed and oversized
answers, a dribbler, resets, refusals, bad URLs. Each delivery ends as a failed attempt with a
reason, recorded on the alert in the real database, and nothing is left `sending`. The
signature is the Standard Webhooks one: the specification's library and a verifier written
here from the specification both accept it, and both refuse a changed body or an old
timestamp."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.server
import json
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, text
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from tests import webhook_receivers as rx
from tests.conftest import AI_USAGE, make_tenant
from tests.factories import event
from tests.test_budgets import Sent, spend
from worker.cli import main as cli
from worker.client.errors import ConfigError
from worker.ledger import webhooks
from worker.ledger.alerts import (
    Webhook,
    check_budgets,
    deliver_due,
    list_alerts,
    redeliver_failed,
)
from worker.ledger.budgets import set_budget
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer
from worker.settings import Settings, get_settings, load_settings

SECRET = SecretStr("whsec_" + base64.b64encode(b"k" * 32).decode())


@pytest.fixture
def receivers() -> Iterator[list[rx.Receiver]]:
    made: list[rx.Receiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[rx.Receiver], respond: rx.Respond) -> rx.Receiver:
    r = rx.Receiver(respond)
    made.append(r)
    return r


def one_alert(db: Engine) -> None:
    """A tenant past 50% of its budget, its alert raised and pending delivery."""
    tenant = make_tenant(db)
    set_budget(db, tenant, Decimal(1), [50])
    spend(db, tenant, 0.75)
    scheduled: list[bool] = []
    assert len(check_budgets(db, Sent(), lambda: scheduled.append(True))) == 1
    assert scheduled == [True]


def deliver_once(db: Engine, url: str, timeout_s: float = 2.0) -> dict[str, Any]:
    run = deliver_due(db, Webhook(url, SECRET, attempts=1, timeout_s=timeout_s))
    assert (run.delivered, run.retrying, run.next_in_s) == (0, 0, None)
    [alert] = list_alerts(db)
    assert alert["webhook_status"] == "failed" and alert["webhook_attempts"] == 1
    with db.connect() as conn:
        stuck = conn.execute(
            text("SELECT count(*) FROM ai_usage_budget_alerts WHERE webhook_status = 'sending'")
        ).scalar_one()
    assert stuck == 0
    return alert


@pytest.mark.parametrize("code", [301, 302, 307])
@pytest.mark.parametrize("target", ["other origin", "ftp"])
def test_a_redirect_is_a_failed_delivery_never_followed(
    db: Engine, receivers: list[rx.Receiver], code: int, target: str
) -> None:
    elsewhere = receiver(receivers, rx.status(204))
    location = elsewhere.url if target == "other origin" else f"ftp://127.0.0.1:{elsewhere.port}/x"
    hook = receiver(receivers, rx.redirect(code, location))
    one_alert(db)
    alert = deliver_once(db, hook.url)
    assert alert["webhook_error"] == f"HTTP {code}: a redirect, not followed"
    assert len(hook.requests) == 1 and hook.requests[0].method == "POST"
    assert elsewhere.connections == 0  # neither the body nor the signature went elsewhere


HOSTILE: dict[str, tuple[rx.Respond, str]] = {
    "malformed status line": (
        rx.answer(b"HTTP/1.1 two hundred \x1b]0;pwned\x07\r\n\r\n"),
        "malformed status line (BadStatusLine): HTTP/1.1 two hundred \\x1b]0;pwned\\x07\\r\\n",
    ),
    "not HTTP at all": (rx.answer(b"\x00\x01garbage\r\n\r\n"), "malformed status line"),
    "a header line over 64 KiB": (
        rx.answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
        "answer line too long (LineTooLong): got more than 65536 bytes when reading header line",
    ),
    "too many headers": (
        rx.answer(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n"),
        "HTTPException: got more than 100 headers",
    ),
    "no answer, just closed": (rx.answer(b""), "RemoteDisconnected"),
    "a reset": (rx.reset, "ConnectionResetError: Connection reset by peer"),
    "a server error": (rx.status(500, "Oops \x1b[2J"), "HTTP 500"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_broken_answer_is_a_failed_attempt_with_its_reason(
    db: Engine, receivers: list[rx.Receiver], case: str
) -> None:
    respond, reason = HOSTILE[case]
    hook = receiver(receivers, respond)
    one_alert(db)
    error = deliver_once(db, hook.url)["webhook_error"]
    assert reason in error
    assert error.isprintable() and len(error) <= 250  # nothing raw of the receiver's is kept


def test_a_refused_connection_is_a_failed_attempt(db: Engine) -> None:
    one_alert(db)
    error = deliver_once(db, rx.refused_url())["webhook_error"]
    assert error == "connection refused (ConnectionRefusedError): Connection refused"


def test_https_to_a_plain_http_receiver_is_a_failed_attempt(
    db: Engine, receivers: list[rx.Receiver]
) -> None:
    hook = rx.Receiver(rx.status(204), read_first=False)
    receivers.append(hook)
    one_alert(db)
    error = deliver_once(db, hook.url.replace("http://", "https://"))["webhook_error"]
    assert "SSL" in error


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://[::1]/hooks", ("::1", 80)),
        ("https://[2001:db8::1]/hooks", ("2001:db8::1", 443)),
        ("http://[::1]:8080/hooks", ("::1", 8080)),
        ("https://hooks.example.com/x", ("hooks.example.com", 443)),
    ],
)
def test_an_ipv6_literal_without_a_port_goes_to_the_scheme_port(
    url: str, target: tuple[str, int]
) -> None:
    # http.client reads a port from a bare host itself: `::1` was host `:`, port 1.
    conn = webhooks.connection(url, 1.0)
    assert (conn.host, conn.port) == target


def test_an_ipv6_receiver_gets_the_signed_post(receivers: list[rx.Receiver]) -> None:
    try:
        hook = rx.Receiver(rx.status(204), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    receivers.append(hook)
    body = b'{"ipv6": true}'
    headers = webhooks.signed_headers(SECRET, "msg_ipv6", body)
    assert webhooks.post(hook.url, body, headers, 2.0) == webhooks.Attempt(True, 204, None)
    [got] = hook.requests
    assert got.body == body and got.headers["host"] == f"[::1]:{hook.port}"


def test_a_dribbler_is_cut_at_the_deadline(db: Engine, receivers: list[rx.Receiver]) -> None:
    hook = receiver(receivers, rx.dribble(every_s=0.5))
    one_alert(db)
    error = deliver_once(db, hook.url, timeout_s=1.5)["webhook_error"]
    assert error == "no complete answer within the 1.5s deadline"
    assert hook.hung_up.wait(10)  # we hung up on it
    # Cut after about 1.5 s of a byte every 0.5 s: a per-read timeout would never have cut it.
    assert 1 <= hook.dribbled <= 6


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "data:text/plain,hello",
        "ftp://127.0.0.1/alerts",
        "javascript:alert(1)",
        "https://hook.example/a b",
        "https://hook.example/\r\nX-Injected: 1",
        "http:///no-host",
        "http://hook.example:99999/",
        "https://hoo\u200bk.example/\u202eevil",
    ],
)
def test_urls_other_than_http_are_refused_when_settings_load(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_with(url, SECRET.get_secret_value())
    message = str(refused.value)
    assert message.startswith("AI_USAGE_ALERT_WEBHOOK_URL: ") and "\n" not in message
    with pytest.raises(ValueError):
        Webhook(url, SECRET)
    assert webhooks.post(url, b"{}", {}, 1.0).reason is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:hunter2-pw@hook.example/alerts",
        "https://alice:hunter2-pw@hook.example:8443/alerts",
        "http://:hunter2-pw@127.0.0.1/alerts",
        "https://hunter2-pw@hook.example/alerts",
    ],
)
def test_a_url_with_userinfo_is_refused_and_never_shown(
    url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_URL", url)
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_SECRET", SECRET.get_secret_value())
    get_settings.cache_clear()
    try:
        assert cli(["budget", "redeliver"]) == 2
        assert cli(["check"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "ai-usage: configuration error: AI_USAGE_ALERT_WEBHOOK_URL: Value error, must not hold a"
        " user name or password (put credentials in the secret, not the URL)"
    )
    with pytest.raises(ConfigError) as refused:
        settings_with(url, SECRET.get_secret_value())
    assert str(refused.value) == (
        "AI_USAGE_ALERT_WEBHOOK_URL: Value error, must not hold a user name or password (put"
        " credentials in the secret, not the URL)"
    )
    with pytest.raises(ValueError) as error:
        Webhook(url, SECRET)
    attempt = webhooks.post(url, b"{}", {}, 1.0)
    shown = [str(error.value), str(attempt.reason), caplog.text, err]
    assert not any("hunter2" in s for s in shown)


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("s3cret-for-tests-but-not-whsec", "expected whsec_<base64>"),
        ("whsec_" + base64.b64encode(b"k" * 23).decode(), "is 23 bytes, fewer than 24"),
        ("whsec_not*base64!", "is not valid base64 after whsec_"),
    ],
)
def test_a_bad_or_short_secret_is_refused_in_one_line(secret: str, why: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_with("https://hook.example/a", secret)
    message = str(refused.value)
    assert message.startswith("AI_USAGE_ALERT_WEBHOOK_SECRET: ") and why in message
    assert secret not in message and "\n" not in message


def test_a_url_needs_a_secret_and_the_secret_never_shows() -> None:
    with pytest.raises(ConfigError) as refused:
        settings_with("https://hook.example/a", "")
    assert str(refused.value).startswith("AI_USAGE_ALERT_WEBHOOK_SECRET: is required when")
    plain = SECRET.get_secret_value()
    settings = settings_with("https://hook.example/a", plain)
    webhook = Webhook("https://hook.example/a", SECRET)
    for shown in (repr(settings), str(settings), repr(webhook), str(webhook)):
        assert plain not in shown and plain[6:20] not in shown
    assert settings_with("", "").alert_webhook_url is None


def settings_with(url: str, secret: str) -> Settings:
    return load_settings(AI_USAGE_ALERT_WEBHOOK_URL=url, AI_USAGE_ALERT_WEBHOOK_SECRET=secret)


def verify_by_hand(secret: str, body: bytes, headers: dict[str, str], now: float) -> bool:
    """The specification's verification, written from its text, not from the library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(stamp)) > 300:  # the replay tolerance
        return False
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(sig, expected)
        for version, _, sig in (s.partition(",") for s in headers["webhook-signature"].split())
    )


def test_verifiers_accept_the_signature_and_refuse_a_changed_body_or_an_old_timestamp(
    db: Engine, receivers: list[rx.Receiver]
) -> None:
    hook = receiver(receivers, rx.status(204))
    one_alert(db)
    run = deliver_due(db, Webhook(hook.url, SECRET))
    assert (run.delivered, run.next_in_s) == (1, None)
    [got] = hook.requests
    [alert] = list_alerts(db)
    assert (alert["webhook_status"], alert["webhook_attempts"]) == ("sent", 1)
    secret = SECRET.get_secret_value()
    now = dt.datetime.now(dt.UTC).timestamp()
    assert Verifier(secret).verify(got.body, got.headers)["alert_id"] == alert["id"]
    assert verify_by_hand(secret, got.body, got.headers, now)
    assert got.headers["webhook-id"] == webhooks.webhook_id(
        alert["tenant_id"], dt.date.fromisoformat(alert["month"] + "-01"), 50
    )
    assert got.headers["content-type"] == "application/json"
    changed = got.body.replace(b'"threshold_pct": 50', b'"threshold_pct": 90')
    assert changed != got.body
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(changed, got.headers)
    assert not verify_by_hand(secret, changed, got.headers, now)
    # A captured delivery replayed 6 minutes later: both refuse it.
    old = webhooks.signed_headers(
        SECRET,
        got.headers["webhook-id"],
        got.body,
        dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6),
    )
    with pytest.raises(WebhookVerificationError, match="too old"):
        Verifier(secret).verify(got.body, old)
    assert not verify_by_hand(secret, got.body, old, now)
    another = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Verifier(another).verify(got.body, got.headers)


def test_each_attempt_is_signed_afresh_under_the_same_id() -> None:
    then = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)
    first = webhooks.signed_headers(SECRET, "alert_x", b"{}", then)
    again = webhooks.signed_headers(SECRET, "alert_x", b"{}", then + dt.timedelta(seconds=90))
    assert first["webhook-id"] == again["webhook-id"] == "alert_x"
    assert (first["webhook-timestamp"], again["webhook-timestamp"]) == ("1796126400", "1796126490")
    assert first["webhook-signature"] != again["webhook-signature"]
    assert first["webhook-signature"].startswith("v1,")


def test_retries_back_off_then_deliver_under_one_id(
    db: Engine, receivers: list[rx.Receiver]
) -> None:
    hook = receiver(receivers, rx.failing(2))
    one_alert(db)
    webhook = Webhook(hook.url, SECRET, attempts=4, timeout_s=2)
    waits = []
    while True:
        run = deliver_due(db, webhook)
        if run.next_in_s is None:
            break
        assert run.retrying == 1
        waits.append(run.next_in_s)
        threading.Event().wait(run.next_in_s)
    assert len(waits) == 2 and 0 < waits[0] <= 0.5 and 0.5 < waits[1] <= 1.0  # 0.5 s, then 1 s
    [alert] = list_alerts(db)
    assert (alert["webhook_status"], alert["webhook_attempts"]) == ("sent", 3)
    assert alert["webhook_error"] is None
    assert len({r.headers["webhook-id"] for r in hook.requests}) == 1 and len(hook.requests) == 3
    for r in hook.requests:
        Verifier(SECRET.get_secret_value()).verify(r.body, r.headers)


def test_concurrent_delivery_runs_post_each_alert_once(
    db: Engine, receivers: list[rx.Receiver]
) -> None:
    hook = receiver(receivers, rx.status(204))
    tenants = [make_tenant(db, f"t{i}") for i in range(3)]
    for t in tenants:
        set_budget(db, t, Decimal(1), [50, 80])
        spend(db, t, 0.9)
    check_budgets(db, Sent(), lambda: None)
    webhook = Webhook(hook.url, SECRET)
    runs = [threading.Thread(target=deliver_due, args=(db, webhook)) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    deliver_due(db, webhook)
    alerts = list_alerts(db)
    assert len(alerts) == 6 and {a["webhook_status"] for a in alerts} == {"sent"}
    got = sorted(json.loads(r.body)["alert_id"] for r in hook.requests)
    assert got == sorted(a["id"] for a in alerts)  # each once


def test_a_delivery_run_that_cannot_be_scheduled_is_scheduled_by_the_next_check(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = make_tenant(db)
    set_budget(db, tenant, Decimal(1), [50])
    spend(db, tenant, 0.75)

    def broker_down() -> None:
        raise ConnectionError("broker down")

    assert len(check_budgets(db, Sent(), broker_down)) == 1  # the alert is raised all the same
    assert "delivery run not scheduled (broker down)" in caplog.text
    [alert] = list_alerts(db)
    assert alert["webhook_status"] == "pending"
    scheduled: list[bool] = []
    check_budgets(db, Sent(), lambda: scheduled.append(True))
    assert scheduled == []  # due just now: a run may be on its way
    with db.begin() as conn:
        conn.execute(
            text("UPDATE ai_usage_budget_alerts SET webhook_at = now() - interval '2 minutes'")
        )
    check_budgets(db, Sent(), lambda: scheduled.append(True))
    assert scheduled == [True]  # owed, and no run came: scheduled again


def test_a_run_takes_up_an_alert_left_sending_by_a_dead_process(
    db: Engine, receivers: list[rx.Receiver]
) -> None:
    hook = receiver(receivers, rx.status(204))
    one_alert(db)
    with db.begin() as conn:  # claimed by a process that died 11 minutes ago
        conn.execute(
            text(
                "UPDATE ai_usage_budget_alerts SET webhook_status = 'sending',"
                " webhook_at = now() - interval '11 minutes'"
            )
        )
    owed: list[bool] = []
    check_budgets(db, Sent(), lambda: owed.append(True))  # nothing new, but a delivery owed
    assert owed == [True]
    assert deliver_due(db, Webhook(hook.url, SECRET)).delivered == 1
    assert list_alerts(db)[0]["webhook_status"] == "sent"
    check_budgets(db, Sent(), lambda: owed.append(True))
    assert owed == [True]  # nothing owed now: no run scheduled


def test_a_long_redelivery_claims_one_alert_at_a_time(
    db: Engine, receivers: list[rx.Receiver]
) -> None:
    # `budget redeliver` works through the failed alerts one by one (attempts and backoff
    # each): one claimed the lot, and those it had not reached yet stayed `sending` past the
    # stuck limit, where a delivery run took them too (two POSTs at once) and `ai-usage check`
    # called them stuck. While it POSTs one alert, the others stay `failed`.
    seen: list[list[str]] = []

    def respond(conn: Any, r: rx.Receiver) -> None:
        with db.connect() as c:
            seen.append(
                sorted(
                    c.execute(text("SELECT webhook_status FROM ai_usage_budget_alerts")).scalars()
                )
            )
        rx.status(204)(conn, r)

    hook = receiver(receivers, respond)
    for name in ("a", "b", "c"):
        tenant = make_tenant(db, name)
        set_budget(db, tenant, Decimal(1), [50])
        spend(db, tenant, 0.75)
    check_budgets(db, Sent(), lambda: None)
    with db.begin() as conn:
        conn.execute(text("UPDATE ai_usage_budget_alerts SET webhook_status = 'failed'"))
    assert redeliver_failed(db, Webhook(hook.url, SECRET)) == (3, 0)
    assert seen == [
        ["failed", "failed", "sending"],
        ["failed", "sending", "sent"],
        ["sending", "sent", "sent"],
    ]


def doc_examples() -> list[str]:
    page = (Path(__file__).resolve().parent.parent / "docs/reading/webhooks.md").read_text()
    return re.findall(r"```python\n(.*?)```", page, re.S)


def test_the_docs_receivers_verify_real_deliveries(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    library_receiver, by_hand = doc_examples()
    serve = 'HTTPServer(("0.0.0.0", 8080), Alerts).serve_forever()'
    assert serve in library_receiver
    monkeypatch.setenv("AI_USAGE_ALERT_WEBHOOK_SECRET", SECRET.get_secret_value())
    page: dict[str, Any] = {}
    exec(library_receiver.replace(serve, ""), page)  # the page's receiver, on a random port
    server = http.server.HTTPServer(("127.0.0.1", 0), page["Alerts"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    recorder = rx.Receiver(rx.status(204))
    try:
        one_alert(db)
        assert deliver_due(db, Webhook(url, SECRET)).delivered == 1  # it answered 204
        assert len(page["handled"]) == 1
        [alert] = list_alerts(db)
        body = json.dumps({"alert_id": alert["id"], "tampered": True}).encode()
        headers = webhooks.signed_headers(SECRET, "alert_x", body)
        headers["webhook-signature"] = webhooks.signed_headers(SECRET, "alert_x", b"{}")[
            "webhook-signature"
        ]
        assert webhooks.post(url, body, headers, 5).status == 400  # refused
        # The standard-library check agrees, on a delivery captured by another receiver.
        with db.begin() as conn:
            conn.execute(text("UPDATE ai_usage_budget_alerts SET webhook_status = 'pending'"))
        deliver_due(db, Webhook(recorder.url, SECRET))
        [got] = recorder.requests
        plain: dict[str, Any] = {}
        exec(by_hand, plain)
        verify = plain["verify"]
        assert verify(SECRET.get_secret_value(), got.headers, got.body)
        assert not verify(SECRET.get_secret_value(), got.headers, got.body + b" ")
        old = webhooks.signed_headers(
            SECRET, "alert_x", got.body, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)
        )
        assert not verify(SECRET.get_secret_value(), old, got.body)
        assert not verify(SECRET.get_secret_value(), {}, got.body)
    finally:
        server.shutdown()
        server.server_close()
        recorder.close()


@pytest.mark.parametrize("broker", ["down", "unset"])
def test_cli_rollup_without_a_broker_keeps_the_rollup_and_says_so(
    db: Engine, database_url: str, broker: str
) -> None:
    tenant = make_tenant(db)
    set_budget(db, tenant, Decimal(1), [50])
    write_batch(db, [event(tenant, cost_usd=0.75)], Pricer())
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env["DATABASE_URL"] = database_url
    if broker == "down":
        port = rx.refused_url().split(":")[2].split("/")[0]
        env["REDIS_URL"] = f"redis://:hunter2@127.0.0.1:{port}/0"
    out = subprocess.run(
        [AI_USAGE, "rollup"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "rolled up" in out.stdout
    [line] = out.stderr.splitlines()
    if broker == "down":
        assert out.returncode == 3, out.stderr
        assert line.startswith("ai-usage: broker unreachable, budget alerts not raised")
    else:
        assert out.returncode == 2, out.stderr
        assert line == (
            "ai-usage: budget alerts not raised (the rollup is done): REDIS_URL is not set"
            " (nor CELERY_BROKER_URL): the broker is unknown"
        )
    assert "hunter2" not in out.stdout + out.stderr
    assert list_alerts(db) == []  # nothing kept: the next rollup raises it
    with db.connect() as conn:
        assert conn.execute(text("SELECT sum(cost_usd) FROM ai_usage_daily_rollups")).scalar()
