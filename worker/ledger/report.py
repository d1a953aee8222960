"""The usage report: reads the monthly rollups (never the log) and renders table, JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from decimal import Decimal

from sqlalchemy import Connection, Engine, text

from worker.ledger.months import next_month

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


def render(report: Report, fmt: str) -> str:
    """The report as `table`, `json` or `csv` text."""
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
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in report.rows:
            p = _plain(r)
            writer.writerow(["" if p[c] is None else p[c] for c in COLUMNS])
        return buf.getvalue().rstrip("\n")
    return _table(report)


def text_table(header: Sequence[str], body: Sequence[Sequence[str]], numeric: bool = True) -> str:
    """Columns padded to their widest cell; the first left-aligned, the others right-aligned
    when `numeric` (left otherwise)."""
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt = "  ".join(
        f"{{:<{w}}}" if i == 0 or not numeric else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    return "\n".join(fmt.format(*row) for row in (header, *body))


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
            (r.tenant_name or "")[:20] + " " + str(r.tenant_id)[:8],
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
