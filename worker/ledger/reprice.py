"""`ai-usage reprice`: price the rows stored without a cost, now that a price is known.

Streams in keyset chunks (by id), each chunk read, priced and updated in a short transaction
of its own, so memory is bounded by the chunk whatever the number of unpriced rows, and
ingestion is never held up. The updates leave deltas like any write, so the rollups follow."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from worker.ledger.months import month_bounds, month_start
from worker.ledger.pricing import Pricer, PricingError, Usage
from worker.ledger.rollups import run_rollup

_SELECT = (
    "SELECT id, model, provider, input_tokens, output_tokens, cache_read_tokens,"
    " cache_write_tokens, usage_details, success, created_at FROM ai_usage_logs"
    " WHERE cost_usd IS NULL AND id > :after {month} ORDER BY id LIMIT :chunk"
)
# By created_at too: in the partitioned layout an id may be stored in two months (docs/ledger/
# scale.md), each row priced at its own time; and the month's partition alone is searched.
_UPDATE = (
    "UPDATE ai_usage_logs SET cost_usd = :cost"
    " WHERE id = :id AND created_at = :at AND cost_usd IS NULL"
)


@dataclass
class RepriceResult:
    """What `reprice` did."""

    priced: int
    still_unpriced: int
    months: list[dt.date]


def reprice(
    engine: Engine, pricer: Pricer, month: dt.date | None = None, chunk: int = 5000
) -> RepriceResult:
    """Price rows whose cost_usd is NULL at their own created_at, where a price now exists.
    Rows that already have a cost are never touched. Then folds the change into the rollups."""
    params: dict[str, Any] = {"chunk": chunk, "after": uuid.UUID(int=0)}
    month_sql = ""
    if month is not None:
        start, end = month_bounds(month)
        month_sql = "AND created_at >= :start AND created_at < :end"
        params.update(start=start, end=end)
    query = text(_SELECT.format(month=month_sql))
    priced = still = 0
    months: set[dt.date] = set()
    while True:
        with engine.begin() as conn:
            rows = conn.execute(query, params).all()
            if not rows:
                break
            params["after"] = rows[-1][0]
            updates: list[dict[str, Any]] = []
            for row_id, model, provider, inp, out, read, write, details, ok, created_at in rows:
                usage = Usage(inp, out, read or 0, write or 0, details or {})
                cost = None
                if not (usage.is_empty() and ok == "success"):  # no usage: unknown, not free
                    try:
                        cost = pricer.price_usage(model, provider, usage, created_at)
                    except PricingError:
                        cost = None
                if cost is None:
                    still += 1
                    continue
                updates.append({"id": row_id, "at": created_at, "cost": float(cost)})
                months.add(month_start(created_at))
            if updates:
                priced += conn.execute(text(_UPDATE), updates).rowcount
    if months:
        run_rollup(engine, wait=True)
    return RepriceResult(priced=priced, still_unpriced=still, months=sorted(months))
