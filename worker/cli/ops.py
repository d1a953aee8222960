"""`ai-usage check`, `migrate` and `run`: for operators and release pipelines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker.cli.common import EXIT_FAILED, EXIT_OK, say

#: The checkout root (the demo runs its processes from there).
ROOT = Path(__file__).resolve().parents[2]


def register(sub: Any) -> None:
    sub.add_parser("check", help="health checks; exit 1 if any fails").set_defaults(handler=check)
    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(handler=migrate)
    rn = sub.add_parser("run", help="the whole pipeline on embedded servers, with demo traffic")
    rn.add_argument("--once", action="store_true", help="exit after the demo and the report")
    rn.add_argument("--events", type=int, default=2000, help="demo events to send")
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
    from worker.cli.common import database
    from worker.ledger.db import migrate as upgrade

    database()  # one clear line if it cannot be reached
    upgrade()
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from worker.dev.demo import run as demo

    return demo(args.once, args.events, ROOT)
