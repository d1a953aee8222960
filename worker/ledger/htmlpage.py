"""`ai-usage report --html FILE`: one self-contained page, offline, with no script at all.

The charts are SVG drawn on the server (worker.ledger.svgchart): a reader sees them with
scripts disabled, the page weighs 165 KiB for 50 tenants x 20 models where plotly.js made it
4.7 MiB, and a hostile name is only ever escaped text, never a chart library's template or
markup. The page forbids every script and outside resource (its Content-Security-Policy),
follows the reader's colour scheme (prefers-color-scheme, in CSS), and embeds the JSON report
(`ai-usage report --format json`) escaped for a script element. Every name is shown by the rule
of worker.textsafe, isolated (`<bdi>`, `unicode-bidi: isolate`), cut to a number of columns
with the whole name on hover."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any, get_args

from worker.ledger.htmlreport import PageData
from worker.ledger.reconcile.core import DRIFT, Status
from worker.ledger.svgchart import PALETTE_SIZE, Bar, full_text, hbars, label_text, stacked_columns

#: Columns a tenant's name is cut to in the page's table (the hover text holds it whole).
NAME_COLUMNS = 24
#: Rows of the "metered vs provider" table at most (those that drift first); the rest are
#: counted above it.
MAX_RECONCILIATION_ROWS = 500
RECONCILIATION_COLUMNS = ("provider", "day", "model", "measure", "metered", "reported", "status")
#: Reconciliation's verdicts (worker.ledger.reconcile.core.Status); DRIFT are highlighted.
STATUSES = frozenset(get_args(Status))
# No script, no outside resource: the page works offline, and a script that a name smuggled
# in could not run even if escaping failed.
_CSP = "default-src 'none'; style-src 'unsafe-inline'"
# Light and dark fills for the PALETTE_SIZE series classes (c0..c19).
_LIGHT = [
    "#0969da",
    "#bf3989",
    "#1a7f37",
    "#bc4c00",
    "#8250df",
    "#cf222e",
    "#0a7c86",
    "#9a6700",
    "#57606a",
    "#6639ba",
    "#54aeff",
    "#ff80c8",
    "#4ac26b",
    "#fb8f44",
    "#c297ff",
    "#ff8182",
    "#3fb6c4",
    "#d4a72c",
    "#8c959f",
    "#a475f9",
]
_DARK = [
    "#4493f8",
    "#db61a2",
    "#3fb950",
    "#db6d28",
    "#ab7df8",
    "#f85149",
    "#39c5cf",
    "#d29922",
    "#9198a1",
    "#8957e5",
    "#80ccff",
    "#ffadda",
    "#7ee787",
    "#ffa657",
    "#d2a8ff",
    "#ffa198",
    "#76e3ea",
    "#e3b341",
    "#b7bdc8",
    "#bc8cff",
]
_CSS = (
    """
:root { --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --card: #f6f8fa; --line: #d1d9e0;
        --warn-fg: #7d4e00; --warn-bg: #fff8c5; --ok: #1a7f37; --near: #bf8700; --over: #cf222e;
        LIGHT }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --card: #151b23; --line: #3d444d;
          --warn-fg: #f2cc60; --warn-bg: #3b2300; --ok: #3fb950; --near: #d29922;
          --over: #f85149; DARK }
}
body { background: var(--bg); color: var(--fg); margin: 0 auto; max-width: 1100px;
       padding: 24px; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.muted { color: var(--muted); }
.kpis { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0; }
.kpi { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
       padding: 10px 14px; min-width: 150px; }
.kpi b { display: block; font-size: 20px; }
.unpriced { background: var(--warn-bg); color: var(--warn-fg); border-color: var(--warn-fg); }
.chart { border: 1px solid var(--line); border-radius: 8px; margin: 0; padding: 8px; }
.chart-svg { display: block; font: 12px system-ui, sans-serif; }
.chart-svg text { fill: var(--fg); }
.chart-svg .tick, .chart-svg .axis, .chart-svg .tag { fill: var(--muted); }
.chart-svg .grid { stroke: var(--line); } .chart-svg .reference { stroke: var(--over);
  stroke-dasharray: 4 3; stroke-width: 1.5; }
.name { unicode-bidi: isolate; }
.ok { fill: var(--ok); } .near { fill: var(--near); } .over { fill: var(--over); }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 14px; padding: 0;
          margin: 8px 0 0; font-size: 13px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 5px;
          border-radius: 2px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; white-space: nowrap; }
td.text { max-width: 20em; overflow: hidden; text-overflow: ellipsis; }
.scroll { overflow-x: auto; }
td.differs { color: var(--over); font-weight: 600; }
""".replace("LIGHT", " ".join(f"--c{i}: {c};" for i, c in enumerate(_LIGHT))).replace(
        "DARK", " ".join(f"--c{i}: {c};" for i, c in enumerate(_DARK))
    )
    + "".join(
        f".c{i} {{ fill: var(--c{i}); }} .swatch.c{i} {{ background: var(--c{i}); }}\n"
        for i in range(PALETTE_SIZE)
    )
)


def json_for_script(value: Any) -> str:
    """`value` as JSON that cannot end or alter the script element holding it: <, > and & as
    \\u escapes (so neither "</script>" nor "<!--" can appear), and U+2028/U+2029 escaped (the
    mapping of Django's json_script). JSON.parse of the element's text gives `value` back."""
    text = json.dumps(value, default=str)  # ensure_ascii: U+2028 and U+2029 come out escaped
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _script(element_id: str, value: Any) -> str:
    return f'<script type="application/json" id="{element_id}">{json_for_script(value)}</script>'


def _name(name: str | None, columns: int = NAME_COLUMNS) -> str:
    """An untrusted name as HTML: isolated, cut, the whole (shown by the rule) on hover."""
    return (
        f'<bdi class="name" title="{full_text(name or "")}">{label_text(name or "", columns)}</bdi>'
    )


def _tenant(name: str | None, tenant_id: str) -> str:
    return f'{_name(name or "tenant")} <span class="muted">{escape(tenant_id[:8])}</span>'


def _tenants_chart(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">No usage rolled up for this month yet.</p>'
    bars = [
        Bar(
            r["tenant_name"] or "tenant",
            r["tenant_id"][:8],
            float(r["total_cost_usd"] or 0),
            "unpriced" if r["total_cost_usd"] is None else f"{Decimal(r['total_cost_usd']):.2f}",
            exact="unpriced" if r["total_cost_usd"] is None else f"{r['total_cost_usd']} USD",
        )
        for r in rows
    ]
    return hbars(bars, axis="USD")


def _daily_chart(data: PageData) -> str:
    if not data.days:
        return '<p class="muted">No usage rolled up for this month yet.</p>'
    series = [
        (model, [by_day.get(d, Decimal(0)) for d in data.days])
        for model, by_day in sorted(data.daily.items())
    ]
    return stacked_columns([d.strftime("%b %d") for d in data.days], series, axis="USD")


def _budgets_chart(data: PageData) -> str:
    bars = [
        Bar(
            b.tenant_name or "tenant",
            str(b.tenant_id)[:8],
            float(b.used_pct),
            f"{b.used_pct:.1f}% of {b.budget_usd} USD",
            "over" if b.used_pct >= 100 else "near" if b.used_pct >= 80 else "ok",
        )
        for b in data.budgets
    ]
    return hbars(bars, axis="% of the monthly budget", reference=100.0)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = ("api_calls", "total_tokens", "total_cost_usd", "failed_calls", "unpriced_calls")
    head = "<th>tenant</th>" + "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        f"<tr><td>{_tenant(r['tenant_name'], r['tenant_id'])}</td>"
        + "".join(f"<td>{escape(str(r[c]) if r[c] is not None else 'n/a')}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table id="report-table"><tr>{head}</tr>{body}</table></div>'


def _number(value: object) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _differs(row: Mapping[str, Any]) -> bool:
    """Whether a row drifts: by its status when it is one of reconciliation's (a match within
    the tolerance may still differ by a token), by its figures otherwise."""
    status = row.get("status")
    if status in DRIFT:
        return True
    if status in STATUSES:
        return False
    metered, reported = _number(row.get("metered")), _number(row.get("reported"))
    if metered is None or reported is None:
        return row.get("metered") != row.get("reported")
    return metered != reported


def _reconciliation(
    rows: Sequence[Mapping[str, Any]] | None,
) -> tuple[str, list[Mapping[str, Any]]]:
    """The "metered vs provider" section, and the rows it shows: one row per provider, day,
    model and measure, those that drift first (highlighted), at most MAX_RECONCILIATION_ROWS."""
    if not rows:
        return (
            '<p class="muted" id="reconciliation-none">No reconciliation run yet: nothing to'
            " compare with the providers' own usage figures.</p>"
        ), []
    ordered = sorted(rows, key=lambda r: not _differs(r))
    shown = list(ordered[:MAX_RECONCILIATION_ROWS])
    differing = sum(1 for r in rows if _differs(r))
    head = "".join(f"<th>{c}</th>" for c in RECONCILIATION_COLUMNS)
    body = []
    for r in shown:
        mark = ' class="differs"' if _differs(r) else ""
        cells = [
            f'<td class="text">{_name(_cell(r.get(c)), 40)}</td>'
            for c in ("provider", "day", "model", "measure")
        ]
        cells += [f"<td{mark}>{escape(_cell(r.get(c)))}</td>" for c in ("metered", "reported")]
        cells.append(f'<td class="text">{_name(_cell(r.get("status")), 24)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f"{len(rows)} rows, {differing} that drift (highlighted)."
    if len(rows) > len(shown):
        note += f" The first {len(shown)} are shown, those that drift first."
    return (
        f'<p class="muted">{note}</p><div class="scroll"><table id="reconciliation-table">'
        f"<tr>{head}</tr>{''.join(body)}</table></div>"
    ), shown


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def render_page(data: PageData, reconciliation: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The whole page as one HTML string. `reconciliation` is a list of rows (dicts with
    provider, day, model, measure, metered, reported and status) for the "metered vs
    provider" section (worker.ledger.reconcile.latest_rows); empty or None shows that no
    reconciliation has run."""
    rows = data.report["rows"]
    total = sum((Decimal(r["total_cost_usd"]) for r in rows if r["total_cost_usd"]), Decimal(0))
    calls = sum(int(r["api_calls"]) for r in rows)
    scope = f"tenant {data.tenant}" if data.tenant else f"{len(rows)} tenant(s)"
    unpriced = (
        f'<div class="kpi unpriced" id="unpriced"><b>{data.unpriced_calls}</b>calls unpriced:'
        " cost unknown, not $0 (add a price, run ai-usage reprice)</div>"
        if data.unpriced_calls
        else '<div class="kpi" id="unpriced"><b>0</b>calls unpriced</div>'
    )
    budgets = (
        f'<figure class="chart" id="chart-budgets">{_budgets_chart(data)}</figure>'
        if data.budgets
        else '<p class="muted">No budget set (ai-usage budget set).</p>'
    )
    month = data.month.strftime("%Y-%m")
    matched, matched_rows = _reconciliation(reconciliation)
    return (
        '<!doctype html><html lang="en" dir="ltr"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>AI usage {month}</title><style>{_CSS}</style></head><body>"
        f"<h1>AI usage, {month} (UTC)</h1>"
        f'<p class="muted">{escape(scope)}; generated {data.generated_at:%Y-%m-%d %H:%M} UTC'
        " from the rollups.</p>"
        '<div class="kpis">'
        f'<div class="kpi"><b id="total-cost" title="{total}">{total:.2f}</b>USD, priced calls'
        "</div>"
        f'<div class="kpi"><b id="total-calls">{calls}</b>calls</div>{unpriced}</div>'
        f'<h2>Cost per tenant</h2><figure class="chart" id="chart-tenants">'
        f"{_tenants_chart(rows)}</figure>"
        f'<h2>Cost per day, by model</h2><figure class="chart" id="chart-daily">'
        f"{_daily_chart(data)}</figure>"
        f"<h2>Budgets</h2>{budgets}"
        f"<h2>Per tenant</h2>{_table(rows)}"
        f'<h2>Metered vs provider</h2><section id="reconciliation">'
        f"{matched}</section>"
        f"{_script('report-data', data.report)}"
        f"{_script('reconciliation-data', matched_rows)}"
        "</body></html>"
    )
