"""Monthly budgets per tenant, and where each tenant-month stands against its budget.

The month-to-date cost is the daily rollups' (equal to the monthly report's); the forecast is
a linear run rate: the cost so far over the time elapsed in the UTC month, times the month's
length."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker.ledger.months import month_bounds, month_start

DEFAULT_THRESHOLDS = (50, 80, 100)

_UPSERT = """
INSERT INTO ai_usage_budgets (tenant_id, monthly_usd, thresholds)
VALUES (:tenant, :usd, CAST(:thresholds AS integer[]))
ON CONFLICT (tenant_id) DO UPDATE SET monthly_usd = EXCLUDED.monthly_usd,
    thresholds = EXCLUDED.thresholds, updated_at = now()
"""
_STANDING = """
SELECT b.tenant_id, t.name, b.monthly_usd, b.thresholds,
       COALESCE((SELECT SUM(d.cost_usd) FROM ai_usage_daily_rollups d
                 WHERE d.tenant_id = b.tenant_id AND d.day >= :first AND d.day < :after), 0),
       COALESCE((SELECT SUM(d.unpriced_calls) FROM ai_usage_daily_rollups d
                 WHERE d.tenant_id = b.tenant_id AND d.day >= :first AND d.day < :after), 0)
FROM ai_usage_budgets b LEFT JOIN tenants t ON t.id = b.tenant_id {where}
ORDER BY b.tenant_id
"""


@dataclass
class Standing:
    """A tenant-month against its budget."""

    tenant_id: uuid.UUID
    tenant_name: str | None
    month: dt.date
    budget_usd: Decimal
    thresholds: list[int]
    cost_usd: Decimal
    unpriced_calls: int
    forecast_usd: Decimal

    @property
    def used_pct(self) -> Decimal:
        return self.cost_usd / self.budget_usd * 100

    @property
    def on_track_to_exceed(self) -> bool:
        return self.forecast_usd > self.budget_usd

    def crossed(self) -> list[int]:
        """The thresholds reached, lowest first."""
        return sorted(t for t in self.thresholds if self.used_pct >= t)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": str(self.tenant_id),
            "tenant_name": self.tenant_name,
            "month": self.month.strftime("%Y-%m"),
            "budget_usd": str(self.budget_usd),
            "thresholds": self.thresholds,
            "cost_usd": str(self.cost_usd),
            "used_pct": str(round(self.used_pct, 2)),
            "unpriced_calls": self.unpriced_calls,
            "forecast_usd": str(self.forecast_usd),
            "on_track_to_exceed": self.on_track_to_exceed,
        }


def parse_thresholds(value: str | Sequence[int]) -> list[int]:
    """`50,80,100` to [50, 80, 100]: whole percentages from 1 to 1000, sorted, no repeats.
    ValueError names the option."""
    try:
        items = [int(v) for v in value.split(",")] if isinstance(value, str) else list(value)
    except ValueError:
        raise ValueError(
            f"--thresholds must be whole percentages such as 50,80,100, got {value!r}"
        ) from None
    if not items or any(not 1 <= v <= 1000 for v in items):
        raise ValueError(f"--thresholds must be percentages from 1 to 1000, got {value!r}")
    return sorted(set(items))


def set_budget(
    engine: Engine, tenant: uuid.UUID, usd: Decimal, thresholds: Sequence[int] = DEFAULT_THRESHOLDS
) -> None:
    """Create or replace the tenant's monthly budget."""
    if not usd > 0:
        raise ValueError(f"--usd must be more than 0, got {usd}")
    with engine.begin() as conn:
        conn.execute(
            text(_UPSERT),
            {"tenant": tenant, "usd": usd, "thresholds": parse_thresholds(thresholds)},
        )


def forecast(cost: Decimal, month: dt.date, now: dt.datetime) -> Decimal:
    """The month's cost at the run rate so far (the cost itself once the month is over)."""
    start, end = month_bounds(month)
    if now >= end:
        return cost
    elapsed = max((now - start).total_seconds(), 3600.0)  # the first hour says little
    return (cost * Decimal((end - start).total_seconds()) / Decimal(elapsed)).quantize(
        Decimal("0.000001")
    )


def standings(
    conn: Engine | Connection,
    month: dt.date | None = None,
    tenant: uuid.UUID | None = None,
    now: dt.datetime | None = None,
) -> list[Standing]:
    """Every budgeted tenant's month so far (this UTC month by default)."""
    now = now or dt.datetime.now(dt.UTC)
    month = month_start(month or now)
    _, end = month_bounds(month)
    params: dict[str, Any] = {"first": month, "after": end.date(), "tenant": tenant}
    sql = _STANDING.format(where="WHERE b.tenant_id = :tenant" if tenant is not None else "")
    scope = nullcontext(conn) if isinstance(conn, Connection) else conn.connect()
    with scope as c:
        rows = c.execute(text(sql), params).all()
    return [
        Standing(
            tenant_id=t,
            tenant_name=name,
            month=month,
            budget_usd=Decimal(usd),
            thresholds=list(th),
            cost_usd=Decimal(cost),
            unpriced_calls=int(unpriced),
            forecast_usd=forecast(Decimal(cost), month, now),
        )
        for t, name, usd, th, cost, unpriced in rows
    ]
