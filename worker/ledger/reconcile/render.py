"""`ai-usage reconcile` output: a table, JSON or CSV, through the report's own renderers."""

from __future__ import annotations

import csv
import io
import json

from worker.ledger.reconcile.core import DRIFT, Row, printable
from worker.ledger.reconcile.run import Reconciliation
from worker.ledger.report import text_table

COLUMNS = ("day", "model", "measure", "metered", "reported", "status", "detail")


def render(result: Reconciliation, fmt: str) -> str:
    """The run as `table`, `json` or `csv` text."""
    if fmt == "json":
        return json.dumps(result.as_dict(), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in result.rows:
            plain = row.as_dict()
            writer.writerow(["" if plain[c] is None else plain[c] for c in COLUMNS])
        return buf.getvalue().rstrip("\n")
    return _table(result)


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
