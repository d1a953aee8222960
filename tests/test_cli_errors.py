"""`ai-usage` errors an operator can act on: one line on stderr, the documented exit code
(0 ok, 1 failed, 2 usage, 3 unreachable), and a traceback only with --debug."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from tests.conftest import AI_USAGE, ROOT, make_tenant, with_database
from worker.dev.embedded import free_port
from worker.ledger.rollups import run_rollup
from worker.settings import normalise_database_url


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AI_USAGE, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


DATABASE_COMMANDS = [
    ("report",),
    ("rollup",),
    ("reprice",),
    ("dead-letters", "list"),
    ("dead-letters", "replay", "--all"),
    ("migrate",),
]


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_unreachable_database_is_one_line_and_exit_3(command: tuple[str, ...]) -> None:
    url = f"postgresql://postgres:pw-cli-9@127.0.0.1:{free_port()}/x"
    out = cli(*command, DATABASE_URL=url)
    assert out.returncode == 3, out.stderr
    line = one_line(out)
    assert "unreachable" in line and "pw-cli-9" not in line


@pytest.fixture
def empty_database(pg_server: str) -> Iterator[str]:
    name = f"aiu_cli_{secrets.token_hex(3)}"
    admin = create_engine(
        normalise_database_url(with_database(pg_server, "postgres")), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield with_database(pg_server, name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_missing_database_is_exit_3(pg_server: str) -> None:
    out = cli("report", DATABASE_URL=with_database(pg_server, f"nope_{secrets.token_hex(3)}"))
    assert out.returncode == 3
    assert "does not exist" in one_line(out)


@pytest.mark.parametrize("command", DATABASE_COMMANDS[:5], ids=" ".join)
def test_unmigrated_database_says_migrate(empty_database: str, command: tuple[str, ...]) -> None:
    out = cli(*command, DATABASE_URL=empty_database)
    assert out.returncode == 3, out.stderr
    assert "ai-usage migrate" in one_line(out)


@pytest.mark.parametrize(
    "args,says",
    [
        (("dead-letters", "list", "--limit", "-1"), "must be at least 1"),
        (("dead-letters", "list", "--limit", "x"), "whole number"),
        (("dead-letters", "replay", "--id", "999999"), "no dead letter with id 999999"),
        (("report", "--month", "2026-13"), "YYYY-MM"),
        (("report", "--tenant", "acme"), "tenant UUID"),
        (("bogus",), "invalid choice"),
    ],
)
def test_usage_errors_are_exit_2(db: Engine, args: tuple[str, ...], says: str) -> None:
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert says in one_line(out)


def test_unknown_tenant_is_a_usage_error_even_after_a_rollup(db: Engine) -> None:
    make_tenant(db, "known")
    run_rollup(db)
    unknown = uuid.uuid4()
    out = cli("report", "--tenant", str(unknown))
    assert out.returncode == 2
    assert f"no tenant with id {unknown}" in one_line(out)
    assert out.stdout == ""


def test_a_known_tenant_without_usage_is_ok(db: Engine) -> None:
    tenant = make_tenant(db, "quiet")
    run_rollup(db)
    out = cli("report", "--tenant", str(tenant))
    assert out.returncode == 0, out.stderr


def test_debug_shows_the_traceback() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    out = cli("--debug", "report", DATABASE_URL=url)
    assert out.returncode != 0
    assert "Traceback" in out.stderr


HOSTILE_ARG = "x\x1b]0;retitled\x07\u202e\x9b2J\nOK   forged line"


def test_a_hostile_argument_in_a_usage_error_reaches_no_terminal_raw() -> None:
    # argparse quotes an unrecognised argument as it is (not as a repr): the error line must
    # still be one line with every control shown as an escape.
    out = cli("report", HOSTILE_ARG)
    assert out.returncode == 2, out.stderr
    line = one_line(out)
    assert "unrecognized arguments" in line
    assert line.isprintable() and "\\x1b]0;retitled\\x07\\u202e\\x9b2J\\n" in line


def test_an_error_quoting_a_multi_line_value_stays_one_line() -> None:
    from worker.cli.common import CommandError

    # A command's error may quote what a provider or producer sent (a reconcile fetch error
    # quotes the provider's response): it is still one line on stderr, shown by the rule.
    script = (
        "import sys; from worker.cli.common import warn; "
        f"warn('ai-usage: ' + {str(CommandError(HOSTILE_ARG))!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    line = one_line(out)
    assert line.isprintable() and line.endswith("\\nOK   forged line")
