"""pydantic-ai conformance: real Agents over OpenAI chat, OpenAI Responses and Anthropic (5-minute
and 1-hour cache writes) models, their SDK clients over mock HTTP transports, metered by
`UsageCapability` and by handing pydantic-ai's own objects to `call.response` / `track_stream`;
each row through a real worker, compared with genai-prices on the provider's own usage.

Gemini is not covered: pydantic-ai's `google` extra needs google-genai<3, the project's >=3.3.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.capabilities import RetryOnModelErrors
from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

from tests.integrations import support as s
from tests.integrations.support import Case, Replay, Truth
from worker.client.integrations import pydantic_ai as integration
from worker.client.integrations.pydantic_ai import UsageCapability

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai-chat", "openai-responses", "anthropic")
#: Models pydantic-ai's profiles do not mark deprecated (a warning is an error here).
GPT = "gpt-5.5"
CLAUDE = "claude-sonnet-5-5"
usages = s.tool_run_usages


def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def truth(provider: str, usage: dict[str, Any]) -> Truth:
    return s.provider_truth(provider, usage, GPT, CLAUDE)


def anthropic_tool_stream(model: str, usage: dict[str, Any]) -> bytes:
    """An Anthropic SSE stream asking for the `weather` tool (pydantic-ai streams every
    Anthropic request, so even a plain run is answered in SSE)."""
    events = s.wire.anthropic_events(model, usage, dict(usage))
    block = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}
    events[1] = {"type": "content_block_start", "index": 0, "content_block": block}
    partial = {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}
    events[3] = {"type": "content_block_delta", "index": 0, "delta": partial}
    events[5]["delta"]["stop_reason"] = "tool_use"
    return s.wire.sse(events)


def answer(provider: str, usage: dict[str, Any], stream: bool, tool_call: bool) -> Any:
    """The provider's wire answer to one request (pydantic-ai streams every Anthropic one)."""
    if provider.startswith("openai"):
        return s.openai_answer(provider, usage, stream, tool_call, GPT)
    return anthropic_tool_stream(CLAUDE, usage) if tool_call else s.anthropic_stream(CLAUDE, usage)


def model(provider: str, replay: Replay) -> Model:
    """The real pydantic-ai model, its SDK client over `replay`."""
    if provider == "anthropic":
        client = AsyncAnthropic(api_key="x", http_client=replay.ahttpx2(), max_retries=0)
        return AnthropicModel(CLAUDE, provider=AnthropicProvider(anthropic_client=client))
    openai = AsyncOpenAI(api_key="x", http_client=replay.ahttpx2(), max_retries=0)
    kind = OpenAIChatModel if provider == "openai-chat" else OpenAIResponsesModel
    return kind(GPT, provider=OpenAIProvider(openai_client=openai))


def scenario(provider: str, mode: str) -> tuple[Replay, list[Truth]]:
    """The answers a run of `mode` (call, stream, tool) gets, and the requests' truths."""
    first, second = usages(provider)
    if mode == "tool":
        replay = s.replay(
            answer(provider, first, stream=False, tool_call=True),
            answer(provider, second, stream=False, tool_call=False),
        )
        return replay, [truth(provider, first), truth(provider, second)]
    replay = s.replay(answer(provider, first, stream=mode == "stream", tool_call=False))
    return replay, [truth(provider, first)]


def agent(provider: str, replay: Replay, capabilities: list[Any] | None = None) -> Agent[Any, str]:
    made: Agent[Any, str] = Agent(
        model(provider, replay), deps_type=dict, capabilities=capabilities or []
    )
    made.tool_plain(weather)
    return made


async def run(made: Agent[Any, str], mode: str, deps: dict[str, Any]) -> Any:
    if mode == "stream":
        async with made.run_stream("Weather in Paris?", deps=deps) as streamed:
            async for _ in streamed.stream_text(delta=True):
                pass
        return streamed
    return await made.run("Weather in Paris?", deps=deps)


@pytest.mark.parametrize("mode", ["call", "stream", "tool"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_capability_records_each_request(case: Case, provider: str, mode: str) -> None:
    replay, truths = scenario(provider, mode)
    hook = UsageCapability(
        case.usage, fields=lambda deps: {"tenant_id": deps["tenant"]}, operation="conformance"
    )
    made = agent(provider, replay, [hook])
    asyncio.run(run(made, mode, {"tenant": case.tenant}))
    assert not replay.answers, "the run made fewer requests than answered"
    case.conform(truths)


@pytest.mark.parametrize("mode", ["call", "tool"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_run_result_read_per_request(case: Case, provider: str, mode: str) -> None:
    replay, truths = scenario(provider, mode)
    made = agent(provider, replay)
    with case.usage.track_usage(**case.fields) as call:
        call.response(made.run_sync("Weather in Paris?", deps={}))
    case.conform(truths)


@pytest.mark.parametrize(
    ("provider", "mode"),
    # run_stream_events streams every request: a two-request run where the wire is SSE anyway.
    [("openai-chat", "stream"), ("openai-responses", "stream"), ("anthropic", "tool")],
)
def test_run_stream_events_tracked(case: Case, provider: str, mode: str) -> None:
    replay, truths = scenario(provider, mode)
    made = agent(provider, replay)

    async def consume() -> None:
        async with made.run_stream_events("Weather in Paris?", deps={}) as events:
            async for _ in case.usage.track_stream(events, **case.fields):
                pass

    asyncio.run(consume())
    case.conform(truths)


def test_model_response_read_with_its_own_provider(case: Case) -> None:
    """A single ModelResponse of an OpenAI call is read as OpenAI's (issue 24: it was read as
    Anthropic's)."""
    replay, truths = scenario("openai-chat", "call")
    result = agent("openai-chat", replay).run_sync("Weather in Paris?", deps={})
    with case.usage.track_usage(**case.fields) as call:
        call.response(result.response)
    case.conform(truths)


def test_run_usage_alone_names_no_model() -> None:
    """A RunUsage is a sum over the run's requests: it names no model or provider, so nothing
    is guessed (the caller gives model= and provider=, or the row is stored unpriced)."""
    replay, _ = scenario("anthropic", "tool")
    result = agent("anthropic", replay).run_sync("Weather in Paris?", deps={})
    (summed,) = integration.read(result.usage) or []
    first, second = (truth("anthropic", u).usage for u in usages("anthropic"))
    assert (summed.model, summed.provider) == (None, None)
    assert summed.input_tokens == first["input_tokens"] + second["input_tokens"]
    assert summed.cache_read_tokens == first["cache_read_tokens"] + second["cache_read_tokens"]


def test_fields_function_failure_is_not_the_runs(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """A fields function that raises costs the run nothing: the defaults are used, and a bad
    field (here no tenant at all) is logged, naming it, not raised into the agent."""
    replay, _ = scenario("openai-chat", "call")

    def broken(deps: Any) -> dict[str, Any]:
        raise KeyError("tenant")

    hook = UsageCapability(case.usage, fields=broken, operation="conformance")
    result = agent("openai-chat", replay, [hook]).run_sync("Weather in Paris?", deps={})
    assert result.output
    assert "tenant_id" in caplog.text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_run_result_read_once_consumed(case: Case, provider: str) -> None:
    """agent.run_stream()'s result, handed over once its text was read: its request."""
    replay, truths = scenario(provider, "stream")
    streamed = asyncio.run(run(agent(provider, replay), "stream", {}))
    with case.usage.track_usage(**case.fields) as call:
        call.response(streamed)
    case.conform(truths)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_failed_request_recorded_as_failure(case: Case, provider: str) -> None:
    """The provider answers 500: the run raises to the application, and the request is
    recorded once as a failure, with the model and provider asked for."""
    error = b'{"type": "error", "error": {"type": "api_error", "message": "boom"}}'
    replay = s.replay((error, s.JSON, 500))
    hook = UsageCapability(case.usage, **case.fields)
    with pytest.raises(ModelAPIError):
        agent(provider, replay, [hook]).run_sync("Weather in Paris?", deps={})
    model, named = (CLAUDE, "anthropic") if provider == "anthropic" else (GPT, "openai")
    case.conform([s.failure(model, named)])


@pytest.mark.parametrize("hook_outer", [False, True])
def test_a_retried_request_records_its_failed_attempt(case: Case, hook_outer: bool) -> None:
    """RetryOnModelErrors: a 500, then the answer. The attempts run inside every capability's
    wrap_model_request, whatever the order: the hook records the failed attempt (from the
    response's failed_attempts, the model asked for) and the answer's exact row."""
    error = b'{"error": {"message": "overloaded", "type": "server_error"}}'
    usage = s.chat_usage(7_000, 120, 4_096)
    replay = s.replay((error, s.JSON, 500), s.wire.chat_completion(s.GPT, usage))
    hook = UsageCapability(case.usage, **case.fields)
    retry = RetryOnModelErrors(max_attempts=2, initial_delay=0)
    made = agent("openai-chat", replay, [hook, retry] if hook_outer else [retry, hook])
    made.run_sync("Hi", deps={})
    case.conform([s.failure(GPT, "openai"), s.truth(usage, s.GPT, "openai", "chat")])
