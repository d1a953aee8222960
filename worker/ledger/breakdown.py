"""Breakdowns (`ai-usage report --by model|operation|day|user`) and daily costs.

Nothing here reads the log. model, operation and day are read from the daily rollups; user
from the per-user daily rollups (ai_usage_user_daily_rollups), for one tenant, through their
primary key (tenant_id, day, user_id): a read of about one row per active user and day, whatever
the table holds. (Read from the log, a tenant's rows are spread over every page of the month,
so the read cost what the table held: 5.1 s for 2.08M rows of a 30M-row table;
docs/ledger/scale.md.) Both are as of the last rollup run, as the other dimensions are.
Months retention closed before the per-user rollups existed have no per-user figures: a range
over one is refused, naming the months, rather than shown short."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker.ledger.months import month_start, next_month
from worker.ledger.rollup_sql import NO_USER
from worker.textsafe import csv_document, text_table

DIMENSIONS = ("model", "operation", "day", "user")
#: Columns a key (a model, an operation, a user id) is cut to in the table; JSON and CSV hold it
#: whole.
KEY_WIDTH = 48
COLUMNS = (
    "key",
    "api_calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "failed_calls",
    "unpriced_calls",
)

_SUMS = """SUM(api_calls), SUM(input_tokens), SUM(output_tokens), SUM(total_tokens),
       SUM(cache_read_tokens), SUM(cache_write_tokens),
       CASE WHEN SUM(api_calls) > SUM(unpriced_calls) THEN SUM(cost_usd) END,
       SUM(failed_calls), SUM(unpriced_calls)"""
_FROM_ROLLUPS = f"""
SELECT {{key}}, {_SUMS}
FROM ai_usage_daily_rollups WHERE day >= :first AND day <= :last {{tenant}}
GROUP BY 1
"""
#: The `--by user` statement: one tenant's per-user rows over [first, last], per user (events
#: without a user are kept under the nil UUID, shown as "(none)").
USER_SQL = f"""
SELECT NULLIF(user_id, CAST(:no_user AS uuid)), {_SUMS}
FROM ai_usage_user_daily_rollups WHERE tenant_id = :tenant AND day >= :first AND day <= :last
GROUP BY 1
"""
#: Closed months in [first, last] whose per-user figures were never kept.
_UNKEPT = """
SELECT month FROM ai_usage_closed_months
WHERE NOT has_user_rollups AND month >= date_trunc('month', CAST(:first AS date)) AND month <= :last
ORDER BY month
"""


@dataclass
class BreakdownRow:
    """One value of the dimension over the range."""

    key: str
    api_calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal | None
    failed_calls: int
    unpriced_calls: int


@dataclass
class Breakdown:
    by: str
    first: dt.date
    last: dt.date
    tenant: uuid.UUID | None
    rows: list[BreakdownRow]


@dataclass
class DailyCost:
    """A tenant's cost on one UTC day for one model."""

    tenant_id: uuid.UUID
    day: dt.date
    model: str
    api_calls: int
    cost_usd: Decimal
    unpriced_calls: int


def default_range(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """This UTC month: its first day to its last."""
    first = month_start(today or dt.datetime.now(dt.UTC).date())
    return first, next_month(first) - dt.timedelta(days=1)


def load_breakdown(
    engine: Engine | Connection,
    by: str,
    first: dt.date,
    last: dt.date,
    tenant: uuid.UUID | None = None,
) -> Breakdown:
    """Usage by `by` over [first, last] (UTC days, inclusive), most expensive first. ValueError
    names the option when the request is not one this can answer."""
    if by not in DIMENSIONS:
        raise ValueError(f"--by must be one of {', '.join(DIMENSIONS)}, got {by!r}")
    if last < first:
        raise ValueError(f"--to ({last}) is before --from ({first})")
    params: dict[str, Any] = {"first": first, "last": last, "tenant": tenant}
    if by == "user":
        if tenant is None:
            raise ValueError("--by user needs --tenant: per-user figures are kept per tenant")
        params["no_user"] = NO_USER
        sql = USER_SQL
    else:
        sql = _FROM_ROLLUPS.format(
            key="to_char(day, 'YYYY-MM-DD')" if by == "day" else by,
            tenant="AND tenant_id = :tenant" if tenant is not None else "",
        )
    scope = nullcontext(engine) if isinstance(engine, Connection) else engine.connect()
    with scope as conn:
        if by == "user":
            _refuse_unkept_months(conn, first, last)
        rows = [
            # SUM of a bigint is NUMERIC: the counts back to int, the cost kept exact.
            BreakdownRow(
                "(none)" if key is None else str(key),
                int(calls),
                int(inp),
                int(out),
                int(total),
                int(read),
                int(write),
                cost,
                int(failed),
                int(unpriced),
            )
            for key, calls, inp, out, total, read, write, cost, failed, unpriced in conn.execute(
                text(sql), params
            )
        ]
    if by == "day":
        rows.sort(key=lambda r: r.key)
    else:
        rows.sort(key=lambda r: (-(r.cost_usd or 0), -r.api_calls, r.key))
    return Breakdown(by, first, last, tenant, rows)


def _refuse_unkept_months(conn: Connection, first: dt.date, last: dt.date) -> None:
    """ValueError naming the months of [first, last] that have no per-user figures."""
    unkept = list(conn.execute(text(_UNKEPT), {"first": first, "last": last}).scalars())
    if unkept:
        names = ", ".join(m.strftime("%Y-%m") for m in unkept)
        raise ValueError(
            f"--by user: no per-user figures for {names}: retention closed"
            f" {'that month' if len(unkept) == 1 else 'those months'} before per-user rollups"
            " were kept; narrow --from/--to (their totals are in the other reports)"
        )


def daily_costs(
    conn: Engine | Connection, *, month: dt.date, tenant_id: uuid.UUID | None = None
) -> list[DailyCost]:
    """Cost per tenant, UTC day and model over `month`, from the daily rollups."""
    sql = (
        "SELECT tenant_id, day, model, SUM(api_calls), SUM(cost_usd), SUM(unpriced_calls)"
        " FROM ai_usage_daily_rollups WHERE day >= :first AND day < :after"
    )
    params: dict[str, Any] = {"first": month_start(month), "after": next_month(month)}
    if tenant_id is not None:
        sql += " AND tenant_id = :tenant"
        params["tenant"] = tenant_id
    sql += " GROUP BY 1, 2, 3 ORDER BY 2, 1, 3"
    scope = nullcontext(conn) if isinstance(conn, Connection) else conn.connect()
    with scope as c:
        return [
            DailyCost(t, d, m, int(n), Decimal(cost), int(unpriced))
            for t, d, m, n, cost, unpriced in c.execute(text(sql), params)
        ]


def _plain(row: BreakdownRow) -> dict[str, Any]:
    out = asdict(row)
    out["cost_usd"] = None if row.cost_usd is None else str(row.cost_usd)
    return out


def render_breakdown(b: Breakdown, fmt: str, *, terminal: bool = False) -> str:
    """The breakdown as `table`, `json` or `csv` text (`terminal`: as worker.ledger.report's
    render)."""
    if fmt == "json":
        return json.dumps(
            {
                "by": b.by,
                "from": b.first.isoformat(),
                "to": b.last.isoformat(),
                "tenant_id": None if b.tenant is None else str(b.tenant),
                "rows": [_plain(r) for r in b.rows],
            },
            indent=2,
        )
    if fmt == "csv":
        return csv_document(
            (b.by, *COLUMNS[1:]),
            ([getattr(r, c) for c in COLUMNS] for r in b.rows),
            shown=terminal,
        )
    scope = f"tenant {b.tenant}" if b.tenant else "all tenants"
    title = f"AI usage by {b.by}, {b.first} to {b.last} (UTC), {scope}"
    if not b.rows:
        return title + ": no usage (rollups fold new rows every rollup interval)"
    header = (b.by, "calls", "input", "output", "cache_read", "cost_usd", "failed", "unpriced")
    body = [
        (
            r.key,
            str(r.api_calls),
            str(r.input_tokens),
            str(r.output_tokens),
            str(r.cache_read_tokens),
            "n/a" if r.cost_usd is None else f"{r.cost_usd:.6f}",
            str(r.failed_calls),
            str(r.unpriced_calls),
        )
        for r in b.rows
    ]
    lines = [title, text_table(header, body, max_widths=[KEY_WIDTH])]
    unpriced = sum(r.unpriced_calls for r in b.rows)
    if unpriced:
        lines.append(f"{unpriced} calls have no known price (cost NULL, not $0).")
    return "\n".join(lines)
