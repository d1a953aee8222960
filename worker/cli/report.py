"""`ai-usage report`, `rollup` and `reprice`: the numbers, from the rollups."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from worker.cli.common import EXIT_OK, database, require_tenant, say, tenant_id


def month(value: str) -> dt.date:
    """An argparse type: `YYYY-MM`."""
    from worker.ledger.rollups import parse_month

    try:
        return parse_month(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    r = sub.add_parser("report", help="monthly per-tenant usage, from the rollups")
    r.add_argument("--month", type=month, help="YYYY-MM (default: this month, UTC)")
    r.add_argument("--tenant", type=tenant_id, help="only this tenant id")
    r.add_argument("--format", choices=("table", "json", "csv"), default="table")
    r.set_defaults(handler=report)

    ru = sub.add_parser("rollup", help="recompute rollups now")
    ru.add_argument("--month", type=month, help="YYYY-MM (default: changed months + this month)")
    ru.set_defaults(handler=rollup)

    rp = sub.add_parser("reprice", help="price rows whose cost_usd is NULL, then refresh rollups")
    rp.add_argument("--month", type=month, help="YYYY-MM (default: every month)")
    rp.set_defaults(handler=reprice)


def report(args: argparse.Namespace) -> int:
    from worker.ledger.report import load_report, render
    from worker.ledger.rollups import month_start

    engine = database()
    if args.tenant is not None:
        require_tenant(engine, args.tenant)
    chosen = args.month or month_start(dt.datetime.now(dt.UTC))
    say(render(load_report(engine, chosen, args.tenant), args.format))
    return EXIT_OK


def rollup(args: argparse.Namespace) -> int:
    from worker.ledger.rollups import run_rollup

    result = run_rollup(database(), [args.month] if args.month else None, wait=True)
    months = ", ".join(m.strftime("%Y-%m") for m in result.months)
    say(
        f"rolled up {months}: {result.rows_written} rows written, "
        f"{result.rows_deleted} stale rows removed in {result.seconds:.2f}s"
    )
    return EXIT_OK


def reprice(args: argparse.Namespace) -> int:
    from worker.ledger.pricing import default_pricer
    from worker.ledger.rollups import reprice as reprice_rows

    rp = reprice_rows(database(), default_pricer(), args.month)
    say(f"priced {rp.priced} rows; {rp.still_unpriced} rows still have no known price")
    if rp.months:
        say("rollups refreshed for " + ", ".join(m.strftime("%Y-%m") for m in rp.months))
    return EXIT_OK
