"""LiteLLM conformance: OpenAI chat (over the openai SDK), the Responses API
(`litellm.responses`), Anthropic with 5-minute and 1-hour cache writes and Gemini (both over
LiteLLM's own HTTP handler), each over a mock transport; metered by `UsageLogger` and by handing
LiteLLM's own objects to `call.response` / `track_stream`; every row through a real worker,
compared with genai-prices on the provider's own usage."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import litellm
import openai
import pytest
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler

from tests.integrations import support as s
from tests.integrations.support import Case, Replay, Truth
from worker.client.integrations.litellm import UsageLogger

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai-chat", "openai-responses", "anthropic", "gemini")
MODES = ("call", "stream", "tool", "async", "async-stream")
MODEL = {
    "openai-chat": "gpt-4.1",
    "openai-responses": "gpt-4.1",
    "anthropic": f"anthropic/{s.SONNET}",
    "gemini": f"gemini/{s.GEMINI}",
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]  # type: ignore[dict-item]


def gemini_usage(prompt: int, out: int, cached: int, thoughts: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out,
        "cachedContentTokenCount": cached,
        "thoughtsTokenCount": thoughts,
        "totalTokenCount": prompt + out + thoughts,
    }


def usages(provider: str) -> list[dict[str, Any]]:
    """Two requests' wire usage (a tool run's first and second), cache in both."""
    if provider == "gemini":
        return [gemini_usage(30_000, 500, 24_000, 300), gemini_usage(30_600, 80, 30_000, 0)]
    return s.tool_run_usages(provider)


def truth(provider: str, usage: dict[str, Any]) -> Truth:
    if provider == "gemini":
        return s.truth(usage, s.GEMINI, "google")
    return s.provider_truth(provider, usage)


def gemini_answer(usage: dict[str, Any], tool_call: bool) -> dict[str, Any]:
    body: dict[str, Any] = s.wire.gemini_response(s.GEMINI, usage)
    if tool_call:
        call = {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}
        body["candidates"][0]["content"]["parts"] = [call]
    return body


def answer(provider: str, usage: dict[str, Any], stream: bool, tool_call: bool) -> Any:
    """The provider's wire answer."""
    if provider == "gemini":
        if stream:
            return (s.wire.gemini_sse(s.GEMINI, usage), s.SSE)
        return gemini_answer(usage, tool_call)
    return s.provider_answer(provider, usage, stream, tool_call)


def replay_for(provider: str, mode: str) -> tuple[Replay, list[Truth]]:
    first, second = usages(provider)
    if mode == "tool":
        replay = s.replay(
            answer(provider, first, False, True), answer(provider, second, False, False)
        )
        return replay, [truth(provider, first), truth(provider, second)]
    stream = mode.endswith("stream")
    return s.replay(answer(provider, first, stream, False)), [truth(provider, first)]


def client(provider: str, replay: Replay, aio: bool) -> Any:
    """What LiteLLM is given as `client=`: the openai SDK's client for OpenAI chat, LiteLLM's
    own HTTP handler otherwise."""
    if provider == "openai-chat":
        if aio:
            return openai.AsyncOpenAI(api_key="x", http_client=replay.ahttpx(), max_retries=0)
        return openai.OpenAI(api_key="x", http_client=replay.httpx(), max_retries=0)
    if aio:
        return AsyncHTTPHandler(transport=replay.atransport())
    return HTTPHandler(client=replay.httpx())


def ask(
    provider: str, replay: Replay, *, stream: bool = False, aio: bool = False, **extra: Any
) -> Any:
    """litellm.completion / acompletion / responses / aresponses, as an application calls it
    (the coroutine, for aio)."""
    common: dict[str, Any] = {"client": client(provider, replay, aio), "api_key": "x", **extra}
    if stream:
        common["stream"] = True
        if provider != "openai-responses":
            common["stream_options"] = {"include_usage": True}
    if provider == "openai-responses":
        call = litellm.aresponses if aio else litellm.responses
        return call(model=MODEL[provider], input="Hi", **common)
    call = litellm.acompletion if aio else litellm.completion
    return call(model=MODEL[provider], messages=[{"role": "user", "content": "Hi"}], **common)


def tool_run(provider: str, replay: Replay, **extra: Any) -> list[Any]:
    """Two requests: the first asks for the tool, the second answers with its result."""
    if provider == "openai-responses":
        first = ask(provider, replay, tools=RESPONSES_TOOLS, **extra)
        call = next(o for o in first.output if getattr(o, "type", None) == "function_call")
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}
        second = litellm.responses(
            model=MODEL[provider],
            input=[result],
            previous_response_id=first.id,
            client=client(provider, replay, False),
            api_key="x",
            **extra,
        )
        return [first, second]
    first = ask(provider, replay, tools=TOOLS, **extra)
    message = first.choices[0].message
    assert message.tool_calls, first
    tool_call = message.tool_calls[0]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        message.model_dump(),
        {"role": "tool", "tool_call_id": tool_call.id, "content": json.dumps("Sunny")},
    ]
    second = litellm.completion(
        model=MODEL[provider],
        messages=messages,
        tools=TOOLS,
        client=client(provider, replay, False),
        api_key="x",
        **extra,
    )
    return [first, second]


@pytest.fixture
def logger(case: Case) -> Any:
    """A UsageLogger registered in litellm.callbacks for the test only."""
    meter = UsageLogger(case.usage, operation="default-op")
    saved = list(litellm.callbacks)
    litellm.callbacks = [*saved, meter]
    yield meter
    litellm.callbacks = saved
    litellm.logging_callback_manager._reset_all_callbacks()


def drain(stream: Any) -> int:
    return sum(1 for _ in stream)


async def adrain(stream: Any) -> int:
    return len([c async for c in stream])


def flush_litellm() -> None:
    """Sync success callbacks run on LiteLLM's thread pool: wait for them."""
    from litellm.litellm_core_utils.thread_pool_executor import executor

    executor.submit(lambda: None).result(timeout=10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_logger(case: Case, logger: Any, provider: str, mode: str) -> None:
    replay, truths = replay_for(provider, mode)
    meta: dict[str, Any] = {"metadata": {"tenant_id": str(case.tenant), "operation": "conformance"}}
    if mode == "call":
        ask(provider, replay, **meta)
    elif mode == "stream":
        assert drain(ask(provider, replay, stream=True, **meta))
    elif mode == "tool":
        tool_run(provider, replay, **meta)
    elif mode == "async":

        async def ask_async() -> None:
            await ask(provider, replay, aio=True, **meta)
            await asyncio.sleep(0.2)  # LiteLLM logs in a task of its own, after the call

        asyncio.run(ask_async())
    else:

        async def run() -> None:
            assert await adrain(await ask(provider, replay, stream=True, aio=True, **meta))
            await asyncio.sleep(0.2)  # LiteLLM logs an async stream in a task of its own

        asyncio.run(run())
    flush_litellm()
    rows = case.conform(truths)
    assert {r["operation"] for r in rows} == {"conformance"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_litellm_objects_handed_to_the_client(case: Case, provider: str, mode: str) -> None:
    replay, truths = replay_for(provider, mode)
    usage = case.usage
    if mode == "call":
        with usage.track_usage(**case.fields) as call:
            call.response(ask(provider, replay))
    elif mode == "stream":
        # The sync stream: the application's own `for` must run to its end.
        assert drain(usage.track_stream(ask(provider, replay, stream=True), **case.fields))
    elif mode == "tool":
        with usage.track_usage(**case.fields) as call:
            call.response(tool_run(provider, replay))
    elif mode == "async":

        async def run() -> None:
            async with usage.track_usage(**case.fields) as call:
                call.response(await ask(provider, replay, aio=True))

        asyncio.run(run())
    else:

        async def run() -> None:
            # The coroutine itself, as an application writes it: awaited by the wrapper.
            stream = ask(provider, replay, stream=True, aio=True)
            assert await adrain(usage.track_stream(stream, **case.fields))

        asyncio.run(run())
    case.conform(truths)


def test_a_failed_request_is_recorded_as_a_failure(case: Case, logger: Any) -> None:
    replay = s.replay((b'{"error": {"message": "overloaded"}}', s.JSON, 500))
    with pytest.raises(Exception, match="overloaded"):
        ask(
            "anthropic",
            replay,
            metadata={"tenant_id": str(case.tenant), "operation": "conformance"},
        )
    flush_litellm()
    case.conform([s.failure(s.SONNET, "anthropic")])


def test_on_the_proxy_the_tenant_is_the_keys_team(case: Case) -> None:
    """The proxy hands the logger the key's team in standard_logging_object, and no
    tenant in the caller's metadata."""
    first = usages("anthropic")[0]
    response = ask("anthropic", s.replay(answer("anthropic", first, False, False)))
    meter = UsageLogger(case.usage, operation="conformance")
    kwargs = {
        "litellm_call_id": "proxy-call-1",
        "custom_llm_provider": "anthropic",
        "litellm_params": {"metadata": {"user_api_key_team_id": str(case.tenant)}},
        "standard_logging_object": {
            "metadata": {"user_api_key_team_id": str(case.tenant), "user_api_key_end_user_id": None}
        },
    }
    meter.log_success_event(kwargs, response, None, None)
    meter.log_success_event(kwargs, response, None, None)  # the same call again: once
    case.conform([truth("anthropic", first)])


def test_a_stream_without_the_providers_usage_is_not_recorded_as_litellms_estimate(
    case: Case, logger: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without include_usage an OpenAI stream carries no usage, and LiteLLM hands its loggers a
    tokenizer's count instead (no cache, not what is billed): stored unpriced, with a warning."""
    monkeypatch.setattr("worker.client.tracker._warned", set())  # warned once per process
    replay = s.replay(s.wire.sse(s.wire.chat_chunks(s.GPT, None), named=False, done=True))
    meta = {"tenant_id": str(case.tenant), "operation": "conformance"}
    stream = litellm.completion(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "Hi"}],
        client=client("openai-chat", replay, False),
        api_key="x",
        stream=True,
        metadata=meta,
    )
    assert drain(stream)
    flush_litellm()
    (row,) = s.landed(case.db, case.tenant, 1)
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, None)
    assert row["provider"] == "openai"
    assert any("include_usage" in r.getMessage() for r in caplog.records)
