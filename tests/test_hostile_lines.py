"""Hostile text in the lines that are not tables: `ai-usage check`'s lines (a reconcile run's
error and provider model names), and the client's warnings, which land in the host
application's own log (whatever its formatter), not in ours."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Engine

from worker.health.check import Check

HOSTILE = "m\x1b]0;retitled\x1b\\\u202e\x9b2J\u2028\nOK   forged check line"


def test_a_check_line_is_one_line_with_no_raw_control() -> None:
    # A failed reconcile run's error quotes the provider's response; a model name comes from
    # the provider's report: neither may end the line and forge an "OK" check under it.
    line = Check("reconcile", "warn", f"openai: last run failed: {HOSTILE}").line()
    assert "\n" not in line and line.isprintable()
    assert line.endswith("\\u202e\\x9b2J\\u2028\\nOK   forged check line")


def test_a_check_line_still_redacts_a_password() -> None:
    line = Check("broker", "fail", "unreachable (redis://u:s3cret@h:1/0)\n").line()
    assert "s3cret" not in line and "u:***@" in line


def test_a_client_warning_shows_a_hostile_value_by_the_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.client.tracker import warn_once

    # The client logs into the application's handlers (plain logging.Formatter, say): the
    # values it quotes (a response type's name, an error quoting a response) are escaped
    # before they reach that log.
    with caplog.at_level(logging.WARNING, logger="worker.client.tracker"):
        warn_once(f"test:{HOSTILE}", "could not read the usage of a %s: %s", HOSTILE, 7)
    [record] = caplog.records
    message = logging.Formatter("%(message)s").format(record)
    assert "\n" not in message and message.isprintable()
    assert message.startswith("could not read the usage of a m\\x1b]0;retitled")
    assert message.endswith(": 7")


def test_a_failed_reconcile_runs_error_is_one_bounded_line_in_check(db: Engine) -> None:
    import datetime as dt
    from decimal import Decimal

    from worker.health.reconcile import check_reconcile
    from worker.ledger.reconcile import Scope, store
    from worker.settings import load_settings

    # The error of a failed run may quote the provider's response: as long and as hostile as
    # the provider likes. `ai-usage check` shows it on its one line, escaped and cut.
    day = dt.date(2026, 11, 1)
    with db.begin() as conn:
        run = store.start_run(conn, "openai", day, day, Scope((), (), ()), Decimal(1), Decimal(0))
        store.finish_run(conn, run, "HTTP 500: " + HOSTILE + "x" * 10_000)
    [check] = check_reconcile(db, load_settings())
    line = check.line()
    assert line.isprintable() and "\\x1b]0;retitled" in line and "\\nOK   forged" in line
    assert len(line) < 400 and line.endswith("…")
