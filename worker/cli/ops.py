"""`ai-usage check`, `migrate` and `run`: for operators and release pipelines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, say


def register(sub: Any) -> None:
    sub.add_parser("check", help="health checks; exit 1 if any fails").set_defaults(handler=check)
    sub.add_parser(
        "migrate", help="upgrade the database to the shipped head (honours AI_USAGE_SCHEMA)"
    ).set_defaults(handler=migrate)
    about = (
        "a demo: the whole pipeline on embedded servers, with demo traffic; refuses"
        " DATABASE_URL / REDIS_URL servers that hold data"
    )
    rn = sub.add_parser("run", help=about, description=about[0].upper() + about[1:] + ".")
    rn.add_argument("--once", action="store_true", help="exit after the demo and the report")
    rn.add_argument("--events", type=int, default=2000, help="demo events to send")
    rn.add_argument(
        "--demo-into-existing",
        action="store_true",
        help="use DATABASE_URL / REDIS_URL even if they hold data: migrates, adds demo tenants"
        " and writes permanent demo events there",
    )
    rn.set_defaults(handler=run)


def check(args: argparse.Namespace) -> int:
    from worker.health import run_checks
    from worker.ledger.db import get_engine
    from worker.settings import get_settings

    checks = run_checks(get_engine(), get_settings())
    for c in checks:
        say(c.line())
    return EXIT_FAILED if any(c.status == "fail" for c in checks) else EXIT_OK


def migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError as Refused

    from worker.cli.common import database
    from worker.ledger.db import migrate as upgrade
    from worker.settings import get_settings

    if get_settings().schema_mode == "copied":
        raise CommandError(
            "AI_USAGE_SCHEMA=copied: the host application's chain holds our revisions;"
            " migrate with the host's `alembic upgrade head`",
            EXIT_USAGE,
        )
    database()  # one clear line if it cannot be reached
    try:
        done = upgrade()
    except Refused as exc:
        raise CommandError(str(exc).strip().splitlines()[0]) from None
    where = f"(AI_USAGE_SCHEMA={done.mode}, version table {done.version_table})"
    head = ", ".join(done.after)
    if done.before == done.after:
        say(f"already at head {head} {where}")
    else:
        say(
            f"migrated from {', '.join(done.before or ()) or 'no revision of ours'} to {head} {where}"
        )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """The demo. It never runs into servers that hold data unless told to (the refusal is a
    usage error); `worker.dev` is imported here only, never by the worker, beat or client."""
    from worker.dev.demo import refusal
    from worker.dev.demo import run as demo

    if not args.demo_into_existing:
        why = refusal()
        if why:
            raise CommandError(
                f"run is a demo: {why}; pass --demo-into-existing to go ahead", EXIT_USAGE
            )
    return demo(args.once, args.events, Path.cwd())
