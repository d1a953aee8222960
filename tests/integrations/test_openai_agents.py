"""OpenAI Agents SDK conformance: real Agents over the Responses API (the model as a string and as
a `Model` object), Chat Completions (`OpenAIChatCompletionsModel`), Gemini through its
OpenAI-compatible endpoint (the provider from the client's base URL) and Anthropic through
`LitellmModel` (5-minute cache writes: the SDK's `Usage` keeps no TTL split, see the module),
their clients over mock HTTP transports; metered by `UsageHooks` and by handing the SDK's own
objects to `call.response` / `track_stream`; each row through a real worker, compared with
genai-prices on the provider's own usage.

The trap of issue 24: the SDK's responses name no model. `broken_agent_model` is the mapping
that reads only string settings: with `AI_USAGE_MUTATION=agents-model` this suite runs on it
(`make test-integrations`' mutation check), and must fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.extensions.models.litellm_model import LitellmModel
from agents.usage import Usage
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
from openai import AsyncOpenAI
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from tests.integrations import support as s
from tests.integrations.support import Case, Replay, Truth
from worker.client.integrations import openai_agents as integration
from worker.client.integrations.openai_agents import UsageHooks

pytestmark = pytest.mark.e2e

#: provider x how the agent's model is set.
SETUPS = ("responses-string", "responses-model", "chat-model", "anthropic-litellm", "gemini-chat")
GPT = "gpt-5.5"
CLAUDE = "claude-sonnet-5-5"
#: Gemini through its OpenAI-compatible endpoint (a chat model whose client points there).
GEMINI_OPENAI = "https://generativelanguage.googleapis.com/v1beta/openai/"


def broken_agent_model(setting: Any) -> tuple[str | None, str | None]:
    """The mapping the trap describes: a string setting is read, a `Model` object is not."""
    return (setting if isinstance(setting, str) else None, None)


@function_tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


class SharedHandler(AsyncHTTPHandler):
    """LiteLLM's HTTP handler, kept as is when the SDK deep-copies the model settings."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedHandler:
        return self


@pytest.fixture(autouse=True)
def mutation(monkeypatch: pytest.MonkeyPatch) -> None:
    """`AI_USAGE_MUTATION=agents-model`: run the suite on the broken mapping (it must fail)."""
    if os.environ.get("AI_USAGE_MUTATION") == "agents-model":
        monkeypatch.setattr(integration, "agent_model", broken_agent_model)


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    """The SDK would export traces to OpenAI: off for these tests (no network)."""
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


def usages(setup: str) -> list[dict[str, Any]]:
    """Two requests' wire usage (a tool run's first and second), cache in both."""
    if setup in ("chat-model", "gemini-chat"):
        return [s.chat_usage(12_000, 400, 9_000, 120), s.chat_usage(12_600, 90, 12_000)]
    if setup == "anthropic-litellm":
        return [
            s.anthropic_usage(60, 8_000, 4_500, 0, 400),
            s.anthropic_usage(90, 12_500, 700, 0, 80),
        ]
    return [
        s.wire.responses_usage(20_000, 700, 16_000, 300),
        s.wire.responses_usage(20_800, 150, 19_000),
    ]


def truth(setup: str, usage: dict[str, Any]) -> Truth:
    if setup == "anthropic-litellm":
        return s.truth(usage, CLAUDE, "anthropic")
    if setup == "gemini-chat":
        # The wire is OpenAI's chat format (read by genai-prices' chat extractor); the provider,
        # and the price, Google's.
        return dataclasses.replace(s.truth(usage, s.GEMINI, "openai", "chat"), provider="google")
    return s.truth(usage, GPT, "openai", "chat" if setup == "chat-model" else "responses")


def answer(setup: str, usage: dict[str, Any], stream: bool, tool_call: bool) -> Any:
    if setup in ("chat-model", "gemini-chat"):
        name = GPT if setup == "chat-model" else s.GEMINI
        if stream:
            return s.chat_stream(name, usage)
        return s.chat_tool_call(name, usage) if tool_call else s.wire.chat_completion(name, usage)
    if setup == "anthropic-litellm":
        if stream:
            return s.anthropic_stream(CLAUDE, usage)
        return (
            s.anthropic_tool_use(CLAUDE, usage)
            if tool_call
            else s.wire.anthropic_message(CLAUDE, usage)
        )
    if stream:
        return s.responses_stream(GPT, usage)
    return s.responses_tool_call(GPT, usage) if tool_call else s.wire.response(GPT, usage)


def scenario(setup: str, mode: str) -> tuple[Replay, list[Truth]]:
    first, second = usages(setup)
    if mode == "tool":
        replay = s.replay(
            answer(setup, first, stream=False, tool_call=True),
            answer(setup, second, stream=False, tool_call=False),
        )
        return replay, [truth(setup, first), truth(setup, second)]
    return s.replay(answer(setup, first, mode == "stream", False)), [truth(setup, first)]


def agent(setup: str, replay: Replay) -> Agent[Any]:
    """A real Agent whose model's client answers from `replay`."""
    settings = ModelSettings()
    model: Any
    if setup == "anthropic-litellm":
        model = LitellmModel(f"anthropic/{CLAUDE}", api_key="x")
        handler = SharedHandler(transport=replay.atransport())
        settings = ModelSettings(include_usage=True, extra_args={"client": handler})
    elif setup == "gemini-chat":
        client = AsyncOpenAI(
            api_key="x", base_url=GEMINI_OPENAI, http_client=replay.ahttpx2(), max_retries=0
        )
        model = OpenAIChatCompletionsModel(s.GEMINI, client)
        settings = ModelSettings(include_usage=True)  # the SDK asks only OpenAI's by default
    else:
        client = AsyncOpenAI(api_key="x", http_client=replay.ahttpx2(), max_retries=0)
        if setup == "responses-string":
            set_default_openai_client(client, use_for_tracing=False)
            model = GPT
        elif setup == "responses-model":
            model = OpenAIResponsesModel(GPT, client)
        else:
            model = OpenAIChatCompletionsModel(GPT, client)
    return Agent(
        name="assistant",
        instructions="Help.",
        tools=[weather],
        model=model,
        model_settings=settings,
    )


async def run(made: Agent[Any], mode: str, **kwargs: Any) -> Any:
    if mode == "stream":
        streamed = Runner.run_streamed(made, "Weather in Paris?", **kwargs)
        async for _ in streamed.stream_events():
            pass
        return streamed
    return await Runner.run(made, "Weather in Paris?", **kwargs)


class AppContext:
    """The application's own run context: where the hooks find the tenant."""

    def __init__(self, tenant: Any) -> None:
        self.tenant = tenant


@pytest.mark.parametrize("mode", ["call", "stream", "tool"])
@pytest.mark.parametrize("setup", SETUPS)
def test_hooks_record_each_model_call(case: Case, setup: str, mode: str) -> None:
    replay, truths = scenario(setup, mode)
    hooks = UsageHooks(
        case.usage, fields=lambda ctx: {"tenant_id": ctx.tenant}, operation="conformance"
    )
    asyncio.run(run(agent(setup, replay), mode, context=AppContext(case.tenant), hooks=hooks))
    assert not replay.answers, "the run made fewer requests than answered"
    case.conform(truths)


@pytest.mark.parametrize("mode", ["call", "tool"])
@pytest.mark.parametrize("setup", SETUPS)
def test_run_result_read_per_raw_response(case: Case, setup: str, mode: str) -> None:
    replay, truths = scenario(setup, mode)
    result = asyncio.run(run(agent(setup, replay), mode))
    with case.usage.track_usage(**case.fields) as call:
        call.response(result)
    case.conform(truths)


@pytest.mark.parametrize("setup", SETUPS)
def test_stream_events_tracked(case: Case, setup: str) -> None:
    replay, truths = scenario(setup, "stream")
    made = agent(setup, replay)

    async def consume() -> None:
        streamed = Runner.run_streamed(made, "Weather in Paris?")
        async for _ in case.usage.track_stream(streamed.stream_events(), **case.fields):
            pass

    asyncio.run(consume())
    case.conform(truths)


def test_defaults_give_the_tenant_and_a_run_config_model(case: Case) -> None:
    """Without a fields function the defaults give every field; a model given wins over the
    agent's setting (what a RunConfig(model=...) run needs)."""
    replay, truths = scenario("responses-model", "call")
    hooks = UsageHooks(case.usage, tenant_id=case.tenant, operation="conformance", model=GPT)
    asyncio.run(run(agent("responses-model", replay), "call", hooks=hooks))
    case.conform(truths)


def test_model_response_alone_names_no_model() -> None:
    """A bare ModelResponse (or the run's Usage) cannot say its model: nothing is guessed."""
    replay, _ = scenario("responses-model", "tool")
    result = asyncio.run(run(agent("responses-model", replay), "tool"))
    assert [(u.model, u.provider) for u in integration.read(result.raw_responses[0]) or []] == [
        (None, None)
    ]
    per_request = integration.read(result.context_wrapper.usage) or []
    assert [u.input_tokens for u in per_request] == [20_000, 20_800]


def test_anthropic_cache_writes_warn_that_their_ttl_is_unknown(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's Usage keeps no 5m/1h split: Anthropic writes are priced as 5-minute ones, and
    the application is told once (a 1-hour write would be priced at 1.25x, not 2x, the input)."""
    from worker.client import tracker

    monkeypatch.setattr(tracker, "_warned", set())
    read = integration.usage_of(
        Usage(
            requests=1,
            input_tokens=12_560,
            output_tokens=400,
            input_tokens_details=InputTokensDetails(cached_tokens=8_000, cache_write_tokens=4_500),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        ),
        CLAUDE,
        "anthropic",
    )
    assert read.cache_write_tokens == 4_500
    assert read.usage_details.get("cache_write_1h_tokens", 0) == 0
    with caplog.at_level("WARNING"):
        for provider in ("openai", "anthropic", "anthropic"):
            integration.usage_of(
                Usage(
                    requests=1,
                    input_tokens=100,
                    output_tokens=1,
                    input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=50),
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                ),
                CLAUDE if provider == "anthropic" else GPT,
                provider,
            )
    told = [r for r in caplog.records if "5-minute or 1-hour" in r.getMessage()]
    assert len(told) == 1


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (GPT, (GPT, "openai")),
        (f"openai/{GPT}", (GPT, "openai")),
        (f"litellm/anthropic/{CLAUDE}", (CLAUDE, "anthropic")),
        ("litellm/gemini/gemini-2.5-flash", ("gemini-2.5-flash", "google")),
    ],
)
def test_agent_model_of_a_string(setting: str, expected: tuple[str, str]) -> None:
    assert integration.agent_model(setting) == expected


def test_agent_model_of_a_model_object_on_another_endpoint() -> None:
    """An OpenAI-compatible client pointed at another provider names that provider; one at an
    endpoint genai-prices does not know names none (never a guess)."""
    gemini = AsyncOpenAI(
        api_key="x", base_url="https://generativelanguage.googleapis.com/v1beta/openai/"
    )
    local = AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    assert integration.agent_model(OpenAIChatCompletionsModel("gemini-2.5-flash", gemini)) == (
        "gemini-2.5-flash",
        "google",
    )
    assert integration.agent_model(OpenAIChatCompletionsModel("llama-3", local)) == (
        "llama-3",
        None,
    )


@pytest.mark.parametrize("path", ["hooks", "result"])
def test_handoff_records_each_agents_model(case: Case, path: str) -> None:
    """A triage agent hands off to another on another model: each request is recorded with
    the model of the agent that made it (the result's items say which agent that was)."""
    first_usage, second_usage = usages("responses-model")
    first = s.wire.response(GPT, first_usage)
    first["output"] = [
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "transfer_to_billing",
            "arguments": "{}",
        }
    ]
    replay = s.replay(first, s.wire.response("gpt-4.1", second_usage))
    client = AsyncOpenAI(api_key="x", http_client=replay.ahttpx2(), max_retries=0)
    billing = Agent(
        name="billing", instructions="Refunds.", model=OpenAIResponsesModel("gpt-4.1", client)
    )
    triage = Agent(
        name="triage",
        instructions="Route.",
        model=OpenAIResponsesModel(GPT, client),
        handoffs=[billing],
    )
    if path == "hooks":
        hooks = UsageHooks(case.usage, **case.fields)
        asyncio.run(Runner.run(triage, "Refund please", hooks=hooks))
    else:
        result = asyncio.run(Runner.run(triage, "Refund please"))
        with case.usage.track_usage(**case.fields) as call:
            call.response(result)
    case.conform(
        [
            s.truth(first_usage, GPT, "openai", "responses"),
            s.truth(second_usage, "gpt-4.1", "openai", "responses"),
        ]
    )
