"""`ai-usage check`'s partitions line (worker.health.partitions): this month's partition missing
fails, next month's missing warns, nothing is said in the default layout."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine

from tests.conftest import PARTITIONED
from worker.health import check_partitions
from worker.ledger.months import add_months, month_start

NOW = dt.datetime.now(dt.UTC)


def _at(month: dt.date) -> dt.datetime:
    return dt.datetime.combine(month, dt.time(12), dt.UTC)


def test_the_months_beat_keeps_pass(pdb: Engine) -> None:
    (check,) = check_partitions(pdb, NOW)
    ahead = add_months(month_start(NOW), 3)
    assert (check.status, check.detail) == ("ok", f"partitions made up to {ahead:%Y-%m}")


def test_next_month_missing_warns_and_this_month_missing_fails(pdb: Engine) -> None:
    # The last month made (3 ahead): its next one has no partition.
    (check,) = check_partitions(pdb, _at(add_months(month_start(NOW), 3)))
    assert check.status == "warn" and "ai-usage partitions ensure" in check.detail
    # A month beyond them all: its events would be dead-lettered.
    (check,) = check_partitions(pdb, _at(add_months(month_start(NOW), 5)))
    assert check.status == "fail" and "dead-lettered" in check.detail


@pytest.mark.skipif(PARTITIONED, reason="the run's own database is partitioned")
def test_the_default_layout_has_no_partitions_line(db: Engine) -> None:
    assert check_partitions(db, NOW) == []
