"""What every `ai-usage` command shares: exit codes, one-line errors, the database handle."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the CLI's entry point must import without the worker extra
    from sqlalchemy import Engine

#: Exit codes, documented in docs/running/health.md.
EXIT_OK = 0
EXIT_FAILED = 1  # a check failed, or some of the work did not succeed
EXIT_USAGE = 2  # bad arguments or configuration, or an argument that names nothing
EXIT_UNREACHABLE = 3  # the database or the broker cannot be reached, or the database is missing

#: Modules of the `worker` extra: without them, commands say how to install it.
WORKER_EXTRA = {"celery", "kombu", "sqlalchemy", "psycopg2", "alembic", "pydantic_settings"}


class CommandError(Exception):
    """Raised by a command to stop with one line on stderr and `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandError):
    """Raised for an argument that is well formed but names nothing (an unknown id, say)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class Unreachable(CommandError):
    """Raised when the database or the broker cannot be reached."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (and exit 2), not usage text."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes some arguments as typed (not as a repr: "unrecognized arguments"):
        # the line is shown by the rule for untrusted text, like every other error.
        line = f"{self.prog}: error: {message} (see `{self.prog} --help`)"
        self.exit(EXIT_USAGE, _visible(line) + "\n")


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def tenant_id(value: str) -> uuid.UUID:
    """An argparse type: a tenant id (a UUID)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a tenant UUID, got {value!r}") from None


def database() -> Engine:
    """This process's engine, connected once: a database that cannot be reached, or that does
    not exist, raises Unreachable with one line naming it (password redacted)."""
    from worker.ledger.db import get_engine
    from worker.settings import redact_url

    engine = get_engine()
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise Unreachable(
            f"database {redact_url(str(engine.url))} unreachable:"
            f" {first_line(getattr(exc, 'orig', None) or exc)}"
        ) from None
    return engine


def require_tenant(engine: Engine, tenant: uuid.UUID) -> None:
    """Raise UsageError unless `tenant` is a row of `tenants`."""
    from sqlalchemy import text

    with engine.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM tenants WHERE id = :t"), {"t": tenant}).first()
    if found is None:
        raise UsageError(f"no tenant with id {tenant}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type, for one-line errors."""
    text = str(exc).strip()
    line = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def shown(text: str) -> str:
    """`text` by the rule for untrusted text (worker.textsafe), line by line: its newlines are
    the only ones kept. A no-op on text already shown by the rule."""
    from worker.textsafe import visible

    return "\n".join(visible(line) for line in text.split("\n"))


def say(text: str) -> None:
    """Print a command's output (stdout). No raw control reaches the terminal: the values in
    `text` are shown by the rule already (tables), and this applies it once more per line."""
    print(shown(text), flush=True)


def say_exact(text: str) -> None:
    """Write `text` to stdout as it is (CSV: its CRLF line ends and exact values)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def to_terminal() -> bool:
    """Whether stdout is a terminal (CSV then shows its text cells by the rule)."""
    return sys.stdout.isatty()


def warn(text: str) -> None:
    """Print one line to stderr, shown by the rule for untrusted text: an error may quote a
    value (a provider's response, a producer's field), and its newlines are escaped too, so
    it can never forge a second line."""
    print(_visible(text), file=sys.stderr, flush=True)


def _visible(text: str) -> str:
    from worker.textsafe import visible

    return visible(text)
