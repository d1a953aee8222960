"""OpenAI's organization usage (`/organization/usage/completions` and `/embeddings`) and costs
(`/organization/costs`), in daily UTC buckets, onto our measures.

OpenAI's input_tokens already counts cached input (as ours does); input_cached_tokens is our
cache_read_tokens; num_model_requests is requests. Costs come in dollars (`amount.value`) per
`line_item`. The reference gives the line item's text only by example (`gpt-6.2-astra,
input_tokens`, in the SDK's `line_items` filter); real reports, as projects that read them
record, also prefix a service tier (`priority | gpt-5-2025-08-07, output, long context`) and
follow the model with a modality (`gpt-audio-mini-2025-10-06 audio, input`,
`gpt-image-1 text, cached input`). The model is read from the first part with both taken off;
a line item whose model genai-prices does not know (web search, file search, fine-tuning, ...)
is declared `not_covered`, never compared.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

from worker.ledger.pricing import find_model
from worker.ledger.reconcile.core import ProviderReport, RawResult, Scope, printable
from worker.ledger.reconcile.fetch import ReportClient
from worker.ledger.reconcile.shapes import (
    amount,
    bad,
    buckets,
    count,
    day_of,
    in_scope,
    nested,
    text_field,
)

USAGE_KINDS = ("completions", "embeddings")
COST_PATH = "/organization/costs"
PAGE_DAYS = 31


def headers(admin_key: str) -> dict[str, str]:
    """The organization API's header: a Bearer admin key."""
    return {"Authorization": f"Bearer {admin_key}"}


def _window(first: dt.date, last: dt.date, scope: Scope) -> list[tuple[str, str]]:
    start = dt.datetime.combine(first, dt.time(0), dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), dt.UTC)
    params = [
        ("start_time", str(int(start.timestamp()))),
        ("end_time", str(int(end.timestamp()))),
        ("bucket_width", "1d"),
        ("limit", str(PAGE_DAYS)),
    ]
    # Arrays are repeated keys, as OpenAI's SDK sends them.
    params += [("api_key_ids", k) for k in scope.api_key_ids]
    params += [("project_ids", p) for p in scope.project_ids]
    params += [("group_by", "api_key_id")] if scope.api_key_ids else []
    params += [("group_by", "project_id")] if scope.project_ids else []
    return params


def fetch(client: ReportClient, first: dt.date, last: dt.date, scope: Scope) -> ProviderReport:
    """Usage (completions and embeddings) and costs over [first, last], within `scope`."""
    report = ProviderReport()
    for kind in USAGE_KINDS:
        _usage(client, kind, first, last, scope, report)
    _costs(client, first, last, scope, report)
    return report


def _usage(
    client: ReportClient,
    kind: str,
    first: dt.date,
    last: dt.date,
    scope: Scope,
    report: ProviderReport,
) -> None:
    path_ = f"/organization/usage/{kind}"
    what = f"openai {path_}"
    params = [*_window(first, last, scope), ("group_by", "model")]
    for page, fetched_at in client.pages(path_, params):
        for start, end, where, results in buckets(what, page, "start_time", "end_time"):
            day = day_of(what, where, start, end)
            for path, result in results:
                report.raw.append(RawResult(f"usage/{kind}", start, end, result, fetched_at))
                if not in_scope(
                    what,
                    path,
                    result,
                    ((scope.api_key_ids, "api_key_id"), (scope.project_ids, "project_id")),
                ):
                    continue
                model = text_field(what, path, result, "model") or "(no model)"
                report.add(
                    day,
                    model,
                    {
                        "requests": count(what, path, result, "num_model_requests"),
                        "input_tokens": count(what, path, result, "input_tokens"),
                        "cache_read_tokens": count(what, path, result, "input_cached_tokens"),
                        "output_tokens": count(what, path, result, "output_tokens"),
                    },
                )


def _costs(
    client: ReportClient, first: dt.date, last: dt.date, scope: Scope, report: ProviderReport
) -> None:
    what = f"openai {COST_PATH}"
    params = [*_window(first, last, scope), ("group_by", "line_item")]
    for page, fetched_at in client.pages(COST_PATH, params):
        for start, end, where, results in buckets(what, page, "start_time", "end_time"):
            day = day_of(what, where, start, end)
            for path, result in results:
                report.raw.append(RawResult("costs", start, end, result, fetched_at))
                if not in_scope(
                    what,
                    path,
                    result,
                    ((scope.api_key_ids, "api_key_id"), (scope.project_ids, "project_id")),
                ):
                    continue
                money = nested(what, path, result, "amount")
                currency = (text_field(what, f"{path}.amount", money, "currency") or "usd").lower()
                if currency != "usd":
                    raise bad(
                        what, f"{path}.amount.currency", f"expected usd, got {printable(currency)}"
                    )
                usd = amount(what, f"{path}.amount.value", money.get("value", 0))
                item = text_field(what, path, result, "line_item") or "(no line item)"
                model = line_item_model(item)
                if item.lower().startswith("web search"):
                    # "web search tool calls": a line of its own, not in any model's cost.
                    report.add_web_search(day, usd)
                elif model is None:
                    report.add_unattributed(day, item, usd, "line item names no known model")
                else:
                    report.add_cost(day, model, usd)


# `priority | ` (or another tier) before the model; ` audio` (a modality) after it.
_TIER = re.compile(r"^[a-z_-]+\s*\|\s*", re.IGNORECASE)
_MODALITY = re.compile(r"\s+(?:audio|text|image|video)$", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def line_item_model(item: str) -> str | None:
    """The model a cost line item is for (`gpt-4o-2024-08-06, input`, `priority |
    gpt-4o-2024-08-06, output` and `gpt-4o-audio-preview-2024-12-17 audio, input` -> the
    model), or None when that is not a model genai-prices knows at OpenAI."""
    head = _MODALITY.sub("", _TIER.sub("", item.split(",", 1)[0].strip()))
    if not head or find_model(head.lower(), "openai") is None:
        return None
    return head
