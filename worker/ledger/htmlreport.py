"""The data of `ai-usage report --html`: the month's report exactly as the JSON report gives it,
cost per day and model from the daily rollups, and the budgets. Rendering is htmlpage's."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from worker.ledger.breakdown import daily_costs
from worker.ledger.budgets import Standing, standings
from worker.ledger.report import load_report, render


@dataclass
class PageData:
    """What the page shows."""

    month: dt.date
    tenant: uuid.UUID | None
    #: The JSON report (`ai-usage report --format json`), parsed: the page's numbers.
    report: dict[str, Any]
    #: {model: {day: cost}} summed over the tenants shown.
    daily: dict[str, dict[dt.date, Decimal]]
    days: list[dt.date]
    budgets: list[Standing]
    unpriced_calls: int
    generated_at: dt.datetime


def gather(engine: Engine, month: dt.date, tenant: uuid.UUID | None = None) -> PageData:
    """Everything the page shows for `month` (one tenant, or all)."""
    report = json.loads(render(load_report(engine, month, tenant), "json"))
    daily: dict[str, dict[dt.date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    days: set[dt.date] = set()
    for d in daily_costs(engine, month=month, tenant_id=tenant):
        daily[d.model][d.day] += d.cost_usd
        days.add(d.day)
    budgets = standings(engine, month, tenant)
    return PageData(
        month=month,
        tenant=tenant,
        report=report,
        daily={m: dict(v) for m, v in daily.items()},
        days=sorted(days),
        budgets=budgets,
        unpriced_calls=sum(int(r["unpriced_calls"]) for r in report["rows"]),
        generated_at=dt.datetime.now(dt.UTC),
    )
