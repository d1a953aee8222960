"""`ai-usage report --html FILE`: one self-contained page, offline (plotly.js is inlined).

plotly (the optional `report` extra) draws the charts in the browser from figures built here:
it is maintained, works offline with its bundled JS, and its hover labels give exact values,
which hand-drawn SVG would have to reimplement. The page follows the reader's colour scheme
(prefers-color-scheme), redrawing the charts with matching colours when it changes. The
numbers shown in text (the table, the totals, the hover labels) are the JSON report's own
strings; the report itself is embedded as JSON too."""

from __future__ import annotations

import html
import json
from decimal import Decimal
from typing import Any

from worker.ledger.htmlreport import PageData

_CSS = """
:root { --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --card: #f6f8fa; --line: #d1d9e0;
        --warn-fg: #7d4e00; --warn-bg: #fff8c5; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --card: #151b23; --line: #3d444d;
          --warn-fg: #f2cc60; --warn-bg: #3b2300; }
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
.chart { height: 360px; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
"""

_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); });
  var figures = JSON.parse(document.getElementById('figures').textContent);
  var scheme = window.matchMedia('(prefers-color-scheme: dark)');
  function draw() {
    var dark = scheme.matches;
    var fg = dark ? '#e6edf3' : '#1f2328', grid = dark ? '#3d444d' : '#d1d9e0';
    var drawn = Object.keys(figures).map(function (id) {
      var fig = figures[id];
      var layout = Object.assign({}, fig.layout, {
        paper_bgcolor: 'rgba(0,0,0,0)', plot_bgcolor: 'rgba(0,0,0,0)', font: {color: fg},
        xaxis: Object.assign({}, fig.layout.xaxis, {gridcolor: grid, linecolor: grid}),
        yaxis: Object.assign({}, fig.layout.yaxis, {gridcolor: grid, linecolor: grid})
      });
      return Plotly.react(id, fig.data, layout, {displayModeBar: false, responsive: true});
    });
    Promise.all(drawn).then(function () {
      document.body.setAttribute('data-rendered', String(drawn.length));
      document.body.setAttribute('data-js-errors', String(errors.length));
    });
  }
  try { draw(); } catch (e) { errors.push(String(e)); document.body.setAttribute('data-js-errors', String(errors.length)); }
  scheme.addEventListener('change', draw);
})();
"""


def _label(row: dict[str, Any]) -> str:
    return f"{row['tenant_name'] or 'tenant'} {row['tenant_id'][:8]}"


def _chart_text(value: str) -> str:
    # plotly reads a subset of HTML in labels (<b>, <br>): a name is shown as text.
    return html.escape(value, quote=False)


def _figures(data: PageData) -> dict[str, Any]:
    import plotly.graph_objects as go

    rows = data.report["rows"]
    figures: dict[str, Any] = {}
    tenants = go.Figure(
        go.Bar(
            x=[_chart_text(_label(r)) for r in rows],
            y=[float(r["total_cost_usd"] or 0) for r in rows],
            text=[r["total_cost_usd"] or "unpriced" for r in rows],
            texttemplate="%{y:.2f}",
            hovertemplate="%{x}<br>%{text} USD<extra></extra>",
        ),
        layout={"margin": {"t": 16, "b": 80}, "yaxis": {"title": {"text": "USD"}}},
    )
    figures["chart-tenants"] = tenants
    daily = go.Figure(
        layout={
            "barmode": "stack",
            "margin": {"t": 40},
            "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom"},
            "xaxis": {"type": "category"},
            "yaxis": {"title": {"text": "USD"}},
        }
    )
    for model, by_day in sorted(data.daily.items()):
        costs = [by_day.get(d, Decimal(0)) for d in data.days]
        daily.add_trace(
            go.Bar(
                name=_chart_text(model),
                x=[d.strftime("%b %d") for d in data.days],
                y=[float(c) for c in costs],
                text=[str(c) for c in costs],
                hovertemplate=_chart_text(model) + "<br>%{x}: %{text} USD<extra></extra>",
                textposition="none",
            )
        )
    figures["chart-daily"] = daily
    if data.budgets:
        figures["chart-budgets"] = go.Figure(
            go.Bar(
                orientation="h",
                y=[
                    _chart_text(f"{b.tenant_name or 'tenant'} {str(b.tenant_id)[:8]}")
                    for b in data.budgets
                ],
                x=[float(b.used_pct) for b in data.budgets],
                text=[f"{b.used_pct:.1f}% of {b.budget_usd} USD" for b in data.budgets],
                marker={
                    "color": [
                        "#cf222e"
                        if b.used_pct >= 100
                        else "#bf8700"
                        if b.used_pct >= 80
                        else "#1a7f37"
                        for b in data.budgets
                    ]
                },
                hovertemplate="%{y}<br>%{text}<extra></extra>",
            ),
            layout={
                "margin": {"t": 16},
                "xaxis": {"title": {"text": "% of the monthly budget"}},
                "shapes": [
                    {
                        "type": "line",
                        "x0": 100,
                        "x1": 100,
                        "yref": "paper",
                        "y0": 0,
                        "y1": 1,
                        "line": {"dash": "dot", "color": "#cf222e"},
                    }
                ],
            },
        )
    return {k: json.loads(f.to_json()) for k, f in figures.items()}


def _json_script(element_id: str, value: Any) -> str:
    # "</" cannot end the script element early, whatever a tenant's name holds.
    payload = json.dumps(value, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{payload}</script>'


def _table(data: PageData) -> str:
    cols = (
        "tenant",
        "api_calls",
        "total_tokens",
        "total_cost_usd",
        "failed_calls",
        "unpriced_calls",
    )
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in data.report["rows"]:
        cells = [_label(r)] + [str(r[c]) if r[c] is not None else "n/a" for c in cols[1:]]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f'<table id="report-table"><tr>{head}</tr>{"".join(body)}</table>'


def render_page(data: PageData) -> str:
    """The whole page as one HTML string."""
    from plotly.offline import get_plotlyjs

    figures = _figures(data)
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
    charts = "".join(
        f'<h2>{title}</h2><div class="chart" id="{cid}"></div>'
        for cid, title in (
            ("chart-tenants", "Cost per tenant"),
            ("chart-daily", "Cost per day, by model"),
            ("chart-budgets", "Budgets"),
        )
        if cid in figures
    )
    if "chart-budgets" not in figures:
        charts += '<h2>Budgets</h2><p class="muted">No budget set (ai-usage budget set).</p>'
    month = data.month.strftime("%Y-%m")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>AI usage {month}</title><style>{_CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head>"
        '<body data-rendered="0" data-js-errors="0">'
        f"<h1>AI usage, {month} (UTC)</h1>"
        f'<p class="muted">{html.escape(scope)}; generated {data.generated_at:%Y-%m-%d %H:%M} UTC'
        " from the rollups.</p>"
        '<div class="kpis">'
        f'<div class="kpi"><b id="total-cost" title="{total}">{total:.2f}</b>USD, priced calls'
        "</div>"
        f'<div class="kpi"><b id="total-calls">{calls}</b>calls</div>'
        f"{unpriced}</div>{charts}<h2>Per tenant</h2>{_table(data)}"
        f"{_json_script('report-data', data.report)}{_json_script('figures', figures)}"
        f"<script>{_SCRIPT}</script></body></html>"
    )
