"""The fake's Anthropic Admin API usage and cost reports (see tests/fake_provider_apis.py)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.fake_report_pages import days_between, error, page, page_start, rfc3339


@dataclass
class AnthropicUsage:
    """Messages usage of one day (one API key, workspace, model and tier)."""

    day: dt.date
    model: str
    uncached_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_5m: int = 0
    cache_1h: int = 0
    output_tokens: int = 0
    web_search_requests: int = 0
    api_key_id: str | None = "apikey_01ours"
    workspace_id: str | None = "wrkspc_01ours"
    service_tier: str = "standard"
    context_window: str = "0-200k"


@dataclass
class AnthropicCost:
    """One cost line of a day: `amount` in cents, as a decimal string."""

    day: dt.date
    amount: str
    model: str | None
    token_type: str | None = "uncached_input_tokens"
    cost_type: str = "tokens"
    description: str | None = None
    workspace_id: str | None = "wrkspc_01ours"
    service_tier: str = "standard"


ANTHROPIC_USAGE_GROUPS = {
    "api_key_id",
    "workspace_id",
    "model",
    "service_tier",
    "context_window",
    "inference_geo",
    "speed",
    "account_id",
    "service_account_id",
}
ANTHROPIC_COST_GROUPS = {"workspace_id", "description"}


def answer(
    usage_rows: list[AnthropicUsage],
    cost_rows: list[AnthropicCost],
    query: dict[str, list[str]],
    *,
    usage: bool,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The usage report's (`usage`) or the cost report's page for `query`."""
    try:
        start = rfc3339(query["starting_at"][0])
        end = (
            rfc3339(query["ending_at"][0]) if "ending_at" in query else start + dt.timedelta(days=7)
        )
    except (KeyError, ValueError):
        return 400, {}, error("invalid_request_error", "starting_at: invalid")
    if query.get("bucket_width", ["1d"])[0] != "1d":
        return 400, {}, error("invalid_request_error", "bucket_width: only 1d here")
    limit = int(query.get("limit", ["7"])[0])
    if not 1 <= limit <= 31:
        return 400, {}, error("invalid_request_error", "limit: 1 to 31 for 1d buckets")
    groups = query.get("group_by[]", [])
    allowed = ANTHROPIC_USAGE_GROUPS if usage else ANTHROPIC_COST_GROUPS
    if not set(groups) <= allowed:
        return 400, {}, error("invalid_request_error", f"group_by[]: {groups}")
    first = page_start(query) or start.date()
    days = days_between(first, end.date(), limit)
    rows: dict[dt.date, list[dict[str, Any]]] = {}
    for day in days:
        if usage:
            rows[day] = _usage_results(usage_rows, day, groups, query)
        else:
            rows[day] = _cost_results(cost_rows, day, groups)
    data = [
        {
            "starting_at": f"{d.isoformat()}T00:00:00Z",
            "ending_at": f"{(d + dt.timedelta(days=1)).isoformat()}T00:00:00Z",
            "results": rows[d],
        }
        for d in days
    ]
    return 200, {}, page(data, days, end.date())


def _usage_results(
    usage_rows: list[AnthropicUsage], day: dt.date, groups: list[str], query: dict[str, list[str]]
) -> list[dict[str, Any]]:
    filters = {
        "api_key_id": query.get("api_key_ids[]"),
        "workspace_id": query.get("workspace_ids[]"),
        "model": query.get("models[]"),
        "service_tier": query.get("service_tiers[]"),
    }
    sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u in usage_rows:
        if u.day != day or any(ids and getattr(u, k) not in ids for k, ids in filters.items()):
            continue
        key = tuple((g, getattr(u, g, None)) for g in sorted(groups))
        s = sums[key]
        s["uncached_input_tokens"] += u.uncached_input_tokens
        s["cache_read_input_tokens"] += u.cache_read_input_tokens
        s["5m"] += u.cache_5m
        s["1h"] += u.cache_1h
        s["output_tokens"] += u.output_tokens
        s["web"] += u.web_search_requests
    out = []
    for key, s in sums.items():
        dims = dict(key)
        out.append(
            {
                # Every dimension is present, null unless grouped by.
                **{
                    g: dims.get(g)
                    for g in (
                        "api_key_id",
                        "workspace_id",
                        "model",
                        "service_tier",
                        "context_window",
                        "inference_geo",
                    )
                },
                "uncached_input_tokens": s["uncached_input_tokens"],
                "cache_creation": {
                    "ephemeral_1h_input_tokens": s["1h"],
                    "ephemeral_5m_input_tokens": s["5m"],
                },
                "cache_read_input_tokens": s["cache_read_input_tokens"],
                "output_tokens": s["output_tokens"],
                "server_tool_use": {"web_search_requests": s["web"]},
            }
        )
    return out


def _cost_results(
    cost_rows: list[AnthropicCost], day: dt.date, groups: list[str]
) -> list[dict[str, Any]]:
    described = "description" in groups
    sums: dict[tuple[Any, ...], Decimal | str] = defaultdict(Decimal)
    for c in cost_rows:
        if c.day != day or c.service_tier == "priority":  # Priority Tier: not in this report
            continue
        key: tuple[Any, ...] = (c.workspace_id if "workspace_id" in groups else None,)
        if described:
            key += (
                c.description or f"{c.model} Usage - {c.token_type}",
                c.cost_type,
                c.model,
                c.token_type,
                c.service_tier,
            )
        try:
            sums[key] = Decimal(sums[key]) + Decimal(c.amount)
        except ArithmeticError:
            sums[key] = c.amount  # passed through as given: a malformed answer on purpose
    out = []
    for key, cents in sums.items():
        row: dict[str, Any] = {"currency": "USD", "amount": str(cents), "workspace_id": key[0]}
        if described:
            row.update(
                description=key[1],
                cost_type=key[2],
                model=key[3],
                token_type=key[4],
                service_tier=key[5],
                context_window="0-200k",
                inference_geo="global",
            )
        else:
            row.update(
                description=None,
                cost_type=None,
                model=None,
                token_type=None,
                service_tier=None,
                context_window=None,
                inference_geo=None,
            )
        out.append(row)
    return out
