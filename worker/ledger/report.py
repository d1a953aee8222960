"""The usage report: reads the monthly rollups (never the log) and renders table, JSON or CSV."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from decimal import Decimal

from sqlalchemy import Connection, Engine, text

from worker.ledger.months import next_month
from worker.textsafe import csv_document, cut, text_table

#: Columns a tenant's name is cut to in the table (the full name is in JSON and CSV).
NAME_WIDTH = 20

COLUMNS = (
    "tenant_id",
    "tenant_name",
    "api_calls",
    "total_input_tokens",
    "total_output_tokens",
    "total_tokens",
    "total_cost_usd",
    "failed_calls",
    "unpriced_calls",
    "total_cache_read_tokens",
    "total_cache_write_tokens",
    "computed_at",
)


@dataclass
class ReportRow:
    """One tenant's month, as rolled up."""

    tenant_id: uuid.UUID
    tenant_name: str | None
    api_calls: int
    total_input_tokens: int
    total_output_tokens: int
    total_tokens: int
    total_cost_usd: Decimal | None
    failed_calls: int
    unpriced_calls: int
    computed_at: dt.datetime
    total_cache_read_tokens: int = 0
    total_cache_write_tokens: int = 0


@dataclass
class Report:
    month: dt.date
    rows: list[ReportRow]
    pending_tenants: int  # tenant-months changed since the last rollup


def load_report(
    engine: Engine | Connection, month: dt.date, tenant: uuid.UUID | None = None
) -> Report:
    """The month's rollup rows, most expensive first (as the spec's query orders them)."""
    sql = (
        "SELECT r.tenant_id, t.name, r.api_calls, r.total_input_tokens, r.total_output_tokens,"
        " r.total_tokens, r.total_cost_usd, r.failed_calls, r.unpriced_calls, r.computed_at,"
        " r.total_cache_read_tokens, r.total_cache_write_tokens"
        " FROM ai_usage_monthly_rollups r LEFT JOIN tenants t ON t.id = r.tenant_id"
        " WHERE r.month = :month"
    )
    params: dict[str, object] = {"month": month}
    if tenant is not None:
        sql += " AND r.tenant_id = :tenant"
        params["tenant"] = tenant
    sql += " ORDER BY r.total_cost_usd DESC NULLS LAST, r.tenant_id"
    scope = nullcontext(engine) if isinstance(engine, Connection) else engine.connect()
    with scope as conn:
        rows = [ReportRow(*r) for r in conn.execute(text(sql), params)]
        # Tenants with changes not folded yet (the delta table holds only those: it is small).
        pending_sql = (
            "SELECT count(DISTINCT tenant_id) FROM ai_usage_rollup_deltas"
            " WHERE day >= :month AND day < :after"
        )
        if tenant is not None:
            pending_sql += " AND tenant_id = :tenant"
        params["after"] = next_month(month)
        pending = int(conn.execute(text(pending_sql), params).scalar_one())
    return Report(month, rows, pending)


def _cost(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _plain(row: ReportRow) -> dict[str, object]:
    out = asdict(row)
    out["tenant_id"] = str(row.tenant_id)
    out["total_cost_usd"] = None if row.total_cost_usd is None else str(row.total_cost_usd)
    out["computed_at"] = row.computed_at.isoformat()
    return out


def render(report: Report, fmt: str, *, terminal: bool = False) -> str:
    """The report as `table`, `json` or `csv` text. JSON and CSV hold the exact values (CSV
    with text cells neutralised against formulas, see worker.textsafe.csv_document); with
    `terminal`, CSV's text cells are shown by the table's rule instead (no raw control)."""
    if fmt == "json":
        return json.dumps(
            {
                "month": report.month.strftime("%Y-%m"),
                "pending_tenant_months": report.pending_tenants,
                "rows": [_plain(r) for r in report.rows],
            },
            indent=2,
        )
    if fmt == "csv":
        return csv_document(
            COLUMNS,
            (
                [
                    str(r.tenant_id),
                    r.tenant_name,
                    *(getattr(r, c) for c in COLUMNS[2:-1]),
                    r.computed_at.isoformat(),
                ]
                for r in report.rows
            ),
            shown=terminal,
        )
    return _table(report)


def tenant_label(name: str | None, tenant_id: uuid.UUID | str) -> str:
    """A tenant as a table shows it: its name shown by the rule and cut to NAME_WIDTH
    columns, then the first 8 characters of its id."""
    return f"{cut(name or '', NAME_WIDTH)} {str(tenant_id)[:8]}"


def _table(report: Report) -> str:
    month = report.month.strftime("%Y-%m")
    if not report.rows:
        line = f"No rollup for {month} yet"
        if report.pending_tenants:
            line += f" ({report.pending_tenants} tenant-months wait for the next rollup)"
        return line + f": run `ai-usage rollup --month {month}`, or wait for Beat."
    header = ("tenant", "calls", "input", "output", "total", "cost_usd", "failed", "unpriced")
    body = [
        (
            tenant_label(r.tenant_name, r.tenant_id),
            str(r.api_calls),
            str(r.total_input_tokens),
            str(r.total_output_tokens),
            str(r.total_tokens),
            _cost(r.total_cost_usd) or "n/a",
            str(r.failed_calls),
            str(r.unpriced_calls),
        )
        for r in report.rows
    ]
    lines = [
        f"AI usage for {month} (UTC), from rollups computed up to "
        f"{max(r.computed_at for r in report.rows):%Y-%m-%d %H:%M:%S %Z}",
        text_table(header, body),
    ]
    unpriced = sum(r.unpriced_calls for r in report.rows)
    if unpriced:
        lines.append(
            f"{unpriced} calls have no known price (cost NULL, not $0): add a price override and"
            " run `ai-usage reprice`."
        )
    if report.pending_tenants:
        lines.append(f"{report.pending_tenants} tenant-months changed since the last rollup.")
    return "\n".join(lines)
