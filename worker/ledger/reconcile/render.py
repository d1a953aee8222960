"""`ai-usage reconcile` output: a table, JSON or CSV, through the report's own renderers."""

from __future__ import annotations

import json
from decimal import Decimal

from worker.ledger.reconcile.core import DRIFT, Row, printable
from worker.ledger.reconcile.run import Reconciliation
from worker.textsafe import csv_document, text_table

COLUMNS = ("day", "model", "measure", "metered", "reported", "status", "detail")


def render(result: Reconciliation, fmt: str, *, terminal: bool = False) -> str:
    """The run as `table`, `json` or `csv` text. CSV is the report's (worker.textsafe: text
    cells neutralised against formulas, the figures as numbers, CRLF); with `terminal` its text
    cells are shown by the rule for untrusted text instead of exactly."""
    if fmt == "json":
        return json.dumps(result.as_dict(), indent=2)
    if fmt == "csv":
        return csv_document(
            COLUMNS,
            (
                [
                    row.day.isoformat(),
                    row.model,
                    row.measure,
                    _number(row.metered),
                    _number(row.reported),
                    row.status,
                    row.detail,
                ]
                for row in result.rows
            ),
            shown=terminal,
        )
    return _table(result)


def _number(value: Decimal | None) -> Decimal | None:
    # As JSON writes it (no exponent): 1E+3 is 1000 in the file too.
    return None if value is None else Decimal(format(value, "f"))


def _cell(value: object) -> str:
    # Model names and line items come from the provider: never raw to a terminal.
    return "" if value is None else printable(str(value), 80)


def _table(result: Reconciliation) -> str:
    scope = ", ".join(f"{k}={','.join(v)}" for k, v in result.scope.as_dict().items())
    title = (
        f"{result.provider} reconciliation {result.first} to {result.last} (UTC)"
        f", {scope or 'whole organisation'}, run {result.run_id}"
    )
    if not result.rows:
        return title + ": neither side has usage in this range"
    body = [tuple(_cell(value) for value in row.as_dict().values()) for row in result.rows]
    table = "\n".join(
        line.rstrip() for line in text_table(COLUMNS, body, numeric=False).split("\n")
    )
    lines = [title, table, summary(result.rows)]
    drifting = sum(1 for row in result.rows if row.status in DRIFT)
    if drifting:
        lines.append(f"{drifting} rows drift: see docs/reading/reconciliation.md, Statuses.")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """`3 match, 1 under_metered` for a list of rows."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
