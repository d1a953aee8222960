"""The run tables: a run, the provider's raw results with fetched_at, the verdicts; and what
the latest runs say (for the HTML report, `ai-usage check` and the drift metric).

Runs are only ever added: a later run over the same days adds its own rows, and the latest
run covering a day is what that day's verdict is now."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

from worker.ledger.reconcile.core import DRIFT, RawResult, Row, Scope


def start_run(
    conn: Connection,
    provider: str,
    first: dt.date,
    last: dt.date,
    scope: Scope,
    tolerance_pct: Decimal,
    lag_hours: Decimal,
) -> int:
    """A new run, `running`; its id."""
    return int(
        conn.execute(
            text(
                "INSERT INTO ai_usage_reconcile_runs"
                " (provider, first_day, last_day, scope, tolerance_pct, lag_hours)"
                " VALUES (:p, :f, :l, CAST(:s AS jsonb), :t, :g) RETURNING id"
            ),
            {
                "p": provider,
                "f": first,
                "l": last,
                "s": json.dumps(scope.as_dict()),
                "t": tolerance_pct,
                "g": lag_hours,
            },
        ).scalar_one()
    )


def finish_run(conn: Connection, run_id: int, error: str | None = None) -> None:
    """Mark the run `ok`, or `failed` with its error (one line, no secret)."""
    conn.execute(
        text(
            "UPDATE ai_usage_reconcile_runs SET finished_at = now(), outcome = :o, error = :e"
            " WHERE id = :id"
        ),
        {"o": "failed" if error else "ok", "e": error, "id": run_id},
    )


def save_raw(conn: Connection, run_id: int, raw: Iterable[RawResult]) -> int:
    """Store the provider's results as received; how many."""
    params = [
        {
            "run": run_id,
            "report": r.report,
            "start": r.starting_at,
            "end": r.ending_at,
            "result": json.dumps(r.result),
            "fetched": r.fetched_at,
        }
        for r in raw
    ]
    if params:
        conn.execute(
            text(
                "INSERT INTO ai_usage_reconcile_buckets"
                " (run_id, report, starting_at, ending_at, result, fetched_at)"
                " VALUES (:run, :report, :start, :end, CAST(:result AS jsonb), :fetched)"
            ),
            params,
        )
    return len(params)


def save_rows(conn: Connection, run_id: int, provider: str, rows: Iterable[Row]) -> None:
    """Store a run's verdicts."""
    params = [
        {
            "run": run_id,
            "provider": provider,
            "day": r.day,
            "model": r.model[:200],
            "measure": r.measure,
            "metered": r.metered,
            "reported": r.reported,
            "status": r.status,
            "detail": r.detail,
        }
        for r in rows
    ]
    if params:
        conn.execute(
            text(
                "INSERT INTO ai_usage_reconcile_results"
                " (run_id, provider, day, model, measure, metered, reported, status, detail)"
                " VALUES (:run, :provider, :day, :model, :measure, :metered, :reported,"
                " :status, :detail)"
            ),
            params,
        )


# For each provider and day, the newest successful run that covered it: its rows are the
# day's verdict now (a day a newer run found nothing for has no rows, as it should).
_LATEST = """
SELECT r.provider, r.day, r.model, r.measure, r.metered, r.reported, r.status, r.detail,
       r.run_id
FROM ai_usage_reconcile_results r
WHERE r.run_id = (
    SELECT max(u.id) FROM ai_usage_reconcile_runs u
    WHERE u.provider = r.provider AND u.outcome = 'ok'
      AND r.day BETWEEN u.first_day AND u.last_day
)
{where}
ORDER BY r.provider, r.day, r.model, r.id
"""


def latest_rows(
    conn: Connection,
    provider: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> list[dict[str, Any]]:
    """The current verdicts over [since, until] (UTC days, either open), oldest day first:
    dicts of provider, day, model, measure, metered, reported and status (what the HTML
    report's "metered vs provider" section shows), each from the latest successful run that
    covered its day."""
    where, params = _filters(provider, since, until)
    return [
        {
            "provider": p,
            "day": d,
            "model": m,
            "measure": measure,
            "metered": metered,
            "reported": reported,
            "status": status,
        }
        for p, d, m, measure, metered, reported, status, _, _ in conn.execute(
            text(_LATEST.format(where=where)), params
        )
    ]


def drifting_rows(
    conn: Connection, provider: str | None = None, since: dt.date | None = None
) -> list[Row]:
    """The current verdicts that drift (under_metered, over_metered, price_mismatch)."""
    where, params = _filters(provider, since)
    where += " AND r.status = ANY(:drift)"
    params["drift"] = sorted(DRIFT)
    return [
        Row(d, m, measure, metered, reported, status, detail)
        for _, d, m, measure, metered, reported, status, detail, _ in conn.execute(
            text(_LATEST.format(where=where)), params
        )
    ]


def last_runs(conn: Connection) -> dict[str, tuple[str, dt.datetime, str | None]]:
    """Per provider, its newest run's outcome, start time and error."""
    out: dict[str, tuple[str, dt.datetime, str | None]] = {}
    for provider, outcome, started, error in conn.execute(
        text(
            "SELECT DISTINCT ON (provider) provider, outcome, started_at, error"
            " FROM ai_usage_reconcile_runs ORDER BY provider, id DESC"
        )
    ):
        out[str(provider)] = (str(outcome), started, error)
    return out


def _filters(
    provider: str | None, since: dt.date | None, until: dt.date | None = None
) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if provider is not None:
        clauses.append("r.provider = :provider")
        params["provider"] = provider
    if since is not None:
        clauses.append("r.day >= :since")
        params["since"] = since
    if until is not None:
        clauses.append("r.day <= :until")
        params["until"] = until
    return "".join(f" AND {c}" for c in clauses), params
