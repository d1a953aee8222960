"""`ai-usage report`, `rollup`, `reprice` and `prune`: the numbers, from the rollups."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from worker.cli.common import (
    EXIT_OK,
    UsageError,
    database,
    require_tenant,
    say,
    say_exact,
    tenant_id,
    to_terminal,
)


def month(value: str) -> dt.date:
    """An argparse type: `YYYY-MM`."""
    from worker.ledger.months import parse_month

    try:
        return parse_month(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def day(value: str) -> dt.date:
    """An argparse type: `YYYY-MM-DD`."""
    from worker.ledger.months import parse_day

    try:
        return parse_day(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def age(value: str) -> int:
    """An argparse type: a number of months, `13m`."""
    from worker.ledger.months import parse_age_months

    try:
        return parse_age_months(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    r = sub.add_parser(
        "report", help="usage per tenant for a month, or by model/operation/day/user"
    )
    r.add_argument("--month", type=month, help="YYYY-MM (default: this month, UTC)")
    r.add_argument("--tenant", type=tenant_id, help="only this tenant id")
    r.add_argument("--by", choices=("model", "operation", "day", "user"), help="break down by")
    r.add_argument("--from", dest="first", type=day, help="with --by: first UTC day, YYYY-MM-DD")
    r.add_argument("--to", dest="last", type=day, help="with --by: last UTC day (inclusive)")
    r.add_argument("--format", choices=("table", "json", "csv"), default="table")
    r.add_argument("--html", metavar="FILE", help="write a self-contained HTML report there")
    r.set_defaults(handler=report)

    ru = sub.add_parser(
        "rollup",
        help="fold changes into the rollups now, or recompute a month; then raise the budget"
        " alerts made due, as Beat's rollup does",
    )
    ru.add_argument("--month", type=month, help="YYYY-MM: recompute it from the log")
    ru.set_defaults(handler=rollup)

    rp = sub.add_parser("reprice", help="price rows whose cost_usd is NULL, then refresh rollups")
    rp.add_argument("--month", type=month, help="YYYY-MM (default: every month)")
    rp.set_defaults(handler=reprice)

    pr = sub.add_parser("prune", help="delete raw rows of closed months (rollups are kept)")
    pr.add_argument(
        "--older-than",
        type=age,
        required=True,
        help="months to keep before the current one, e.g. 13m",
    )
    pr.add_argument("--batch", type=int, default=5000, help="rows per delete transaction")
    pr.set_defaults(handler=prune)


def report(args: argparse.Namespace) -> int:
    from worker.ledger.months import month_start

    engine = database()
    if args.tenant is not None:
        require_tenant(engine, args.tenant)
    if args.html:
        return html_report(engine, args)
    if args.by is None:
        if args.first or args.last:
            raise UsageError("--from/--to go with --by (the monthly report takes --month)")
        from worker.ledger.report import load_report, render

        chosen = args.month or month_start(dt.datetime.now(dt.UTC))
        report_ = load_report(engine, chosen, args.tenant)
        _out(render(report_, args.format, terminal=to_terminal()), args.format)
        return EXIT_OK
    from worker.ledger.breakdown import default_range, load_breakdown, render_breakdown

    first, last = default_range(args.month)
    try:
        b = load_breakdown(engine, args.by, args.first or first, args.last or last, args.tenant)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _out(render_breakdown(b, args.format, terminal=to_terminal()), args.format)
    return EXIT_OK


def _out(text: str, fmt: str = "") -> None:
    # CSV goes out exactly (CRLF line ends, values whole); everything else through say().
    if fmt == "csv":
        say_exact(text)
    else:
        say(text)


def html_report(engine: Any, args: argparse.Namespace) -> int:
    from worker.ledger.htmlpage import render_page
    from worker.ledger.htmlreport import gather
    from worker.ledger.months import month_start, next_month
    from worker.ledger.reconcile import latest_rows

    chosen = args.month or month_start(dt.datetime.now(dt.UTC))
    data = gather(engine, chosen, args.tenant)
    # The providers' verdicts for the month (they are per organisation, not per tenant).
    with engine.connect() as conn:
        verdicts = latest_rows(conn, since=chosen, until=next_month(chosen) - dt.timedelta(days=1))
    page = render_page(data, verdicts)
    try:
        with open(args.html, "w", encoding="utf-8") as out:
            out.write(page)
    except OSError as exc:
        raise UsageError(f"--html: cannot write {args.html}: {exc.strerror}") from None
    say(f"wrote {args.html} ({len(page) // 1024} KiB): the {chosen:%Y-%m} report, offline")
    return EXIT_OK


def rollup(args: argparse.Namespace) -> int:
    from worker.cli.budget import raise_rollup_alerts
    from worker.ledger.rollups import ClosedMonthError, run_rollup

    engine = database()
    try:
        result = run_rollup(engine, [args.month] if args.month else None, wait=True)
    except ClosedMonthError as exc:
        raise UsageError(str(exc)) from None
    months = ", ".join(m.strftime("%Y-%m") for m in result.months) or "nothing new"
    say(
        f"rolled up {months}: {result.buckets} daily buckets folded, {result.rows_written}"
        f" monthly rows written, {result.rows_deleted} emptied in {result.seconds:.2f}s"
    )
    raise_rollup_alerts(engine)
    return EXIT_OK


def reprice(args: argparse.Namespace) -> int:
    from worker.ledger.pricing import default_pricer
    from worker.ledger.reprice import reprice as reprice_rows

    rp = reprice_rows(database(), default_pricer(), args.month)
    say(f"priced {rp.priced} rows; {rp.still_unpriced} rows still have no known price")
    if rp.months:
        say("rollups refreshed for " + ", ".join(m.strftime("%Y-%m") for m in rp.months))
    return EXIT_OK


def prune(args: argparse.Namespace) -> int:
    from worker.ledger.retention import prune as prune_rows

    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    result = prune_rows(database(), args.older_than, batch=args.batch)
    if not result.months:
        say(f"nothing before {result.cutoff:%Y-%m} to prune")
        return EXIT_OK
    deleted = sum(result.rows_deleted.values())
    if result.newly_closed:
        closed = ", ".join(m.strftime("%Y-%m") for m in result.newly_closed)
        say(f"closed {closed} (rollups kept, final); deleted {deleted} raw rows")
    else:
        say(
            f"every month before {result.cutoff:%Y-%m} was closed already; deleted {deleted} raw rows"
        )
    return EXIT_OK
