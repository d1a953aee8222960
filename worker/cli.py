"""The `ai-usage` command: report, rollup, reprice, check, dead-letters, migrate, run."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from pathlib import Path

from worker.client.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _month(value: str) -> dt.date:
    from worker.ledger.rollups import parse_month

    try:
        return parse_month(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tenant(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tenant must be a UUID, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ai-usage", description="AI usage metering pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="monthly per-tenant usage, from the rollups")
    r.add_argument("--month", type=_month, help="YYYY-MM (default: this month, UTC)")
    r.add_argument("--tenant", type=_tenant, help="only this tenant id")
    r.add_argument("--format", choices=("table", "json", "csv"), default="table")

    ru = sub.add_parser("rollup", help="recompute rollups now")
    ru.add_argument("--month", type=_month, help="YYYY-MM (default: changed months + this month)")

    rp = sub.add_parser("reprice", help="price rows whose cost_usd is NULL, then refresh rollups")
    rp.add_argument("--month", type=_month, help="YYYY-MM (default: every month)")

    sub.add_parser("check", help="health checks; exit 1 if any fails")
    sub.add_parser("migrate", help="alembic upgrade head")

    dl = sub.add_parser("dead-letters", help="events that could not be stored")
    dls = dl.add_subparsers(dest="dl_command", required=True)
    dll = dls.add_parser("list", help="show dead letters with payload, reason and time")
    dll.add_argument("--limit", type=int, default=100)
    dll.add_argument("--format", choices=("table", "json"), default="table")
    dlr = dls.add_parser("replay", help="retry dead letters; what lands is removed")
    grp = dlr.add_mutually_exclusive_group(required=True)
    grp.add_argument("--id", type=int, nargs="+", dest="ids")
    grp.add_argument("--all", action="store_true")

    rn = sub.add_parser("run", help="the whole pipeline on embedded servers, with demo traffic")
    rn.add_argument("--once", action="store_true", help="exit after the demo and the report")
    rn.add_argument("--events", type=int, default=2000, help="demo events to send")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"ai-usage: configuration error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging

    configure_logging(level="WARNING")
    if args.command == "run":
        from worker.dev.demo import run

        return run(args.once, args.events, ROOT)

    from worker.ledger.db import get_engine
    from worker.settings import get_settings

    settings = get_settings()
    if args.command == "check":
        from worker.health import run_checks

        checks = run_checks(get_engine(), settings)
        for c in checks:
            print(c.line())
        return 1 if any(c.status == "fail" for c in checks) else 0

    engine = get_engine()
    if args.command == "migrate":
        from worker.ledger.db import migrate

        migrate()
        return 0
    if args.command == "report":
        from worker.ledger.report import load_report, render
        from worker.ledger.rollups import month_start

        month = args.month or month_start(dt.datetime.now(dt.UTC))
        print(render(load_report(engine, month, args.tenant), args.format))
        return 0
    if args.command == "rollup":
        from worker.ledger.rollups import run_rollup

        result = run_rollup(engine, [args.month] if args.month else None, wait=True)
        months = ", ".join(m.strftime("%Y-%m") for m in result.months)
        print(
            f"rolled up {months}: {result.rows_written} rows written, "
            f"{result.rows_deleted} stale rows removed in {result.seconds:.2f}s"
        )
        return 0
    if args.command == "reprice":
        from worker.ledger.pricing import default_pricer
        from worker.ledger.rollups import reprice

        rp = reprice(engine, default_pricer(), args.month)
        print(f"priced {rp.priced} rows; {rp.still_unpriced} rows still have no known price")
        if rp.months:
            print("rollups refreshed for " + ", ".join(m.strftime("%Y-%m") for m in rp.months))
        return 0
    if args.command == "dead-letters":
        return _dead_letters(args, engine)
    raise AssertionError(args.command)


def _dead_letters(args: argparse.Namespace, engine: object) -> int:
    from worker.ledger.deadletters import list_dead_letters, replay
    from worker.ledger.pricing import default_pricer

    if args.dl_command == "list":
        rows = list_dead_letters(engine, args.limit)  # type: ignore[arg-type]
        if args.format == "json":
            print(
                json.dumps(
                    [
                        {
                            "id": r.id,
                            "event_id": r.event_id,
                            "payload": r.payload,
                            "error": r.error,
                            "field": r.field,
                            "attempts": r.attempts,
                            "created_at": r.created_at.isoformat(),
                            "last_attempt_at": r.last_attempt_at.isoformat(),
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
            return 0
        if not rows:
            print("no dead letters")
        for r in rows:
            payload = r.payload if len(r.payload) <= 300 else r.payload[:300] + "..."
            print(
                f"#{r.id}  {r.last_attempt_at:%Y-%m-%d %H:%M:%S}  attempts={r.attempts}"
                f"  field={r.field or '-'}\n    reason:  {r.error}\n    payload: {payload}"
            )
        return 0
    result = replay(engine, default_pricer(), None if args.all else args.ids)  # type: ignore[arg-type]
    print(
        f"replayed: {result.landed} landed, {result.already_stored} were already stored,"
        f" {result.still_failing} still failing (kept, with their new reason)"
    )
    return 0 if result.still_failing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
