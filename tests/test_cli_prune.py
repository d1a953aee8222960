"""`ai-usage prune` and `ai-usage rollup --month` on a closed month, through the CLI's entry
point: what an operator types, the lines it prints and the exit codes."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import Engine, text

from tests.conftest import make_tenant
from tests.test_rollup_deltas import THIS_MONTH, event, monthly_calls
from worker.cli import main as cli
from worker.ledger.ingest import write_batch
from worker.ledger.months import add_months
from worker.ledger.pricing import Pricer
from worker.ledger.rollups import run_rollup


def test_prune_command_closes_old_months_and_keeps_their_rollups(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = make_tenant(db)
    rng = random.Random(21)
    old = add_months(THIS_MONTH, -14)
    kept = add_months(THIS_MONTH, -2)
    for month, n in ((old, 12), (kept, 3)):
        at = dt.datetime(month.year, month.month, 28, 23, 59, tzinfo=dt.UTC)
        write_batch(db, [event(tenant, at, rng) for _ in range(n)], Pricer())
    run_rollup(db, wait=True)

    assert cli(["prune", "--older-than", "13m", "--batch", "5"]) == 0
    out = capsys.readouterr().out
    assert f"closed {old:%Y-%m} (rollups kept, final); deleted 12 raw rows" in out
    with db.connect() as conn:
        left = conn.execute(text("SELECT COUNT(*) FROM ai_usage_logs")).scalar()
        deltas = conn.execute(text("SELECT COUNT(*) FROM ai_usage_rollup_deltas")).scalar()
    assert (left, deltas) == (3, 0)  # the kept month untouched, the pruned rows left no delta

    assert cli(["rollup"]) == 0
    capsys.readouterr()
    assert (monthly_calls(db, tenant, old), monthly_calls(db, tenant, kept)) == (12, 3)

    # A rerun deletes nothing more; a recompute of the closed month is a usage error.
    assert cli(["prune", "--older-than", "13m"]) == 0
    assert "deleted 0 raw rows" in capsys.readouterr().out
    assert cli(["rollup", "--month", f"{old:%Y-%m}"]) == 2
    assert "closed by retention" in capsys.readouterr().err
    assert monthly_calls(db, tenant, old) == 12


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["prune"], "--older-than"),
        (["prune", "--older-than", "thirteen"], "older"),
        (["prune", "--older-than", "13m", "--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_prune_usage_errors_are_exit_2(
    db: Engine, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    try:
        code = cli(args)
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    assert says in capsys.readouterr().err
