"""The fake's OpenAI organization usage and costs (see tests/fake_provider_apis.py)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tests.fake_report_pages import days_between, page, page_start


@dataclass
class OpenAIUsage:
    """Completions or embeddings usage of one day (one project, key and model)."""

    day: dt.date
    model: str
    input_tokens: int = 0
    input_cached_tokens: int = 0
    output_tokens: int = 0
    num_model_requests: int = 0
    kind: str = "completions"
    project_id: str | None = "proj_ours"
    api_key_id: str | None = "key_ours"


@dataclass
class OpenAICost:
    """One line item of a day, in dollars."""

    day: dt.date
    value: float
    line_item: str
    project_id: str | None = "proj_ours"
    api_key_id: str | None = "key_ours"


OPENAI_USAGE_GROUPS = {"project_id", "user_id", "api_key_id", "model", "batch", "service_tier"}
OPENAI_COST_GROUPS = {"project_id", "line_item", "api_key_id"}


def answer(
    usage_rows: list[OpenAIUsage],
    cost_rows: list[OpenAICost],
    query: dict[str, list[str]],
    kind: str | None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A page of usage/`kind` (completions, embeddings), or of costs when `kind` is None."""
    try:
        start = dt.datetime.fromtimestamp(int(query["start_time"][0]), dt.UTC)
        end = (
            dt.datetime.fromtimestamp(int(query["end_time"][0]), dt.UTC)
            if "end_time" in query
            else start + dt.timedelta(days=7)
        )
    except (KeyError, ValueError):
        return 400, {}, {"error": {"message": "start_time: required integer"}}
    limit = int(query.get("limit", ["7"])[0])
    if not 1 <= limit <= (31 if kind else 180):
        return 400, {}, {"error": {"message": "limit out of range"}}
    groups = query.get("group_by", [])
    if not set(groups) <= (OPENAI_USAGE_GROUPS if kind else OPENAI_COST_GROUPS):
        return 400, {}, {"error": {"message": f"group_by: {groups}"}}
    first = page_start(query) or start.date()
    days = days_between(first, end.date(), limit)
    projects, keys = query.get("project_ids"), query.get("api_key_ids")
    data = []
    for day in days:
        results: list[dict[str, Any]] = []
        if kind:
            sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for u in usage_rows:
                if (
                    u.kind != kind
                    or u.day != day
                    or (projects and u.project_id not in projects)
                    or (keys and u.api_key_id not in keys)
                ):
                    continue
                s = sums[tuple((g, getattr(u, g, None)) for g in sorted(groups))]
                for f in (
                    "input_tokens",
                    "input_cached_tokens",
                    "output_tokens",
                    "num_model_requests",
                ):
                    s[f] += getattr(u, f)
            for key, s in sums.items():
                dims = dict(key)
                row: dict[str, Any] = {
                    "object": f"organization.usage.{kind}.result",
                    "input_tokens": s["input_tokens"],
                    "num_model_requests": s["num_model_requests"],
                    **{
                        g: dims.get(g)
                        for g in ("project_id", "user_id", "api_key_id", "model", "batch")
                    },
                }
                if kind == "completions":
                    row.update(
                        input_cached_tokens=s["input_cached_tokens"],
                        output_tokens=s["output_tokens"],
                        input_audio_tokens=0,
                        output_audio_tokens=0,
                    )
                results.append(row)
        else:
            costs: dict[tuple[Any, ...], float] = defaultdict(float)
            for c in cost_rows:
                if (
                    c.day != day
                    or (projects and c.project_id not in projects)
                    or (keys and c.api_key_id not in keys)
                ):
                    continue
                costs[tuple((g, getattr(c, g, None)) for g in sorted(groups))] += c.value
            for key, value in costs.items():
                dims = dict(key)
                results.append(
                    {
                        "object": "organization.costs.result",
                        "amount": {"value": round(value, 10), "currency": "usd"},
                        **{g: dims.get(g) for g in ("line_item", "project_id", "api_key_id")},
                        "quantity": None,
                    }
                )
        start_s = int(dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp())
        data.append(
            {
                "object": "bucket",
                "start_time": start_s,
                "end_time": start_s + 86400,
                "results": results,
            }
        )
    return 200, {}, {"object": "page", **page(data, days, end.date())}
