"""The conformance helpers every framework's suite uses: a case's calls go through the real
framework package over a mock HTTP transport, then through a real worker into PostgreSQL, and
each stored row is compared with genai-prices on the provider's own usage.

The truth of a request is genai-prices' `extract_usage` of the provider's own wire body (what the
mock transport answered), not of anything the framework or our readers made of it; its price is
genai-prices' `calc_price` at the row's `created_at`. A row must match it in every token column,
every usage detail, the model and the provider, and cost the same to 1e-9 USD.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import pytest
from genai_prices import Usage, calc_price, extract_usage
from sqlalchemy import Engine, text

from tests import sdk_fakes
from tests.conftest import wait_for

#: The provider wire fakes of the main suite (tests/sdk_fakes.py), for the test modules.
wire = sdk_fakes

TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True)
class Truth:
    """One model request as the provider billed it: genai-prices' usage of its wire body."""

    model: str
    provider: str
    usage: Mapping[str, int]
    success: str = "success"


def truth(
    wire_usage: Mapping[str, Any], model: str, provider: str, flavor: str = "default"
) -> Truth:
    """The truth of a request whose provider answered `wire_usage` (the `usage` object of its
    JSON, or `usageMetadata` for Google), mapped by genai-prices' own extractor."""
    root = "usageMetadata" if provider == "google" else "usage"
    found = extract_usage({root: dict(wire_usage)}, provider_id=provider, api_flavor=flavor)
    values = {k: int(v) for k, v in vars(found.usage).items() if isinstance(v, int) and v}
    return Truth(model, provider, values)


def failure(model: str, provider: str | None) -> Truth:
    """A failed request: recorded with 0 tokens, success="failure"."""
    return Truth(model, provider or "", {}, success="failure")


# -- mock HTTP transports ------------------------------------------------------------------


# Inside Replay, `httpx` and `httpx2` name its methods: its annotations use these (httpx's are
# Any: the frameworks' venvs have httpx, the lint venv does not).
Httpx2Client = httpx2.Client
Httpx2AsyncClient = httpx2.AsyncClient


@dataclass
class Replay:
    """Answers each request with the next of `answers` (body, content type, status): a
    multi-request run (a tool loop) gets its first answer, then its second. `requests` keeps
    what was asked."""

    answers: list[tuple[bytes, str, int]]
    requests: list[bytes] = field(default_factory=list)

    def answer(self, method: str, url: str, content: bytes) -> tuple[int, bytes, str]:
        self.requests.append(content)
        if not self.answers:
            raise AssertionError(f"unexpected request {method} {url}")
        body, content_type, status = self.answers.pop(0)
        return status, body, content_type

    def httpx(self) -> Any:
        def handle(request: httpx.Request) -> httpx.Response:
            status, body, kind = self.answer(request.method, str(request.url), request.read())
            return httpx.Response(status, content=body, headers={"content-type": kind})

        return httpx.Client(transport=httpx.MockTransport(handle))

    def ahttpx(self) -> Any:
        async def handle(request: httpx.Request) -> httpx.Response:
            status, body, kind = self.answer(
                request.method, str(request.url), await request.aread()
            )
            return httpx.Response(status, content=body, headers={"content-type": kind})

        return httpx.AsyncClient(transport=httpx.MockTransport(handle))

    def atransport(self) -> Any:
        """An async httpx transport (for clients that take a transport, not a client)."""

        async def handle(request: httpx.Request) -> httpx.Response:
            status, body, kind = self.answer(
                request.method, str(request.url), await request.aread()
            )
            return httpx.Response(status, content=body, headers={"content-type": kind})

        return httpx.MockTransport(handle)

    def httpx2(self) -> Httpx2Client:
        def handle(request: httpx2.Request) -> httpx2.Response:
            status, body, kind = self.answer(request.method, str(request.url), request.read())
            return httpx2.Response(status, content=body, headers={"content-type": kind})

        return httpx2.Client(transport=httpx2.MockTransport(handle))

    def ahttpx2(self) -> Httpx2AsyncClient:
        async def handle(request: httpx2.Request) -> httpx2.Response:
            status, body, kind = self.answer(
                request.method, str(request.url), await request.aread()
            )
            return httpx2.Response(status, content=body, headers={"content-type": kind})

        return httpx2.AsyncClient(transport=httpx2.MockTransport(handle))


def replay(*answers: bytes | dict[str, Any] | tuple[bytes, str] | tuple[bytes, str, int]) -> Replay:
    """A Replay of JSON bodies (dicts), SSE bodies (bytes: text/event-stream) or explicit
    (body, content type[, status]) answers."""
    out: list[tuple[bytes, str, int]] = []
    for a in answers:
        if isinstance(a, dict):
            out.append((json.dumps(a).encode(), JSON, 200))
        elif isinstance(a, bytes):
            out.append((a, SSE, 200))
        elif len(a) == 2:
            out.append((a[0], a[1], 200))
        else:
            out.append(a)
    return Replay(out)


# -- rows ----------------------------------------------------------------------------------


def tenant_rows(db: Engine, tenant: uuid.UUID) -> list[dict[str, Any]]:
    """The tenant's rows, oldest first."""
    with db.connect() as conn:
        found = conn.execute(
            text(
                "SELECT id::text, operation, model, provider, input_tokens, output_tokens,"
                " cache_read_tokens, cache_write_tokens, usage_details, cost_usd, success,"
                " created_at FROM ai_usage_logs WHERE tenant_id = :t ORDER BY created_at, id"
            ),
            {"t": str(tenant)},
        )
        return [dict(r._mapping) for r in found]


def landed(db: Engine, tenant: uuid.UUID, count: int, settle: float = 0.6) -> list[dict[str, Any]]:
    """The tenant's rows once `count` have landed; fails if more land in the next `settle`
    seconds (a request counted twice)."""
    wait_for(lambda: len(tenant_rows(db, tenant)) >= count, 30, what=f"{count} rows")
    time.sleep(settle)
    found = tenant_rows(db, tenant)
    assert len(found) == count, f"expected {count} rows, got {len(found)}: {found}"
    return found


def price(t: Truth, at: Any) -> float:
    """genai-prices' price of a request's true usage at `at`."""
    return float(
        calc_price(
            Usage(**dict(t.usage)), t.model, provider_id=t.provider, genai_request_timestamp=at
        ).total_price
    )


def compare(row: Mapping[str, Any], t: Truth) -> None:
    """Assert that `row` is the request `t`: every token column, every usage detail, model,
    provider, success, and its cost to 1e-9 USD."""
    where = f"row {dict(row)} vs {t}"
    assert row["success"] == t.success, where
    assert (row["model"], row["provider"] or "") == (t.model, t.provider), where
    assert {k: row[k] for k in TOKENS} == {k: t.usage.get(k, 0) for k in TOKENS}, where
    details = {k: v for k, v in t.usage.items() if k not in TOKENS} or None
    assert row["usage_details"] == details, where
    if t.success == "failure":
        return
    expected = price(t, row["created_at"])
    assert expected > 0, "a case must have a price, or it proves nothing"
    assert row["cost_usd"] is not None, f"{where}: stored unpriced"
    assert float(row["cost_usd"]) == pytest.approx(expected, abs=1e-9, rel=0), where


def conform(db: Engine, tenant: uuid.UUID, truths: list[Truth]) -> list[dict[str, Any]]:
    """Wait for the tenant's rows and compare each with its request, in order (one row per
    model request, nothing more)."""
    found = landed(db, tenant, len(truths))
    for row, t in zip(found, truths, strict=True):
        compare(row, t)
    return found


@dataclass
class Case:
    """What a conformance test needs: its tenant, the usage client and the database."""

    tenant: uuid.UUID
    usage: Any  # a UsageClient
    db: Engine

    @property
    def fields(self) -> dict[str, Any]:
        """The fields every case's call carries."""
        return {"tenant_id": self.tenant, "operation": "conformance"}

    def conform(self, truths: list[Truth]) -> list[dict[str, Any]]:
        """See conform()."""
        return conform(self.db, self.tenant, truths)


# -- the providers' answers (wire JSON), tool calls included ----------------------------------

GPT = "gpt-4.1-2025-04-14"
SONNET = "claude-sonnet-4-5-20250929"
GEMINI = "gemini-2.5-flash"


def chat_usage(prompt: int, completion: int, cached: int, reasoning: int = 0) -> dict[str, Any]:
    """OpenAI chat `usage`: prompt_tokens counts the cached ones."""
    return wire.chat_usage(prompt, completion, cached=cached, reasoning=reasoning)


def anthropic_usage(fresh: int, read: int, five: int, hour: int, out: int) -> dict[str, Any]:
    """Anthropic `usage` with 5-minute and 1-hour cache writes (input_tokens excludes them)."""
    return {
        "input_tokens": fresh,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": five + hour,
        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
        "output_tokens": out,
    }


def chat_tool_call(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """A chat completion asking for the `weather` tool."""
    body = wire.chat_completion(model, usage)
    call = {"id": "call_1", "type": "function"}
    call["function"] = {"name": "weather", "arguments": '{"city": "Paris"}'}  # type: ignore[assignment]
    body["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    body["choices"][0]["finish_reason"] = "tool_calls"
    return body


def responses_tool_call(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """A Responses API response asking for the `weather` tool."""
    body = wire.response(model, usage)
    body["output"] = [
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "weather",
            "arguments": '{"city": "Paris"}',
        }
    ]
    return body


def anthropic_tool_use(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message asking for the `weather` tool."""
    body = wire.anthropic_message(model, usage)
    body["content"] = [
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
    ]
    body["stop_reason"] = "tool_use"
    return body


def anthropic_stream(model: str, usage: dict[str, Any]) -> bytes:
    """An Anthropic SSE stream; message_delta repeats the whole usage, as the API does now."""
    return wire.sse(wire.anthropic_events(model, usage, dict(usage)))


def chat_stream(model: str, usage: dict[str, Any]) -> bytes:
    """An OpenAI chat SSE stream whose last chunk carries the usage (include_usage)."""
    return wire.sse(wire.chat_chunks(model, usage), named=False, done=True)


def responses_stream(model: str, usage: dict[str, Any]) -> bytes:
    """A Responses API SSE stream (response.completed carries the usage)."""
    return wire.sse(wire.response_events(model, usage))


# -- the common matrix: OpenAI chat, OpenAI Responses and Anthropic (5m and 1h writes) ---------


def tool_run_usages(provider: str) -> list[dict[str, Any]]:
    """Two requests' wire usage (a tool run's first and second), cache in both; `provider` is
    `openai-chat`, `openai-responses` or `anthropic`."""
    if provider == "openai-chat":
        return [chat_usage(12_000, 400, 9_000, 120), chat_usage(12_600, 90, 12_000)]
    if provider == "openai-responses":
        return [
            wire.responses_usage(20_000, 700, 16_000, 300),
            wire.responses_usage(20_800, 150, 19_000),
        ]
    return [anthropic_usage(60, 8_000, 1_500, 3_000, 400), anthropic_usage(90, 12_500, 0, 400, 80)]


def provider_truth(
    provider: str, usage: dict[str, Any], gpt: str = GPT, claude: str = SONNET
) -> Truth:
    """What genai-prices makes of `usage` as the provider's own answer for that model."""
    if provider == "anthropic":
        return truth(usage, claude, "anthropic")
    return truth(usage, gpt, "openai", "chat" if provider == "openai-chat" else "responses")


def openai_answer(
    provider: str, usage: dict[str, Any], stream: bool, tool_call: bool, gpt: str = GPT
) -> Any:
    """OpenAI's wire answer (chat or Responses): a stream, a tool call or a plain answer."""
    if provider == "openai-chat":
        if stream:
            return chat_stream(gpt, usage)
        return chat_tool_call(gpt, usage) if tool_call else wire.chat_completion(gpt, usage)
    if stream:
        return responses_stream(gpt, usage)
    return responses_tool_call(gpt, usage) if tool_call else wire.response(gpt, usage)


def provider_answer(provider: str, usage: dict[str, Any], stream: bool, tool_call: bool) -> Any:
    """The provider's wire answer to one request of the common matrix."""
    if provider.startswith("openai"):
        return openai_answer(provider, usage, stream, tool_call)
    if stream:
        return anthropic_stream(SONNET, usage)
    if tool_call:
        return anthropic_tool_use(SONNET, usage)
    return wire.anthropic_message(SONNET, usage)
