"""Reading the providers' reports from the fake: pagination, retries honouring Retry-After, the
total deadline, refused keys, null dimensions and the scope filters."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import gzip
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.fake_provider_apis import (
    AnthropicCost,
    AnthropicUsage,
    FakeProviderApis,
    OpenAICost,
    OpenAIUsage,
)
from worker.ledger.reconcile import (
    DeadlineExceeded,
    FetchError,
    Scope,
    anthropic_reports,
    openai_reports,
)
from worker.ledger.reconcile.fetch import ReportClient

FIRST = dt.date(2026, 10, 1)
SONNET = "claude-sonnet-4-20250514"


@pytest.fixture
def fake() -> Iterator[FakeProviderApis]:
    with FakeProviderApis() as f:
        yield f


class Sleeps:
    """A sleep that records what it was asked to wait, and waits nothing."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def anthropic_client(
    fake: FakeProviderApis,
    deadline_s: float = 30,
    sleep: Callable[[float], None] | None = None,
    key: str = "",
) -> ReportClient:
    return ReportClient(
        "anthropic",
        fake.anthropic_url,
        anthropic_reports.headers(key or fake.anthropic_key),
        deadline_s=deadline_s,
        sleep=sleep or Sleeps(),
    )


def test_every_page_of_both_reports_is_read(fake: FakeProviderApis) -> None:
    days = [FIRST + dt.timedelta(days=i) for i in range(40)]
    for i, day in enumerate(days):
        fake.anthropic_usage.append(AnthropicUsage(day, SONNET, uncached_input_tokens=i + 1))
        fake.anthropic_costs.append(AnthropicCost(day, "1.5", SONNET))
    with anthropic_client(fake) as client:
        report = anthropic_reports.fetch(client, days[0], days[-1], Scope())
    # 40 days at most 31 buckets a page: two pages of each report, the second by its cursor.
    usage_pages = [q for p, q, _ in fake.requests if p.endswith("/messages")]
    assert [("page" in q) for q in usage_pages] == [False, True]
    assert len([p for p in fake.paths() if p.endswith("/cost_report")]) == 2
    assert sorted(d for d, _ in report.measures) == days
    assert sum(m["input_tokens"] for m in report.measures.values()) == sum(range(1, 41))
    # Cents as a decimal string: 1.5 cents a day is $0.015.
    assert set(report.cost_usd.values()) == {dt_cents("1.5")}


def dt_cents(cents: str) -> Decimal:
    return Decimal(cents) / 100


def test_openai_pages_and_both_usage_endpoints(fake: FakeProviderApis) -> None:
    days = [FIRST + dt.timedelta(days=i) for i in range(33)]
    for day in days:
        fake.openai_usage.append(OpenAIUsage(day, "gpt-4o-mini-2024-07-18", 100, 40, 10, 2))
        fake.openai_usage.append(
            OpenAIUsage(day, "text-embedding-3-small", 50, num_model_requests=1, kind="embeddings")
        )
        fake.openai_costs.append(OpenAICost(day, 0.25, "gpt-4o-mini-2024-07-18, input"))
        fake.openai_costs.append(OpenAICost(day, 0.5, "Web search tool calls"))
    with ReportClient(
        "openai", fake.openai_url, openai_reports.headers(fake.openai_key), deadline_s=30
    ) as client:
        report = openai_reports.fetch(client, days[0], days[-1], Scope())
    for path in ("completions", "embeddings", "costs"):
        assert len([p for p in fake.paths() if p.endswith(path)]) == 2, path
    mini = report.measures[(days[-1], "gpt-4o-mini-2024-07-18")]
    assert [mini["requests"], mini["input_tokens"], mini["cache_read_tokens"]] == [2, 100, 40]
    assert report.measures[(days[0], "text-embedding-3-small")]["input_tokens"] == 50
    assert len(report.cost_usd) == 33
    # Web searches are billed apart from any model: compared per day, on their own.
    assert report.unattributed == []
    assert report.web_search_usd == dict.fromkeys(days, Decimal("0.5"))


@pytest.mark.parametrize(
    ("item", "model"),
    [
        ("gpt-4o-2024-08-06, input_tokens", "gpt-4o-2024-08-06"),
        ("gpt-4o-mini-2024-07-18, cached input", "gpt-4o-mini-2024-07-18"),
        ("GPT-4o, Output", "GPT-4o"),
        # Real line items, as projects that read them record: a tier before the model,
        # a modality after it.
        ("priority | gpt-4o-2024-08-06, output", "gpt-4o-2024-08-06"),
        ("priority | gpt-4.1-2025-04-14, output, long context", "gpt-4.1-2025-04-14"),
        ("gpt-4o-audio-preview-2024-12-17 audio, input", "gpt-4o-audio-preview-2024-12-17"),
        ("gpt-4o-mini-2024-07-18 text, cached input", "gpt-4o-mini-2024-07-18"),
        ("Vector storage", None),
        ("file search tool calls", None),
    ],
)
def test_openai_line_items_name_their_model(
    fake: FakeProviderApis, item: str, model: str | None
) -> None:
    fake.openai_costs.append(OpenAICost(FIRST, 0.125, item))
    with ReportClient(
        "openai", fake.openai_url, openai_reports.headers(fake.openai_key), deadline_s=30
    ) as client:
        report = openai_reports.fetch(client, FIRST, FIRST, Scope())
    if model is None:
        assert report.cost_usd == {}
        assert [(line.label, line.amount_usd) for line in report.unattributed] == [
            (item, Decimal("0.125"))
        ]
    else:
        assert report.cost_usd == {(FIRST, model): Decimal("0.125")}
        assert report.unattributed == []


def test_429_waits_what_retry_after_says(fake: FakeProviderApis) -> None:
    fake.anthropic_usage.append(AnthropicUsage(FIRST, SONNET, output_tokens=7))
    fake.fail_next("/v1/organizations/usage_report", 429, Retry_After="3")
    fake.fail_next("/v1/organizations/cost_report", 529)
    fake.fail_next("/v1/organizations/cost_report", 500)
    sleeps = Sleeps()
    with anthropic_client(fake, sleep=sleeps) as client:
        report = anthropic_reports.fetch(client, FIRST, FIRST, Scope())
    assert report.measures[(FIRST, SONNET)]["output_tokens"] == 7
    # Retry-After honoured exactly; the 5xx backed off (jittered 0.25-0.5 s, then 0.5-1 s).
    assert sleeps.asked[0] == 3.0
    assert 0.25 <= sleeps.asked[1] <= 0.5 and 0.5 <= sleeps.asked[2] <= 1.0
    assert len(sleeps.asked) == 3


def test_retry_after_ms_and_http_dates(fake: FakeProviderApis) -> None:
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), True)
    fake.fail_next("/v1/organization/usage", 429, Retry_After_Ms="1500", Retry_After="9")
    fake.fail_next("/v1/organization/usage", 503, Retry_After=later)
    sleeps = Sleeps()
    with ReportClient(
        "openai",
        fake.openai_url,
        openai_reports.headers(fake.openai_key),
        deadline_s=60,
        sleep=sleeps,
    ) as client:
        openai_reports.fetch(client, FIRST, FIRST, Scope())
    # retry-after-ms first (as the SDKs read it); an HTTP date as the seconds until then.
    assert sleeps.asked[0] == 1.5
    assert 25 <= sleeps.asked[1] <= 30


def test_a_retry_after_past_the_deadline_fails_at_once(fake: FakeProviderApis) -> None:
    fake.fail_next("/v1/organizations/usage_report", 429, Retry_After="600")
    sleeps = Sleeps()
    with (
        anthropic_client(fake, deadline_s=20, sleep=sleeps) as client,
        pytest.raises(DeadlineExceeded, match="waiting 600s more would pass the 20s deadline"),
    ):
        anthropic_reports.fetch(client, FIRST, FIRST, Scope())
    assert sleeps.asked == []


def test_a_slow_page_runs_the_deadline_out(fake: FakeProviderApis) -> None:
    for i in range(40):
        fake.anthropic_usage.append(AnthropicUsage(FIRST + dt.timedelta(days=i), SONNET))
    fake.slow_page_s = 3.0  # the second page (the one with a cursor) takes 3 s
    started = time.monotonic()
    with (
        anthropic_client(fake, deadline_s=1.5, sleep=time.sleep) as client,
        pytest.raises(DeadlineExceeded, match="1.5s deadline"),
    ):
        anthropic_reports.fetch(client, FIRST, FIRST + dt.timedelta(days=39), Scope())
    # It gave up at the deadline instead of waiting the page out (generous bound: shared CPUs).
    assert time.monotonic() - started < 2.9


@contextlib.contextmanager
def serving(answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A local HTTP server answering every GET with `answer`; yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer(self)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_dribbled_a_byte_at_a_time_is_cut_at_the_deadline() -> None:
    # Each read returns within the read timeout, so only a deadline over the whole answer
    # ends it: 30 s of page at one byte every 0.1 s, against a 1.5 s deadline.
    body = b'{"data": [], "has_more": false, "next_page": null}'.ljust(300)
    hung_up = threading.Event()

    def dribble(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for i in range(len(body)):
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            hung_up.set()

    started = time.monotonic()
    with (
        serving(dribble) as url,
        ReportClient("openai", url, {}, deadline_s=1.5) as client,
        pytest.raises(DeadlineExceeded, match="1.5s deadline expired while the page"),
    ):
        openai_reports.fetch(client, FIRST, FIRST, Scope())
    assert time.monotonic() - started < 4  # generous: shared CPUs
    assert hung_up.wait(5)


def test_a_compressed_page_is_read() -> None:
    # The body is read raw against the deadline, then decoded once (gzip, as the APIs send).
    page = {"data": [], "has_more": False, "next_page": None, "note": "\u00e9" * 500}
    body = gzip.compress(json.dumps(page).encode())

    def zipped(h: http.server.BaseHTTPRequestHandler) -> None:
        assert "gzip" in h.headers.get("Accept-Encoding", "")
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    with serving(zipped) as url, ReportClient("anthropic", url, {}, deadline_s=5) as client:
        assert client.get(anthropic_reports.USAGE_PATH, []) == page


def test_server_errors_until_the_deadline(fake: FakeProviderApis) -> None:
    for _ in range(200):
        fake.fail_next("/v1/organization/usage", 503)
    with ReportClient(
        "openai", fake.openai_url, openai_reports.headers(fake.openai_key), deadline_s=2
    ) as client:
        with pytest.raises(DeadlineExceeded, match="HTTP 503"):
            openai_reports.fetch(client, FIRST, FIRST, Scope())
        assert client.attempts >= 2


def test_a_refused_key_is_permanent_and_never_echoed(fake: FakeProviderApis) -> None:
    wrong = "sk-ant-admin01-WRONG-secret-value"
    with anthropic_client(fake, key=wrong) as client, pytest.raises(FetchError) as caught:
        anthropic_reports.fetch(client, FIRST, FIRST, Scope())
    assert caught.value.permanent
    assert "HTTP 401: invalid x-api-key (is the key an admin key" in str(caught.value)
    assert wrong not in str(caught.value)
    # The headers the documentation names were sent.
    _, _, headers = fake.requests[0]
    assert headers["anthropic-version"] == "2023-06-01" and headers["x-api-key"] == wrong


def test_dimensions_are_null_unless_grouped_and_scope_filters(fake: FakeProviderApis) -> None:
    fake.anthropic_usage += [
        AnthropicUsage(FIRST, SONNET, output_tokens=5, api_key_id="apikey_01ours"),
        AnthropicUsage(FIRST, SONNET, output_tokens=1000, api_key_id="apikey_01other"),
    ]
    with anthropic_client(fake) as client:
        whole = anthropic_reports.fetch(client, FIRST, FIRST, Scope())
        scoped = anthropic_reports.fetch(
            client, FIRST, FIRST, Scope(api_key_ids=("apikey_01ours",))
        )
    usage = [r.result for r in whole.raw if r.report == "usage_report/messages"]
    assert usage[0]["api_key_id"] is None and usage[0]["workspace_id"] is None
    assert usage[0]["model"] == SONNET
    assert whole.measures[(FIRST, SONNET)]["output_tokens"] == 1005
    assert scoped.measures[(FIRST, SONNET)]["output_tokens"] == 5
    query = fake.requests[-1][1]
    assert query["api_key_ids[]"] == ["apikey_01ours"] and "api_key_id" in query["group_by[]"]
    # A key-scoped run cannot judge cost: the cost report has no per-key grouping.
    assert scoped.cost_gap_all is not None and "per-key" in scoped.cost_gap_all


def test_a_malformed_answer_names_the_field(fake: FakeProviderApis) -> None:
    fake.anthropic_costs.append(AnthropicCost(FIRST, "not-a-number", SONNET))
    with (
        anthropic_client(fake) as client,
        pytest.raises(FetchError, match=r"data\[0\]\.results\[0\]\.amount: expected a decimal"),
    ):
        anthropic_reports.fetch(client, FIRST, FIRST, Scope())


def test_workspace_scope_and_priority_tier(fake: FakeProviderApis) -> None:
    fake.anthropic_usage += [
        AnthropicUsage(FIRST, SONNET, output_tokens=10),
        AnthropicUsage(FIRST, SONNET, output_tokens=99, workspace_id="wrkspc_01other"),
        AnthropicUsage(FIRST, "claude-opus-4-20250514", output_tokens=3, service_tier="priority"),
    ]
    fake.anthropic_costs += [
        AnthropicCost(FIRST, "200", SONNET),
        AnthropicCost(FIRST, "900", SONNET, workspace_id="wrkspc_01other"),
        AnthropicCost(
            FIRST, "50", None, cost_type="code_execution", description="Code Execution Usage"
        ),
        AnthropicCost(FIRST, "2", None, cost_type="web_search", description="Web Search Usage"),
        AnthropicCost(
            FIRST,
            "7",
            None,
            cost_type="web_search",
            description="Web Search Usage",
            workspace_id="wrkspc_01other",
        ),
    ]
    with anthropic_client(fake) as client:
        report = anthropic_reports.fetch(
            client, FIRST, FIRST, Scope(workspace_ids=("wrkspc_01ours",))
        )
    assert report.measures[(FIRST, SONNET)]["output_tokens"] == 10
    # The cost report cannot be filtered: grouped by workspace, the other one is left out here.
    assert report.cost_usd == {(FIRST, SONNET): Decimal(2)}
    cost_query = fake.requests[-1][1]
    assert sorted(cost_query["group_by[]"]) == ["description", "workspace_id"]
    assert "workspace_ids[]" not in cost_query
    assert [(line.label, line.amount_usd) for line in report.unattributed] == [
        ("Code Execution Usage", Decimal("0.5"))
    ]
    # "Web Search Usage" names no model: the day's web searches, of our workspace only.
    assert report.web_search_usd == {FIRST: Decimal("0.02")}
    # Priority Tier usage is counted; its cost is declared missing from the cost report.
    assert report.cost_gaps == {(FIRST, "claude-opus-4-20250514"): anthropic_reports.PRIORITY_COST}


def test_openai_key_scope(fake: FakeProviderApis) -> None:
    fake.openai_usage += [
        OpenAIUsage(FIRST, "gpt-4o", 100, 0, 10, 1, api_key_id="key_ours"),
        OpenAIUsage(FIRST, "gpt-4o", 5000, 0, 500, 9, api_key_id="key_other"),
    ]
    fake.openai_costs += [
        OpenAICost(FIRST, 0.01, "gpt-4o, input", api_key_id="key_ours"),
        OpenAICost(FIRST, 3.0, "gpt-4o, input", api_key_id="key_other"),
    ]
    with ReportClient(
        "openai", fake.openai_url, openai_reports.headers(fake.openai_key), deadline_s=30
    ) as client:
        report = openai_reports.fetch(client, FIRST, FIRST, Scope(api_key_ids=("key_ours",)))
    assert report.measures[(FIRST, "gpt-4o")]["requests"] == 1
    assert report.cost_usd == {(FIRST, "gpt-4o"): Decimal("0.01")}
    for _, query, headers in fake.requests:
        assert query["api_key_ids"] == ["key_ours"] and "api_key_id" in query["group_by"]
        assert headers["authorization"] == f"Bearer {fake.openai_key}"
