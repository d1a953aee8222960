"""Whole SDK responses (not streams), built by the official SDKs from the wire, tracked as an
application tracks them, written by the worker's writer into PostgreSQL: every stored token
count is the hand-written genai-prices usage, every cost genai-prices' at `created_at`.

Each case is read three ways: the SDK's object, its snake_case dict, and its camelCase dict.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from tests import sdk_fakes as wire
from tests.sdk_ledger import Recorder, check, client_warnings, land
from worker.client import extract_usage, read_usage
from worker.client.responses import plain

SONNET = "claude-sonnet-4-5-20250929"
BEDROCK_SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def anthropic(model: str, usage: dict[str, Any]) -> Any:
    body = json.dumps(wire.anthropic_message(model, usage)).encode()
    return wire.anthropic_client(body).messages.create(model=model, **wire.ANTHROPIC_ASK)


def chat(model: str, usage: dict[str, Any]) -> Any:
    body = json.dumps(wire.chat_completion(model, usage)).encode()
    ask = {"role": "user", "content": "Hello"}
    return wire.openai_client(body).chat.completions.create(model=model, messages=[ask])


def responses(model: str, usage: dict[str, Any]) -> Any:
    body = json.dumps(wire.response(model, usage)).encode()
    return wire.openai_client(body).responses.create(model=model, input="Hello")


def embedding(model: str, tokens: int) -> Any:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    client = wire.openai_client(json.dumps(body).encode())
    return client.embeddings.create(model=model, input="Hello")


def gemini(model: str, usage: dict[str, Any]) -> Any:
    body = json.dumps(wire.gemini_response(model, usage)).encode()
    return wire.gemini_client(body).models.generate_content(model=model, contents="Hello")


def eighty_percent_cached(
    model: str, api: str
) -> tuple[Callable[[], Any], dict[str, int], dict[str, Any]]:
    """A 50k prompt of which 40k cached; reasoning models spend part of the output thinking."""
    reasoning = 0 if model.startswith("gpt-4.1") else 1500
    build, usage = (chat, wire.chat_usage) if api == "chat" else (responses, wire.responses_usage)
    expected = {"input_tokens": 50_000, "cache_read_tokens": 40_000, "output_tokens": 2000}
    if reasoning:
        expected["output_reasoning_tokens"] = reasoning
    return (lambda: build(model, usage(50_000, 2000, 40_000, reasoning))), expected, {}


CASES: dict[str, tuple[Callable[[], Any], dict[str, int], dict[str, Any]]] = {
    "anthropic-no-cache": (
        lambda: anthropic(SONNET, {"input_tokens": 1200, "output_tokens": 300}),
        {"input_tokens": 1200, "output_tokens": 300},
        {},
    ),
    "anthropic-90pct-cache-read": (
        lambda: anthropic(
            SONNET,
            {
                "input_tokens": 1000,
                "cache_read_input_tokens": 9000,
                "cache_creation_input_tokens": 0,
                "output_tokens": 500,
            },
        ),
        {"input_tokens": 10_000, "cache_read_tokens": 9000, "output_tokens": 500},
        {},
    ),
    "anthropic-cache-write-5m": (
        lambda: anthropic(
            "claude-3-5-haiku-20241022",
            {
                "input_tokens": 3000,
                "cache_creation_input_tokens": 5000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 5000,
                    "ephemeral_1h_input_tokens": 0,
                },
                "cache_read_input_tokens": 0,
                "output_tokens": 400,
            },
        ),
        {
            "input_tokens": 8000,
            "cache_write_tokens": 5000,
            "cache_write_5m_tokens": 5000,
            "output_tokens": 400,
        },
        {},
    ),
    "anthropic-cache-write-1h": (
        lambda: anthropic(
            "claude-opus-4-1-20250805",
            {
                "input_tokens": 2000,
                "cache_creation_input_tokens": 6000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 0,
                    "ephemeral_1h_input_tokens": 6000,
                },
                "output_tokens": 400,
            },
        ),
        {
            "input_tokens": 8000,
            "cache_write_tokens": 6000,
            "cache_write_1h_tokens": 6000,
            "output_tokens": 400,
        },
        {},
    ),
    "anthropic-250k-prompt-230k-cached": (
        lambda: anthropic(
            SONNET,
            {"input_tokens": 20_000, "cache_read_input_tokens": 230_000, "output_tokens": 1000},
        ),
        {"input_tokens": 250_000, "cache_read_tokens": 230_000, "output_tokens": 1000},
        {},
    ),
    "anthropic-web-search": (
        lambda: anthropic(
            SONNET,
            {
                "input_tokens": 2000,
                "output_tokens": 300,
                "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0},
            },
        ),
        {"input_tokens": 2000, "output_tokens": 300, "web_searches": 2},
        {},
    ),
    "openai-chat-no-cache": (
        lambda: chat("gpt-4o-2024-08-06", wire.chat_usage(1000, 200)),
        {"input_tokens": 1000, "output_tokens": 200},
        {},
    ),
    "openai-gpt-4o-chat-50pct-cached": (
        lambda: chat("gpt-4o-2024-08-06", wire.chat_usage(4000, 500, cached=2000)),
        {"input_tokens": 4000, "cache_read_tokens": 2000, "output_tokens": 500},
        {},
    ),
    **{
        f"openai-{model.split('-20')[0]}-{api}-80pct-cached": eighty_percent_cached(model, api)
        for model in ("gpt-5-2025-08-07", "o4-mini-2025-04-16", "gpt-4.1-2025-04-14")
        for api in ("chat", "responses")
    },
    "openai-embeddings": (
        lambda: embedding("text-embedding-3-small", 800),
        {"input_tokens": 800},
        {},
    ),
    "gemini-cached-content-and-thoughts": (
        lambda: gemini(
            "gemini-2.5-flash", wire.gemini_usage(10_000, 500, cached=6000, thoughts=300)
        ),
        {
            "input_tokens": 10_000,
            "cache_read_tokens": 6000,
            "output_tokens": 800,  # candidates + thoughts
            "output_reasoning_tokens": 300,
            "input_text_tokens": 10_000,
            "cache_text_read_tokens": 6000,
        },
        {},
    ),
    "gemini-2.5-pro-over-200k": (
        lambda: gemini("gemini-2.5-pro", wire.gemini_usage(260_000, 1000, cached=100_000)),
        {
            "input_tokens": 260_000,
            "cache_read_tokens": 100_000,
            "output_tokens": 1000,
            "input_text_tokens": 260_000,
            "cache_text_read_tokens": 100_000,
        },
        {},
    ),
    "gemini-audio-prompt": (
        lambda: gemini(
            "gemini-2.5-flash",
            wire.gemini_usage(2600, 100)
            | {
                "promptTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 2000},
                    {"modality": "AUDIO", "tokenCount": 600},
                ]
            },
        ),
        {
            "input_tokens": 2600,
            "output_tokens": 100,
            "input_text_tokens": 2000,
            "input_audio_tokens": 600,
        },
        {},
    ),
    "bedrock-converse-cache-read-write": (
        lambda: wire.converse(
            {
                "inputTokens": 1000,
                "outputTokens": 300,
                "totalTokens": 10_300,
                "cacheReadInputTokens": 8000,
                "cacheWriteInputTokens": 1000,
            },
            BEDROCK_SONNET,
        ),
        {
            "input_tokens": 10_000,
            "cache_read_tokens": 8000,
            "cache_write_tokens": 1000,
            "output_tokens": 300,
        },
        {"model": BEDROCK_SONNET},
    ),
    "bedrock-converse-1h-cache-write": (
        lambda: wire.converse(
            {
                "inputTokens": 500,
                "outputTokens": 100,
                "totalTokens": 2600,
                "cacheWriteInputTokens": 2000,
                "cacheDetails": [{"ttl": "1h", "inputTokens": 2000}],
            },
            BEDROCK_SONNET,
        ),
        {
            "input_tokens": 2500,
            "cache_write_tokens": 2000,
            "cache_write_1h_tokens": 2000,
            "output_tokens": 100,
        },
        {"model": BEDROCK_SONNET},
    ),
}


def camel(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            re.sub(r"_([a-z0-9])", lambda m: m[1].upper(), k): camel(v) for k, v in data.items()
        }
    return [camel(v) for v in data] if isinstance(data, list) else data


def snake(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            re.sub(
                r"(?<=[a-z0-9])(?=[A-Z])", "_", re.sub(r"(?<=[a-z])(?=[0-9])", "_", k)
            ).lower(): (snake(v))
            for k, v in data.items()
        }
    return [snake(v) for v in data] if isinstance(data, list) else data


@pytest.mark.parametrize("case", CASES)
def test_each_shape_is_billed_as_genai_prices_bills_it(
    db: Engine, tenant: uuid.UUID, case: str
) -> None:
    build, usage, given = CASES[case]
    recorder = Recorder(tenant)
    response = build()
    data = plain(response)
    for form in (response, snake(data), camel(data)):
        with recorder.client.track_usage(**recorder.fields(**given)) as call:
            assert call.response(form) is form
    stored = land(db, recorder.take())
    for row in stored:
        check(row, usage)
    # The model and provider come from the response when not given.
    assert len({(r["model"], r["provider"]) for r in stored}) == 1
    assert stored[0]["provider"] in ("anthropic", "openai", "google", "aws")


def test_the_decorator_and_the_async_clients_record_as_the_sync_ones(
    db: Engine, tenant: uuid.UUID
) -> None:
    import asyncio

    recorder = Recorder(tenant)
    usage = recorder.client
    anthropic_usage = {"input_tokens": 1000, "cache_read_input_tokens": 9000, "output_tokens": 500}
    expected = {"input_tokens": 10_000, "cache_read_tokens": 9000, "output_tokens": 500}
    message = json.dumps(wire.anthropic_message(SONNET, anthropic_usage)).encode()
    openai_expected = {"input_tokens": 50_000, "cache_read_tokens": 40_000, "output_tokens": 2000}
    openai_expected |= {"output_reasoning_tokens": 1500}
    completion = wire.chat_completion(
        "gpt-5-2025-08-07", wire.chat_usage(50_000, 2000, 40_000, 1500)
    )
    answer = wire.response("o4-mini-2025-04-16", wire.responses_usage(50_000, 2000, 40_000, 1500))
    gemini_wire = wire.gemini_response(
        "gemini-2.5-flash", wire.gemini_usage(10_000, 500, 6000, 300)
    )
    gemini_expected = {"input_tokens": 10_000, "cache_read_tokens": 6000, "output_tokens": 800}
    gemini_expected |= {"output_reasoning_tokens": 300, "input_text_tokens": 10_000}
    gemini_expected |= {"cache_text_read_tokens": 6000}

    @usage.track(**recorder.fields(operation="sync-decorated"))
    def ask_sync() -> Any:
        return wire.anthropic_client(message).messages.create(model=SONNET, **wire.ANTHROPIC_ASK)

    @usage.track(**recorder.fields(operation="async-decorated"))
    async def ask_async() -> Any:
        client = wire.anthropic_client(message, aio=True)
        return await client.messages.create(model=SONNET, **wire.ANTHROPIC_ASK)

    @usage.track(**recorder.fields(operation="gemini-aio"))
    async def ask_gemini() -> Any:
        client = wire.gemini_client(json.dumps(gemini_wire).encode(), aio=True)
        return await client.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi")

    async def application() -> list[Any]:
        results = [await ask_async(), await ask_gemini()]
        client = wire.openai_client(json.dumps(completion).encode(), aio=True)
        async with usage.track_usage(**recorder.fields(operation="async-with")) as call:
            results.append(
                call.response(await client.chat.completions.create(model="gpt-5", messages=[]))
            )
        client = wire.openai_client(json.dumps(answer).encode(), aio=True)
        async with usage.track_usage(**recorder.fields(operation="async-responses")) as call:
            results.append(call.response(await client.responses.create(model="o4-mini", input="")))
        return results

    sync_result = ask_sync()
    results = asyncio.run(application())
    assert type(sync_result).__name__ == "Message" and type(results[0]).__name__ == "Message"
    assert type(results[1]).__name__ == "GenerateContentResponse"
    by_operation = {r["id"]: r for r in land(db, recorder.events)}
    stored = {e["operation"]: by_operation[e["id"]] for e in recorder.events}
    assert set(stored) == {
        "sync-decorated",
        "async-decorated",
        "gemini-aio",
        "async-with",
        "async-responses",
    }
    check(stored["sync-decorated"], expected)
    check(stored["async-decorated"], expected)
    check(stored["gemini-aio"], gemini_expected)
    check(stored["async-with"], openai_expected)
    check(stored["async-responses"], openai_expected)


def test_bedrock_without_a_model_is_recorded_unpriced_never_raised(
    db: Engine,
    tenant: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Converse responses do not name their model; without model= the call used to raise
    # TypeError after the AI call had succeeded, and nothing was recorded.
    said = client_warnings(monkeypatch, caplog)
    recorder = Recorder(tenant)
    response = wire.converse(
        {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}, BEDROCK_SONNET
    )
    with recorder.client.track_usage(**recorder.fields()) as call:
        call.response(response)
    (row,) = land(db, recorder.take())
    assert (row["model"], row["provider"], row["input_tokens"]) == ("unknown", "aws", 10)
    assert row["cost_usd"] is None
    assert said("pass model=")


def test_read_usage_and_the_compatible_extract_usage() -> None:
    message = anthropic(
        SONNET, {"input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 5}
    )
    found = read_usage(message)
    assert found is not None
    assert (found.input_tokens, found.cache_read_tokens, found.model) == (1000, 900, SONNET)
    # The (input, output) pair of old, input now counting the cache (genai-prices' convention).
    assert extract_usage(message) == (1000, 5)
    # An object of no provider SDK's type is not read by the look of its attributes (issue 24).
    assert (
        extract_usage(SimpleNamespace(usage=SimpleNamespace(prompt_tokens=5, completion_tokens=6)))
        is None
    )
    assert extract_usage({"usage": {"input_tokens": 7, "output_tokens": 8}}) == (7, 8)
    assert extract_usage(SimpleNamespace()) is None and read_usage(object()) is None
