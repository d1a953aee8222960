"""Our side: what ai_usage_logs holds for one provider, per UTC day and model, in the same
measures as the provider's reports; and the model matching both sides share.

A row is the provider's when its `provider` column names it, or, with no provider recorded,
when genai-prices finds its model at that provider (so a row recorded with `aws` or `azure`
is never counted against Anthropic's or OpenAI's own reports). Models are matched by their
genai-prices entry: an alias (`claude-sonnet-4-0`) and the dated id the provider reports
(`claude-sonnet-4-20250514`) are the same model.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Connection, text

from worker.ledger.months import day_bounds
from worker.ledger.pricing import Pricer, default_pricer
from worker.ledger.usage import PricingError, Usage

# Cache writes: usage_details carries the 5m / 1h split when the SDK reported one; a write
# with no split is a 5-minute write (Anthropic's default TTL), as pricing reads it.
_SQL = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, model, lower(provider) AS provider,
       count(*) FILTER (WHERE success = 'success'),
       sum(input_tokens),
       sum(COALESCE(cache_read_tokens, 0)),
       sum(COALESCE((usage_details->>'cache_write_5m_tokens')::bigint,
                    COALESCE(cache_write_tokens, 0)
                    - COALESCE((usage_details->>'cache_write_1h_tokens')::bigint, 0))),
       sum(COALESCE((usage_details->>'cache_write_1h_tokens')::bigint, 0)),
       sum(output_tokens),
       sum(COALESCE((usage_details->>'web_searches')::numeric, 0)),
       sum(cost_usd::numeric),
       count(*) FILTER (WHERE cost_usd IS NULL)
FROM ai_usage_logs
WHERE created_at >= :start AND created_at < :end
  AND (provider IS NULL OR lower(provider) = :provider)
GROUP BY 1, 2, 3
"""
_MEASURES = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "web_searches",
)


@dataclass
class Metered:
    """Our figures for one UTC day and model (the name as our rows spell it)."""

    values: dict[str, Decimal] = field(default_factory=dict)
    cost_usd: Decimal = Decimal(0)
    #: Calls with no known price: their cost is missing from cost_usd.
    unpriced: int = 0
    #: The part of cost_usd that is web searches (the providers bill it apart from models).
    web_search_usd: Decimal = Decimal(0)


def load_metered(
    conn: Connection,
    provider: str,
    first: dt.date,
    last: dt.date,
    pricer: Pricer | None = None,
) -> dict[tuple[dt.date, str], Metered]:
    """Our rows of `provider` over [first, last] (UTC days), by (day, model); the web search
    part of their cost priced by `pricer` (the process's own, overrides included)."""
    start, end = day_bounds(first, last)
    out: dict[tuple[dt.date, str], Metered] = {}
    rows = conn.execute(text(_SQL), {"start": start, "end": end, "provider": provider})
    for day, model, recorded, *sums, cost, unpriced in rows:
        if recorded is None and provider_model_id(model, provider) is None:
            continue
        into = out.setdefault((day, model), Metered())
        for name, value in zip(_MEASURES, sums, strict=True):
            into.values[name] = into.values.get(name, Decimal(0)) + Decimal(value or 0)
        into.cost_usd += Decimal(cost or 0)
        into.unpriced += int(unpriced)
    pricer = pricer or default_pricer()
    for (day, model), figures in out.items():
        searches = int(figures.values.get("web_searches", 0))
        if searches:
            noon = dt.datetime.combine(day, dt.time(12), dt.UTC)
            usage = Usage(0, 0, 0, 0, {"web_searches": searches})
            try:
                web = pricer.price_usage(model, provider, usage, noon)
            except PricingError:  # an override that cannot price searches: none to take out
                web = None
            figures.web_search_usd = web or Decimal(0)
    return out


@functools.lru_cache(maxsize=4096)
def provider_model_id(model: str, provider: str) -> str | None:
    """genai-prices' id of `model` at `provider` (strictly there, no guess elsewhere)."""
    from genai_prices import data_snapshot

    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(
            model.lower(), None, provider, None
        )
    except LookupError:
        return None
    return str(info.id)


# A snapshot's date at the end of its id: Anthropic's `-20250514`, OpenAI's `-2024-08-06`.
_DATED = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


def model_key(model: str, provider: str) -> str:
    """What both sides are matched on: the price entry, else the lower-case name without its
    snapshot date (a model newer than genai-prices' data is still one model whether a row
    names its alias or the provider reports its dated id)."""
    return provider_model_id(model, provider) or _DATED.sub("", model.lower())
