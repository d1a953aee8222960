"""A local fake of Anthropic's Admin API usage and cost reports and OpenAI's organization usage
and costs, written from their documented shapes (/work/shared/notes/provider-usage-apis.md, the
official examples and the SDKs' types): daily UTC buckets, `has_more` / `next_page` pagination
with the cursor sent back as `page`, dimension fields `null` unless grouped by, group_by and
filters honoured, the auth headers checked. Failures on demand: a 429 with Retry-After, 5xx, a
slow page.

It runs as an HTTP server on 127.0.0.1 (a random port) in a thread; tests point
ANTHROPIC_BASE_URL / OPENAI_BASE_URL (or the run's options) at `.anthropic_url` / `.openai_url`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


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


@dataclass
class Failure:
    """An answer to give instead of the real one, to the next request whose path starts with
    `path` (a 429 with Retry-After, a 503, ...)."""

    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)


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
OPENAI_USAGE_GROUPS = {"project_id", "user_id", "api_key_id", "model", "batch", "service_tier"}
OPENAI_COST_GROUPS = {"project_id", "line_item", "api_key_id"}


class FakeProviderApis:
    """Both providers' report APIs over one local server."""

    def __init__(
        self, anthropic_key: str = "sk-ant-admin01-fake", openai_key: str = "sk-admin-fake"
    ) -> None:
        self.anthropic_key = anthropic_key
        self.openai_key = openai_key
        self.anthropic_usage: list[AnthropicUsage] = []
        self.anthropic_costs: list[AnthropicCost] = []
        self.openai_usage: list[OpenAIUsage] = []
        self.openai_costs: list[OpenAICost] = []
        self.failures: list[Failure] = []
        #: Seconds to wait before answering a page that carries a `page` cursor.
        self.slow_page_s = 0.0
        #: Every request: (path, query as parsed, headers).
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def anthropic_url(self) -> str:
        return self.url

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def __enter__(self) -> FakeProviderApis:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, path: str, status: int, **headers: str) -> None:
        """Answer the next request to `path` with `status` (and these headers)."""
        with self._lock:
            self.failures.append(
                Failure(path, status, {k.replace("_", "-"): v for k, v in headers.items()})
            )

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    # --- answering -----------------------------------------------------------------------

    def answer(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.requests.append((path, query, headers))
            for failure in self.failures:
                if path.startswith(failure.path):
                    self.failures.remove(failure)
                    return failure.status, failure.headers, _error("rate_limit_error", "slow down")
        if query.get("page") and self.slow_page_s:
            time.sleep(self.slow_page_s)
        if path.startswith("/v1/organizations/"):
            if headers.get("x-api-key") != self.anthropic_key:
                return 401, {}, _error("authentication_error", "invalid x-api-key")
            if not headers.get("anthropic-version"):
                return 400, {}, _error("invalid_request_error", "anthropic-version: required")
            if path == "/v1/organizations/usage_report/messages":
                return self._anthropic(query, usage=True)
            if path == "/v1/organizations/cost_report":
                return self._anthropic(query, usage=False)
        elif path.startswith("/v1/organization/"):
            if headers.get("authorization") != f"Bearer {self.openai_key}":
                return (
                    401,
                    {},
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                        }
                    },
                )
            if path in ("/v1/organization/usage/completions", "/v1/organization/usage/embeddings"):
                return self._openai(query, path.rsplit("/", 1)[-1])
            if path == "/v1/organization/costs":
                return self._openai(query, None)
        return 404, {}, _error("not_found_error", f"no route {path}")

    def _anthropic(
        self, query: dict[str, list[str]], *, usage: bool
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            start = _rfc3339(query["starting_at"][0])
            end = (
                _rfc3339(query["ending_at"][0])
                if "ending_at" in query
                else start + dt.timedelta(days=7)
            )
        except (KeyError, ValueError):
            return 400, {}, _error("invalid_request_error", "starting_at: invalid")
        if query.get("bucket_width", ["1d"])[0] != "1d":
            return 400, {}, _error("invalid_request_error", "bucket_width: only 1d here")
        limit = int(query.get("limit", ["7"])[0])
        if not 1 <= limit <= 31:
            return 400, {}, _error("invalid_request_error", "limit: 1 to 31 for 1d buckets")
        groups = query.get("group_by[]", [])
        allowed = ANTHROPIC_USAGE_GROUPS if usage else ANTHROPIC_COST_GROUPS
        if not set(groups) <= allowed:
            return 400, {}, _error("invalid_request_error", f"group_by[]: {groups}")
        first = _page_start(query) or start.date()
        days = _days(first, end.date(), limit)
        rows: dict[dt.date, list[dict[str, Any]]] = {}
        for day in days:
            if usage:
                rows[day] = self._anthropic_usage(day, groups, query)
            else:
                rows[day] = self._anthropic_cost(day, groups)
        data = [
            {
                "starting_at": f"{d.isoformat()}T00:00:00Z",
                "ending_at": f"{(d + dt.timedelta(days=1)).isoformat()}T00:00:00Z",
                "results": rows[d],
            }
            for d in days
        ]
        return 200, {}, _page(data, days, end.date())

    def _anthropic_usage(
        self, day: dt.date, groups: list[str], query: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        filters = {
            "api_key_id": query.get("api_key_ids[]"),
            "workspace_id": query.get("workspace_ids[]"),
            "model": query.get("models[]"),
            "service_tier": query.get("service_tiers[]"),
        }
        sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for u in self.anthropic_usage:
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

    def _anthropic_cost(self, day: dt.date, groups: list[str]) -> list[dict[str, Any]]:
        from decimal import Decimal

        described = "description" in groups
        sums: dict[tuple[Any, ...], Decimal | str] = defaultdict(Decimal)
        for c in self.anthropic_costs:
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

    def _openai(
        self, query: dict[str, list[str]], kind: str | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
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
        first = _page_start(query) or start.date()
        days = _days(first, end.date(), limit)
        projects, keys = query.get("project_ids"), query.get("api_key_ids")
        data = []
        for day in days:
            results: list[dict[str, Any]] = []
            if kind:
                sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
                for u in self.openai_usage:
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
                for c in self.openai_costs:
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
        return 200, {}, {"object": "page", **_page(data, days, end.date())}


def _handler(fake: FakeProviderApis) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = fake.answer(parts.path, query, headers)
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *_: Any) -> None:  # quiet
            pass

    return Handler


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _rfc3339(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _page_start(query: dict[str, list[str]]) -> dt.date | None:
    """The cursor is the next bucket's start, base64 (as Anthropic's `page_MjAy...` is)."""
    cursor = query.get("page", [""])[0]
    if not cursor:
        return None
    return _rfc3339(base64.b64decode(cursor.removeprefix("page_")).decode()).date()


def _days(first: dt.date, end: dt.date, limit: int) -> list[dt.date]:
    return list(_range(first, end))[:limit]


def _range(first: dt.date, end: dt.date) -> Iterator[dt.date]:
    day = first
    while day < end:
        yield day
        day += dt.timedelta(days=1)


def _page(data: list[dict[str, Any]], days: list[dt.date], end: dt.date) -> dict[str, Any]:
    following = days[-1] + dt.timedelta(days=1) if days else end
    more = following < end
    cursor = "page_" + base64.b64encode(f"{following.isoformat()}T00:00:00Z".encode()).decode()
    return {"data": data, "has_more": more, "next_page": cursor if more else None}
