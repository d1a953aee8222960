"""The HTML report's charts as SVG drawn here, on the server: horizontal bars and stacked
columns. No script and no chart library: a reader sees them with scripts disabled, the page
stays small and offline, and a name is only ever text in an element (escaped by html.escape),
never a template, a format string or markup for a library to interpret.

Every value drawn is a mark (`<rect class="mark ...">`), in a group whose `<title>` is its
hover text (the full name and the exact figure). Names are shown by the rule of
worker.textsafe (controls as visible escapes), cut to a number of columns, and isolated
(`unicode-bidi: isolate` in the page's CSS for `.name`); colours are CSS classes, so the
page's light and dark schemes apply without a redraw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

from worker.textsafe import cut, visible

#: Colour classes of the series (the page's CSS gives each a light and a dark fill).
PALETTE_SIZE = 20
#: Columns a name is cut to inside a chart (the hover text holds it whole).
LABEL_COLUMNS = 24
_WIDTH = 1000
_ROW = 24
_LABEL_SPACE = 250
#: Where the names' room ends (the tag, an id's first 8 characters, takes the rest).
_NAME_RIGHT = _LABEL_SPACE - 70
_VALUE_SPACE = 150


@dataclass
class Bar:
    """One horizontal bar: `name` is untrusted text; `tag` (an id prefix), `figure` (shown at
    the bar's end) and `exact` (the hover text's figure, `figure` when empty) are ours."""

    name: str
    tag: str
    value: float
    figure: str
    tone: str = "c0"
    exact: str = ""


def _e(text: str) -> str:
    return escape(text, quote=True)


def label_text(name: str, columns: int = LABEL_COLUMNS) -> str:
    """`name` for a chart or a table cell: shown by the rule, cut to `columns`, HTML-escaped."""
    return _e(cut(name, columns))


def full_text(name: str) -> str:
    """`name` whole for a hover text: shown by the rule, HTML-escaped."""
    return _e(visible(name))


def nice_ceiling(value: float) -> tuple[float, float]:
    """An axis maximum at or above `value` and its tick step (1, 2 or 5 times a power of 10,
    four or five ticks)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0, 0.25
    raw = value / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return step * math.ceil(value / step - 1e-9), step


def _tick(value: float) -> str:
    return f"{value:g}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def hbars(bars: Sequence[Bar], *, axis: str, reference: float | None = None) -> str:
    """Horizontal bars, one row per bar (negative values drawn as 0, their figure exact), with
    an x axis titled `axis` and an optional dashed reference line (a budget's 100%)."""
    top = max([b.value for b in bars] + [reference or 0])
    ceiling, step = nice_ceiling(top)
    span = _WIDTH - _LABEL_SPACE - _VALUE_SPACE
    height = len(bars) * _ROW + 44
    scale = span / ceiling
    out = [
        f'<svg class="chart-svg" viewBox="0 0 {_WIDTH} {height}" width="100%" role="img"'
        f' aria-label="{_e(axis)}" direction="ltr">'
    ]
    ticks = round(ceiling / step)
    for i in range(ticks + 1):
        x = _LABEL_SPACE + i * step * scale
        out.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{height - 36}"/>'
            f'<text class="tick" x="{x:.1f}" y="{height - 22}" text-anchor="middle">'
            f"{_tick(i * step)}</text>"
        )
    # The names in a nested <svg> of their own: it clips a name wider than its room (the cut
    # is by columns, not pixels), and a name in its own element, apart from the tag, cannot
    # reorder the tag whatever its direction.
    names = [f'<svg class="names" x="0" y="0" width="{_NAME_RIGHT}" height="{height}">']
    for i, bar in enumerate(bars):
        y = 6 + i * _ROW
        w = max(bar.value, 0) * scale
        hover = f"{full_text(bar.name)} {_e(bar.tag)}: {_e(bar.exact or bar.figure)}"
        names.append(
            f'<text class="label" x="{_NAME_RIGHT - 2}" y="{y + 13}" text-anchor="end">'
            f'<title>{hover}</title><tspan class="name">{label_text(bar.name)}</tspan></text>'
        )
        out.append(
            f"<g><title>{hover}</title>"
            f'<rect class="mark {bar.tone}" x="{_LABEL_SPACE}" y="{y}" width="{w:.1f}"'
            f' height="{_ROW - 6}"/>'
            f'<text class="tag" x="{_LABEL_SPACE - 8}" y="{y + 13}" text-anchor="end">'
            f"{_e(bar.tag)}</text>"
            f'<text class="figure" x="{_LABEL_SPACE + w + 6:.1f}" y="{y + 13}">'
            f"{_e(bar.figure)}</text></g>"
        )
    out.append("".join(names) + "</svg>")
    if reference is not None:
        x = _LABEL_SPACE + reference * scale
        out.append(f'<line class="reference" x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{height - 36}"/>')
    out.append(
        f'<text class="axis" x="{_LABEL_SPACE + span / 2:.0f}" y="{height - 4}"'
        f' text-anchor="middle">{_e(axis)}</text></svg>'
    )
    return "".join(out)


def stacked_columns(
    columns: Sequence[str], series: Sequence[tuple[str, Sequence[Decimal]]], *, axis: str
) -> str:
    """One column per entry of `columns` (a day), stacking each series' value (a model's cost
    that day) in its colour; the legend (HTML, after the SVG) names each colour. A value of 0
    or less draws nothing; its exact figure is in the report."""
    totals = [
        sum((max(values[i], Decimal(0)) for _, values in series), Decimal(0))
        for i in range(len(columns))
    ]
    ceiling, step = nice_ceiling(float(max(totals, default=0)))
    height, left, bottom = 320, 64, 40
    plot = height - bottom - 10
    slot = (_WIDTH - left - 10) / max(len(columns), 1)
    scale = plot / ceiling
    out = [
        f'<svg class="chart-svg" viewBox="0 0 {_WIDTH} {height}" width="100%" role="img"'
        f' aria-label="{_e(axis)}" direction="ltr">'
    ]
    for i in range(round(ceiling / step) + 1):
        y = 10 + plot - i * step * scale
        out.append(
            f'<line class="grid" x1="{left}" x2="{_WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick(i * step)}</text>"
        )
    for d, day in enumerate(columns):
        x = left + d * slot + slot * 0.15
        base: float = 10 + plot
        for s, (name, values) in enumerate(series):
            value = values[d]
            if value <= 0:
                continue
            h = float(value) * scale
            base -= h
            out.append(
                f"<g><title>{full_text(name)}, {_e(day)}: {value} USD</title>"
                f'<rect class="mark c{s % PALETTE_SIZE}" x="{x:.1f}" y="{base:.1f}"'
                f' width="{slot * 0.7:.1f}" height="{h:.2f}"/></g>'
            )
        if len(columns) <= 16 or d % 2 == 0:
            out.append(
                f'<text class="tick" x="{x + slot * 0.35:.1f}" y="{10 + plot + 16}"'
                f' text-anchor="middle">{_e(day)}</text>'
            )
    out.append(
        f'<text class="axis" x="14" y="{10 + plot / 2:.0f}" text-anchor="middle"'
        f' transform="rotate(-90 14 {10 + plot / 2:.0f})">{_e(axis)}</text></svg>'
    )
    legend = "".join(
        f'<li><span class="swatch c{s % PALETTE_SIZE}"></span>'
        f'<bdi class="name" title="{full_text(name)}">{label_text(name, 40)}</bdi></li>'
        for s, (name, _) in enumerate(series)
    )
    return "".join(out) + f'<ul class="legend">{legend}</ul>'
