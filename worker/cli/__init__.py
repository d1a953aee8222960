"""The `ai-usage` command: report, rollup, reprice, prune, partitions, budget, check,
dead-letters, migrate, run, reconcile.

Every command prints one clear line and exits non-zero when it cannot do its work; a traceback
only with `--debug`. Exit codes (docs/running/health.md): 0 ok, 1 a check or part of the work
failed, 2 a usage or configuration error, 3 the database or broker unreachable (or missing).
"""

from __future__ import annotations

import sys

from worker.cli import budget, deadletters, ops, partitions, reconcile, report, undecodable
from worker.cli.common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    WORKER_EXTRA,
    CommandError,
    Parser,
    first_line,
    warn,
)
from worker.client.errors import ConfigError

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(prog="ai-usage", description="AI usage metering pipeline.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (report, partitions, budget, deadletters, ops, undecodable, reconcile):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from worker.logs import configure_logging

        configure_logging(level="WARNING")
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        if args.debug or (exc.name or "").split(".")[0] not in WORKER_EXTRA:
            raise
        warn(
            f"ai-usage: {args.command} needs the worker extra ({exc.name} is not installed):"
            " pip install 'ai-usage-worker[worker]'"
        )
        return EXIT_USAGE
    except CommandError as exc:
        if args.debug:
            raise
        warn(f"ai-usage: {exc}")
        return exc.exit_code
    except ConfigError as exc:
        if args.debug:
            raise
        warn(f"ai-usage: configuration error: {exc}")
        return EXIT_USAGE
    except Exception as exc:
        if args.debug:
            raise
        code, line = _describe(exc)
        warn(f"ai-usage: {line}")
        return code


def _describe(exc: Exception) -> tuple[int, str]:
    """One line and an exit code for an error no command caught."""
    try:
        from sqlalchemy.exc import OperationalError, ProgrammingError
    except ModuleNotFoundError:  # a client-only install
        return EXIT_FAILED, f"{first_line(exc)} (run with --debug for the traceback)"
    if isinstance(exc, OperationalError):
        return EXIT_UNREACHABLE, f"database unreachable: {first_line(exc.orig or exc)}"
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc):
        return (
            EXIT_UNREACHABLE,
            f"database not migrated ({first_line(exc.orig or exc)}): run `ai-usage migrate`",
        )
    try:
        import redis

        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return EXIT_UNREACHABLE, f"broker unreachable: {first_line(exc)}"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return EXIT_FAILED, f"{first_line(exc)} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
