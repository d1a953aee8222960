"""`ai-usage budget set|list|alerts|redeliver|new-secret`: monthly budgets per tenant, the
alerts they raised, another delivery of the alerts whose webhook failed, and a webhook secret;
and the alerts `ai-usage rollup` raises."""

from __future__ import annotations

import argparse
import decimal
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from worker.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Unreachable,
    UsageError,
    database,
    first_line,
    require_tenant,
    say,
    tenant_id,
)


def usd(value: str) -> Decimal:
    """An argparse type: a positive amount of USD."""
    try:
        amount = Decimal(value)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"must be an amount in USD, got {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value!r}")
    return amount


def thresholds(value: str) -> list[int]:
    """An argparse type: `50,80,100`."""
    from worker.ledger.budgets import parse_thresholds

    try:
        return parse_thresholds(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--thresholds ")) from None


def register(sub: Any) -> None:
    b = sub.add_parser("budget", help="monthly budgets per tenant, and their alerts")
    bs = b.add_subparsers(dest="budget_command", required=True)
    s = bs.add_parser("set", help="set (or replace) a tenant's monthly budget")
    s.add_argument("--tenant", type=tenant_id, required=True)
    s.add_argument("--usd", type=usd, required=True, help="monthly budget in USD")
    s.add_argument(
        "--thresholds", type=thresholds, default=[50, 80, 100], help="percentages (50,80,100)"
    )
    s.set_defaults(handler=set_command)
    ls = bs.add_parser("list", help="budgets, the month so far and the forecast")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(handler=list_command)
    al = bs.add_parser("alerts", help="alerts raised, newest first")
    al.add_argument("--tenant", type=tenant_id, help="only this tenant id")
    al.add_argument("--format", choices=("table", "json"), default="table")
    al.set_defaults(handler=alerts_command)
    rd = bs.add_parser(
        "redeliver", help="POST again the alerts whose webhook failed (once it is mended)"
    )
    rd.add_argument("--tenant", type=tenant_id, help="only this tenant id")
    rd.set_defaults(handler=redeliver_command)
    bs.add_parser(
        "new-secret", help="print a new AI_USAGE_ALERT_WEBHOOK_SECRET (whsec_ + 32 random bytes)"
    ).set_defaults(handler=new_secret_command)


def set_command(args: argparse.Namespace) -> int:
    from worker.ledger.budgets import set_budget

    engine = database()
    require_tenant(engine, args.tenant)
    try:
        set_budget(engine, args.tenant, args.usd, args.thresholds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    pct = ",".join(str(t) for t in args.thresholds)
    say(f"budget of {args.usd} USD a month for tenant {args.tenant}, alerts at {pct}%")
    return EXIT_OK


def list_command(args: argparse.Namespace) -> int:
    from worker.ledger.budgets import standings
    from worker.ledger.report import tenant_label

    rows = standings(database())
    if args.format == "json":
        say(json.dumps([r.as_dict() for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        say("no budgets: set one with `ai-usage budget set --tenant ID --usd 500`")
        return EXIT_OK
    header = (
        "tenant",
        "budget_usd",
        "cost_usd",
        "used",
        "forecast_usd",
        "on track to",
        "alerts at",
    )
    body = [
        (
            tenant_label(r.tenant_name, r.tenant_id),
            f"{r.budget_usd:.2f}",
            f"{r.cost_usd:.6f}",
            f"{r.used_pct:.1f}%",
            f"{r.forecast_usd:.2f}",
            "EXCEED" if r.on_track_to_exceed else "stay within",
            ",".join(map(str, r.thresholds)) + "%",
        )
        for r in rows
    ]
    say(_table(header, body, f"Budgets for {rows[0].month:%Y-%m} (UTC), forecast at the run rate"))
    unpriced = sum(r.unpriced_calls for r in rows)
    if unpriced:
        say(f"{unpriced} calls have no known price and are not in these costs.")
    return EXIT_OK


def alerts_command(args: argparse.Namespace) -> int:
    from worker.ledger.alerts import list_alerts

    engine = database()
    if args.tenant is not None:
        require_tenant(engine, args.tenant)
    rows = list_alerts(engine, args.tenant)
    if args.format == "json":
        say(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if not rows:
        say("no budget alerts")
        return EXIT_OK
    header = ("tenant", "month", "threshold", "cost_usd", "budget_usd", "sent_at", "webhook")
    body = [
        (
            r["tenant_id"][:8],
            r["month"],
            f"{r['threshold_pct']}%",
            r["cost_usd"],
            r["budget_usd"],
            r["sent_at"] or "not sent",
            r["webhook_status"] + (f" ({r['webhook_error']})" if r["webhook_error"] else ""),
        )
        for r in rows
    ]
    say(_table(header, body, "Budget alerts, newest first"))
    return EXIT_OK


def redeliver_command(args: argparse.Namespace) -> int:
    from worker.consumer.tasks import alert_webhook
    from worker.ledger.alerts import redeliver_failed

    webhook = alert_webhook()
    if webhook is None:
        raise UsageError("AI_USAGE_ALERT_WEBHOOK_URL is not set: there is no webhook to deliver to")
    engine = database()
    if args.tenant is not None:
        require_tenant(engine, args.tenant)
    tried, failed = redeliver_failed(engine, webhook, args.tenant)
    say(f"{tried} failed deliveries tried again: {tried - failed} delivered, {failed} failed")
    if failed:
        raise CommandError("see `ai-usage budget alerts` for each error")
    return EXIT_OK


def new_secret_command(args: argparse.Namespace) -> int:
    """A fresh signing secret in the Standard Webhooks format, for the sender and receiver."""
    import base64
    import secrets

    from worker.settings import WEBHOOK_SECRET_PREFIX

    say(WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode())
    return EXIT_OK


def raise_rollup_alerts(engine: Any) -> None:
    """After `ai-usage rollup`: raise the budget alerts the rollup made due, as the Beat task
    does (the same insert decides, so each alert is raised once whoever rolls up)."""
    from kombu.exceptions import OperationalError

    from worker.client.errors import ConfigError
    from worker.consumer.tasks import raise_alerts
    from worker.logs import redact

    try:
        raised = raise_alerts(engine)
    except OperationalError as exc:  # nothing was kept: the next rollup raises them
        raise Unreachable(
            f"broker unreachable, budget alerts not raised (the rollup is done; the next one"
            f" raises them): {redact(first_line(exc))}"
        ) from None
    except ConfigError as exc:  # the alerts go to the broker: a cron job may not name one
        raise CommandError(
            f"budget alerts not raised (the rollup is done): {exc}", EXIT_USAGE
        ) from None
    for alert in raised:
        say(
            f"budget alert: tenant {alert['tenant_id']} at {alert['threshold_pct']}% of"
            f" {alert['budget_usd']} USD for {alert['month']} (cost {alert['cost_usd']} USD)"
        )


def _table(header: Sequence[str], body: Sequence[Sequence[str]], title: str) -> str:
    from worker.textsafe import text_table

    return title + "\n" + text_table(header, body, numeric=False)
