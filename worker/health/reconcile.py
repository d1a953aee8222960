"""`ai-usage check`, the reconciliation line: warns while a judged day drifts from the
provider's own report, when the last run failed, or when a configured provider never ran."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine

from worker.health.check import Check
from worker.ledger.reconcile.core import printable
from worker.settings import Settings

#: Days of verdicts looked at: a drift older than this is history, not an alarm.
WINDOW_DAYS = 31


def check_reconcile(
    engine: Engine, settings: Settings, now: dt.datetime | None = None
) -> list[Check]:
    """One line per provider configured or reconciled; none when reconciliation is unused."""
    from worker.ledger.reconcile import configured_providers, drifting_rows, last_runs

    now = now or dt.datetime.now(dt.UTC)
    since = now.date() - dt.timedelta(days=WINDOW_DAYS)
    try:
        with engine.connect() as conn:
            runs = last_runs(conn)
            drifting = {p: drifting_rows(conn, p, since) for p in runs}
    except Exception as exc:
        return [Check("reconcile", "warn", f"cannot read the runs: {type(exc).__name__}")]
    out: list[Check] = []
    for provider in sorted(set(configured_providers(settings)) | set(runs)):
        if provider not in runs:
            out.append(Check("reconcile", "warn", f"{provider}: has never run (is beat running?)"))
            continue
        outcome, started, error = runs[provider]
        rows = drifting[provider]
        if rows:
            days = sorted({r.day for r in rows})
            # Model names come from the provider's report: escaped before a terminal.
            models = [printable(m, 60) for m in sorted({r.model for r in rows})[:3]]
            out.append(
                Check(
                    "reconcile",
                    "warn",
                    f"{provider}: {len(rows)} rows drift on {len(days)} days ({days[0]} to {days[-1]};"
                    f" {', '.join(models)}): run `ai-usage reconcile --provider {provider}"
                    f" --from {days[0]} --to {days[-1]}`",
                )
            )
        elif outcome == "failed":
            # The error may quote the provider's response: escaped and cut, like the models.
            out.append(
                Check(
                    "reconcile",
                    "warn",
                    f"{provider}: last run ({started:%Y-%m-%d %H:%M}) failed:"
                    f" {printable(error or '', 200)}",
                )
            )
        else:
            out.append(
                Check(
                    "reconcile",
                    "ok",
                    f"{provider}: no judged day drifts (last run {started:%Y-%m-%d})",
                )
            )
    return out
