"""`ai-usage reconcile`: what we metered against the provider's own usage and cost reports."""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Unreachable,
    UsageError,
    say,
    say_exact,
    to_terminal,
)
from worker.cli.report import day


def percent(value: str) -> float:
    """An argparse type: a percentage from 0 to 100."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {value!r}") from None
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {value}")
    return number


def hours(value: str) -> float:
    """An argparse type: a number of hours, 0 or more."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, got {value!r}") from None
    if not 0 <= number <= 24 * 31:
        raise argparse.ArgumentTypeError(f"must be between 0 and 744, got {value}")
    return number


def register(sub: Any) -> None:
    r = sub.add_parser(
        "reconcile",
        help="compare what we metered with the provider's usage and cost reports",
        description="Per UTC day, model and measure: our rows against Anthropic's or OpenAI's"
        " own reports. Exit 1 when a row is under_metered, over_metered or price_mismatch.",
    )
    r.add_argument("--provider", choices=("anthropic", "openai"), required=True)
    r.add_argument("--from", dest="first", type=day, required=True, help="first UTC day")
    r.add_argument("--to", dest="last", type=day, required=True, help="last UTC day (inclusive)")
    r.add_argument("--format", choices=("table", "json", "csv"), default="table")
    r.add_argument(
        "--api-key-id", action="append", default=[], metavar="ID", help="only this key (repeat)"
    )
    r.add_argument(
        "--workspace-id",
        action="append",
        default=[],
        metavar="ID",
        help="only this Anthropic workspace (repeat)",
    )
    r.add_argument(
        "--project-id",
        action="append",
        default=[],
        metavar="ID",
        help="only this OpenAI project (repeat)",
    )
    r.add_argument("--tolerance", type=percent, metavar="PCT", help="match tolerance (default 0.5)")
    r.add_argument(
        "--lag-hours", type=hours, metavar="H", help="provider reporting lag (default 48)"
    )
    r.set_defaults(handler=reconcile)


def reconcile(args: argparse.Namespace) -> int:
    from worker.cli.common import database
    from worker.ledger.reconcile import (
        ConfigurationError,
        FetchError,
        Scope,
        options_from_settings,
    )
    from worker.ledger.reconcile import reconcile as run
    from worker.ledger.reconcile.render import render
    from worker.settings import get_settings

    scope = None
    if args.api_key_id or args.workspace_id or args.project_id:
        # Flags replace AI_USAGE_RECONCILE_SCOPE entirely: the run is what the line says.
        scope = Scope(tuple(args.api_key_id), tuple(args.workspace_id), tuple(args.project_id))
    try:
        options = options_from_settings(
            get_settings(),
            args.provider,
            scope=scope,
            tolerance_pct=args.tolerance,
            lag_hours=args.lag_hours,
        )
        result = run(database(), args.provider, args.first, args.last, options)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    except FetchError as exc:
        if exc.permanent:
            raise CommandError(str(exc), EXIT_USAGE) from None
        raise Unreachable(str(exc)) from None
    if args.format == "csv":  # exactly: its CRLF line ends and values (worker.textsafe)
        say_exact(render(result, "csv", terminal=to_terminal()))
    else:
        say(render(result, args.format))
    return EXIT_FAILED if result.drifting() else EXIT_OK
