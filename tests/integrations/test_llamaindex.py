"""LlamaIndex conformance (its own virtualenv: LlamaIndex's OpenAI LLM needs openai<3): the real
OpenAI (chat), OpenAIResponses and Anthropic LLMs (5-minute and 1-hour cache writes), their SDK
clients over mock HTTP transports; metered by `UsageEventHandler` (fields from
`instrument_tags`) and by handing LlamaIndex's own responses and streams to `call.response` /
`track_stream`; each row through a real worker, compared with genai-prices on the provider's own
usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_index.core", reason="LlamaIndex runs in its own venv (openai<3)")

import anthropic
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.llms.anthropic import Anthropic
from llama_index.llms.openai import OpenAI, OpenAIResponses
from llama_index_instrumentation.dispatcher import instrument_tags

from tests.integrations import support as s
from tests.integrations.support import Case, Replay, Truth
from worker.client.integrations import llamaindex as integration
from worker.client.integrations.llamaindex import UsageEventHandler

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai-chat", "openai-responses", "anthropic")


def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


TOOL = FunctionTool.from_defaults(fn=weather)
ASK = [ChatMessage(role=MessageRole.USER, content="Weather in Paris?")]
usages = s.tool_run_usages
truth = s.provider_truth
answer = s.provider_answer


def scenario(provider: str, mode: str) -> tuple[Replay, list[Truth]]:
    first, second = usages(provider)
    if mode == "tool":
        replay = s.replay(
            answer(provider, first, stream=False, tool_call=True),
            answer(provider, second, stream=False, tool_call=False),
        )
        return replay, [truth(provider, first), truth(provider, second)]
    return s.replay(answer(provider, first, mode == "stream", False)), [truth(provider, first)]


def llm(provider: str, replay: Replay) -> FunctionCallingLLM:
    """The real LlamaIndex LLM, its SDK client over `replay`."""
    if provider == "anthropic":
        made = Anthropic(model=s.SONNET, api_key="x", max_retries=0)
        # Like ChatAnthropic, it takes no http_client: its cached SDK client is replaced.
        made._client = anthropic.Anthropic(api_key="x", http_client=replay.httpx(), max_retries=0)
        return made
    usage_in_streams = {"stream_options": {"include_usage": True}}
    if provider == "openai-chat":
        return OpenAI(
            model="gpt-4.1",
            api_key="x",
            http_client=replay.httpx(),
            max_retries=0,
            additional_kwargs=usage_in_streams,
        )
    return OpenAIResponses(model="gpt-4.1", api_key="x", http_client=replay.httpx(), max_retries=0)


def converse(made: FunctionCallingLLM, mode: str) -> list[Any]:
    """What an application does in `mode`; returns the responses (or the stream's chunks)."""
    if mode == "stream":
        return list(made.stream_chat(ASK))
    if mode == "call":
        return [made.chat(ASK)]
    asked = made.chat_with_tools([TOOL], chat_history=list(ASK))
    calls = made.get_tool_calls_from_response(asked, error_on_no_tool_call=True)
    history = [*ASK, asked.message]
    for call in calls:
        result = TOOL(**call.tool_kwargs)
        history.append(
            ChatMessage(
                role=MessageRole.TOOL,
                content=str(result),
                additional_kwargs={"tool_call_id": call.tool_id, "name": call.tool_name},
            )
        )
    return [asked, made.chat(history)]


@pytest.fixture
def handler(case: Case) -> Iterator[UsageEventHandler]:
    """The event handler on the root dispatcher, for this test only."""
    made = UsageEventHandler(case.usage, operation="conformance")
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(made)
    yield made
    dispatcher.event_handlers.remove(made)


@pytest.mark.parametrize("mode", ["call", "stream", "tool"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_event_handler_records_each_call(
    case: Case, handler: UsageEventHandler, provider: str, mode: str
) -> None:
    replay, truths = scenario(provider, mode)
    with instrument_tags({"tenant_id": str(case.tenant)}):
        converse(llm(provider, replay), mode)
    assert not replay.answers, "fewer requests than answered"
    case.conform(truths)


@pytest.mark.parametrize("mode", ["call", "tool"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_read(case: Case, provider: str, mode: str) -> None:
    """Each ChatResponse handed to call.response: one event per request."""
    replay, truths = scenario(provider, mode)
    for response in converse(llm(provider, replay), mode):
        with case.usage.track_usage(**case.fields) as call:
            call.response(response)
    case.conform(truths)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_tracked(case: Case, provider: str) -> None:
    """An Anthropic stream's chunks name no model (LlamaIndex keeps message_start to itself):
    the application gives it, as the warning of the next test says."""
    replay, truths = scenario(provider, "stream")
    made = llm(provider, replay)
    fields = {**case.fields, **({"model": s.SONNET} if provider == "anthropic" else {})}
    for _ in case.usage.track_stream(made.stream_chat(ASK), **fields):
        pass
    case.conform(truths)


def test_stream_naming_no_model_is_unpriced(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """Without model=, that stream is stored unpriced (model unknown, cost NULL) with its true
    tokens and a warning asking for model=: never a guessed model or price."""
    replay, (first,) = scenario("anthropic", "stream")
    for _ in case.usage.track_stream(llm("anthropic", replay).stream_chat(ASK), **case.fields):
        pass
    (row,) = s.landed(case.db, case.tenant, 1)
    assert (row["model"], row["provider"], row["cost_usd"]) == ("unknown", "anthropic", None)
    assert {k: row[k] for k in s.TOKENS} == {k: first.usage.get(k, 0) for k in s.TOKENS}
    assert "pass model=" in caplog.text


def test_not_a_response() -> None:
    """Another LlamaIndex object is not one this reader knows (the core warns, naming it)."""
    assert integration.read(ASK[0]) is None


def test_stream_broken_midway_is_a_failure(case: Case, handler: UsageEventHandler) -> None:
    """An Anthropic stream that errors after it started: LlamaIndex's ExceptionEvent ends the
    call, recorded once as a failure with the LLM's model; the error reaches the application."""
    events = s.wire.anthropic_events(s.SONNET, s.anthropic_usage(60, 0, 0, 0, 1), {})[:3]
    events.append({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    replay = s.replay(s.wire.sse(events))
    with (
        instrument_tags({"tenant_id": str(case.tenant)}),
        pytest.raises(anthropic.APIStatusError),
    ):
        for _ in llm("anthropic", replay).stream_chat(ASK):
            pass
    s.conform(case.db, case.tenant, [s.failure(s.SONNET, "")])


@pytest.mark.parametrize("mode", ["call", "stream"])
@pytest.mark.parametrize("provider", ["openai-chat", "anthropic"])
def test_event_handler_async(
    case: Case, handler: UsageEventHandler, provider: str, mode: str
) -> None:
    """achat / astream_chat reach the handler through the same events."""
    replay, truths = scenario(provider, mode)
    made: FunctionCallingLLM
    if provider == "anthropic":
        made = llm(provider, replay)
        made._aclient = anthropic.AsyncAnthropic(
            api_key="x", http_client=replay.ahttpx(), max_retries=0
        )
    else:
        made = OpenAI(
            model="gpt-4.1",
            api_key="x",
            async_http_client=replay.ahttpx(),
            max_retries=0,
            additional_kwargs={"stream_options": {"include_usage": True}},
        )

    async def converse() -> None:
        if mode == "call":
            await made.achat(ASK)
            return
        async for _ in await made.astream_chat(ASK):
            pass

    with instrument_tags({"tenant_id": str(case.tenant)}):
        asyncio.run(converse())
    case.conform(truths)
