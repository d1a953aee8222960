"""Anthropic's Admin API usage report (`/v1/organizations/usage_report/messages`) and cost report
(`/v1/organizations/cost_report`), in daily UTC buckets, onto our measures.

Token types map exactly: our input_tokens counts every input token, so it is Anthropic's
uncached_input_tokens + cache_read_input_tokens + both cache_creation counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

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

USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
VERSION = "2023-06-01"
#: Most daily buckets a page may hold (both reports).
PAGE_DAYS = 31
#: Why cost cannot be judged per key: the cost report groups by workspace or description only.
NO_KEY_COST = (
    "Anthropic's cost report has no per-key grouping: a run scoped by api key cannot judge cost"
)
PRIORITY_COST = "Priority Tier usage: Anthropic's cost report omits its cost"


def headers(admin_key: str) -> dict[str, str]:
    """The Admin API's headers."""
    return {"x-api-key": admin_key, "anthropic-version": VERSION}


def _window(first: dt.date, last: dt.date) -> list[tuple[str, str]]:
    end = last + dt.timedelta(days=1)
    return [
        ("starting_at", f"{first.isoformat()}T00:00:00Z"),
        ("ending_at", f"{end.isoformat()}T00:00:00Z"),
        ("bucket_width", "1d"),
        ("limit", str(PAGE_DAYS)),
    ]


def fetch(client: ReportClient, first: dt.date, last: dt.date, scope: Scope) -> ProviderReport:
    """Both reports over [first, last] (UTC days), restricted to `scope`."""
    report = ProviderReport()
    _usage(client, first, last, scope, report)
    if scope.api_key_ids:
        report.cost_gap_all = NO_KEY_COST
    else:
        _cost(client, first, last, scope.workspace_ids, report)
    return report


def _usage(
    client: ReportClient, first: dt.date, last: dt.date, scope: Scope, report: ProviderReport
) -> None:
    # Grouped by service tier too: Priority Tier usage has no cost in the cost report.
    params = [*_window(first, last), ("group_by[]", "model"), ("group_by[]", "service_tier")]
    if scope.api_key_ids:
        params += [("group_by[]", "api_key_id")] + [("api_key_ids[]", k) for k in scope.api_key_ids]
    if scope.workspace_ids:
        params += [("group_by[]", "workspace_id")]
        params += [("workspace_ids[]", w) for w in scope.workspace_ids]
    what = f"anthropic {USAGE_PATH}"
    for page, fetched_at in client.pages(USAGE_PATH, params):
        for start, end, where, results in buckets(what, page, "starting_at", "ending_at"):
            day = day_of(what, where, start, end)
            for path, result in results:
                report.raw.append(
                    RawResult("usage_report/messages", start, end, result, fetched_at)
                )
                if not in_scope(
                    what,
                    path,
                    result,
                    ((scope.api_key_ids, "api_key_id"), (scope.workspace_ids, "workspace_id")),
                ):
                    continue
                model = text_field(what, path, result, "model") or "(no model)"
                creation = nested(what, path, result, "cache_creation")
                tools = nested(what, path, result, "server_tool_use")
                read = count(what, path, result, "cache_read_input_tokens")
                w5 = count(what, f"{path}.cache_creation", creation, "ephemeral_5m_input_tokens")
                w1 = count(what, f"{path}.cache_creation", creation, "ephemeral_1h_input_tokens")
                uncached = count(what, path, result, "uncached_input_tokens")
                report.add(
                    day,
                    model,
                    {
                        "input_tokens": uncached + read + w5 + w1,
                        "cache_read_tokens": read,
                        "cache_write_5m_tokens": w5,
                        "cache_write_1h_tokens": w1,
                        "output_tokens": count(what, path, result, "output_tokens"),
                        "web_searches": count(
                            what, f"{path}.server_tool_use", tools, "web_search_requests"
                        ),
                    },
                )
                if text_field(what, path, result, "service_tier") == "priority":
                    report.cost_gaps[(day, model)] = PRIORITY_COST


def _cost(
    client: ReportClient,
    first: dt.date,
    last: dt.date,
    workspaces: Sequence[str],
    report: ProviderReport,
) -> None:
    # The cost report filters nothing: a workspace scope is grouped by, then kept here.
    params = [*_window(first, last), ("group_by[]", "description")]
    if workspaces:
        params.append(("group_by[]", "workspace_id"))
    what = f"anthropic {COST_PATH}"
    for page, fetched_at in client.pages(COST_PATH, params):
        for start, end, where, results in buckets(what, page, "starting_at", "ending_at"):
            day = day_of(what, where, start, end)
            for path, result in results:
                report.raw.append(RawResult("cost_report", start, end, result, fetched_at))
                if workspaces and text_field(what, path, result, "workspace_id") not in workspaces:
                    continue
                currency = text_field(what, path, result, "currency") or "USD"
                if currency != "USD":
                    raise bad(what, f"{path}.currency", f"expected USD, got {printable(currency)}")
                # "Cost amount in lowest currency units (e.g. cents) as a decimal string".
                usd = amount(what, f"{path}.amount", result.get("amount")) / Decimal(100)
                model = text_field(what, path, result, "model")
                if text_field(what, path, result, "cost_type") == "web_search":
                    # "Web Search Usage": a line of its own, not in any model's cost.
                    report.add_web_search(day, usd)
                elif model:
                    report.add_cost(day, model, usd)
                else:
                    label = (
                        text_field(what, path, result, "description")
                        or text_field(what, path, result, "cost_type")
                        or "(no description)"
                    )
                    report.add_unattributed(day, label, usd, "names no model")
