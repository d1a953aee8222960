"""The verdicts: per UTC day, model and measure, our figure against the provider's."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from worker.ledger.reconcile.core import MEASURES, ProviderReport, Row, Status
from worker.ledger.reconcile.metered import Metered, model_key

#: Cost differences below this many dollars are rounding (float costs, fractional cents).
COST_FLOOR_USD = Decimal("0.000001")


@dataclass(frozen=True)
class Judging:
    """How figures are judged: the tolerance, the provider's reporting lag and the clock."""

    tolerance_pct: Decimal
    lag: dt.timedelta
    now: dt.datetime

    def provisional(self, day: dt.date) -> bool:
        """Whether `day` is still inside the provider's reporting lag."""
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), dt.UTC)
        return self.now < end + self.lag

    def within(self, metered: Decimal, reported: Decimal, floor: Decimal = Decimal(0)) -> bool:
        """Whether the two agree: the difference is at most the tolerance of the provider's
        figure (of ours when the provider reports 0), or at most `floor`."""
        base = abs(reported) or abs(metered)
        return abs(metered - reported) <= max(base * self.tolerance_pct / 100, floor)


def _direction(metered: Decimal, reported: Decimal) -> Status:
    return "under_metered" if metered < reported else "over_metered"


def judge(
    provider: str,
    metered: dict[tuple[dt.date, str], Metered],
    report: ProviderReport,
    judging: Judging,
) -> list[Row]:
    """Every row of the comparison, by day, then model, then measure (in MEASURES order)."""
    measures = MEASURES[provider]
    # Both sides keyed by (day, price entry); shown by the provider's name when it has one.
    names: dict[tuple[dt.date, str], str] = {}
    ours: dict[tuple[dt.date, str], Metered] = {}
    for (day, model), figures in metered.items():
        key = (day, model_key(model, provider))
        names.setdefault(key, model)
        into = ours.setdefault(key, Metered())
        for name, value in figures.values.items():
            into.values[name] = into.values.get(name, Decimal(0)) + value
        into.cost_usd += figures.cost_usd
        into.unpriced += figures.unpriced
        into.web_search_usd += figures.web_search_usd
    theirs: dict[tuple[dt.date, str], dict[str, Decimal]] = {}
    cost: dict[tuple[dt.date, str], Decimal] = {}
    gaps: dict[tuple[dt.date, str], str] = {}
    for (day, model), values in report.measures.items():
        key = (day, model_key(model, provider))
        names[key] = model
        into_r = theirs.setdefault(key, {})
        for name, value in values.items():
            into_r[name] = into_r.get(name, Decimal(0)) + value
    for (day, model), usd in report.cost_usd.items():
        key = (day, model_key(model, provider))
        names.setdefault(key, model)
        cost[key] = cost.get(key, Decimal(0)) + usd
    for (day, model), reason in report.cost_gaps.items():
        gaps[(day, model_key(model, provider))] = reason

    rows: list[Row] = []
    for key in sorted(names, key=lambda k: (k[0], names[k])):
        day, model = key[0], names[key]
        mine = ours.get(key, Metered())
        reported = theirs.get(key, {})
        wait = judging.provisional(day)
        quantities_match = True
        for measure in measures:
            if measure == "cost_usd":
                continue
            m = mine.values.get(measure, Decimal(0))
            r = reported.get(measure, Decimal(0))
            status: Status = "match" if judging.within(m, r) else _direction(m, r)
            quantities_match = quantities_match and status == "match"
            rows.append(Row(day, model, measure, m, r, "provisional" if wait else status))
        # A model's cost without its web searches: the reports bill them on a line of their
        # own (judged per day below), so leaving them in read as a price mismatch.
        tokens_only = Metered(mine.values, mine.cost_usd - mine.web_search_usd, mine.unpriced)
        rows.append(
            _cost_row(
                day,
                model,
                tokens_only,
                cost.get(key, Decimal(0)),
                report.cost_gap_all or gaps.get(key),
                quantities_match,
                judging,
            )
        )
    rows += _web_search_rows(ours, report, judging)
    for line in report.unattributed:
        rows.append(
            Row(
                line.day,
                line.label,
                "cost_usd",
                None,
                line.amount_usd,
                "not_covered",
                f"reported cost {line.reason}: not compared",
            )
        )
    rows.sort(key=lambda r: (r.day, r.model, measures.index(r.measure)))
    return rows


def _cost_row(
    day: dt.date,
    model: str,
    mine: Metered,
    reported: Decimal,
    gap: str | None,
    quantities_match: bool,
    judging: Judging,
) -> Row:
    if gap is not None:
        return Row(day, model, "cost_usd", mine.cost_usd, None, "not_covered", gap)
    if mine.unpriced:
        return Row(
            day,
            model,
            "cost_usd",
            mine.cost_usd,
            reported,
            "not_covered",
            f"{mine.unpriced} of our calls have no price (add a price override, then"
            " `ai-usage reprice`)",
        )
    if judging.provisional(day):
        return Row(day, model, "cost_usd", mine.cost_usd, reported, "provisional")
    if judging.within(mine.cost_usd, reported, COST_FLOOR_USD):
        return Row(day, model, "cost_usd", mine.cost_usd, reported, "match")
    if quantities_match:
        return Row(
            day,
            model,
            "cost_usd",
            mine.cost_usd,
            reported,
            "price_mismatch",
            "quantities match: our price differs from the provider's",
        )
    return Row(day, model, "cost_usd", mine.cost_usd, reported, _direction(mine.cost_usd, reported))


#: The model column of the web search rows: both reports bill searches apart from any model.
WEB_SEARCH = "(web search)"


def _web_search_rows(
    ours: dict[tuple[dt.date, str], Metered], report: ProviderReport, judging: Judging
) -> list[Row]:
    """Per UTC day: the cost of our web searches, over every model, against the report's own
    web search line."""
    mine: dict[dt.date, Decimal] = {}
    for (day, _), figures in ours.items():
        if figures.web_search_usd:
            mine[day] = mine.get(day, Decimal(0)) + figures.web_search_usd
    rows = []
    for day in sorted(set(mine) | set(report.web_search_usd)):
        m, r = mine.get(day, Decimal(0)), report.web_search_usd.get(day, Decimal(0))
        status: Status = "match" if judging.within(m, r, COST_FLOOR_USD) else _direction(m, r)
        if report.cost_gap_all is not None:
            rows.append(
                Row(day, WEB_SEARCH, "cost_usd", m, None, "not_covered", report.cost_gap_all)
            )
            continue
        rows.append(
            Row(
                day,
                WEB_SEARCH,
                "cost_usd",
                m,
                r,
                "provisional" if judging.provisional(day) else status,
            )
        )
    return rows
