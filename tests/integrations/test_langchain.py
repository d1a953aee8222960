"""LangChain conformance: ChatOpenAI (chat and Responses API) and ChatAnthropic (5-minute and
1-hour cache writes) over mock HTTP transports, metered by `UsageCallbackHandler` and by handing
LangChain's own objects to `call.response` / `track_stream`; each row through a real worker,
compared with genai-prices on the provider's own usage.

Gemini is not covered: langchain-google-genai 4.x needs google-genai<2, the project's >=3.3.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.integrations import support as s
from tests.integrations.support import Case, Replay, Truth
from worker.client.integrations.langchain import UsageCallbackHandler

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai-chat", "openai-responses", "anthropic")
MODES = ("call", "stream", "tool", "async")

usages = s.tool_run_usages
truth = s.provider_truth
answer = s.provider_answer


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def chat_model(provider: str, replay: Replay) -> BaseChatModel:
    """The real LangChain chat model, its SDK client over `replay`."""
    if provider.startswith("openai"):
        return ChatOpenAI(
            model="gpt-4.1",
            api_key="x",
            http_client=replay.httpx(),
            http_async_client=replay.ahttpx(),
            max_retries=0,
            stream_usage=True,
            use_responses_api=provider == "openai-responses",
        )
    llm = ChatAnthropic(model=s.SONNET, api_key="x", max_retries=0, max_tokens=1024)
    # ChatAnthropic takes no http_client: its SDK clients are cached properties.
    llm.__dict__["_client"] = anthropic.Anthropic(
        api_key="x", http_client=replay.httpx2(), max_retries=0
    )
    llm.__dict__["_async_client"] = anthropic.AsyncAnthropic(
        api_key="x", http_client=replay.ahttpx2(), max_retries=0
    )
    return llm


def tool_run(llm: BaseChatModel, config: dict[str, Any] | None = None) -> list[BaseMessage]:
    """A two-request tool loop, as an application (or an agent) runs it."""
    bound = llm.bind_tools([weather])
    history: list[BaseMessage] = [HumanMessage("Weather in Paris?")]
    first = bound.invoke(history, config=config)
    assert isinstance(first, AIMessage) and first.tool_calls, first
    history.append(first)
    for request in first.tool_calls:
        history.append(ToolMessage(weather.invoke(request["args"]), tool_call_id=request["id"]))
    second = bound.invoke(history, config=config)
    history.append(second)
    return history


def replay_for(provider: str, mode: str) -> tuple[Replay, list[Truth]]:
    first, second = usages(provider)
    if mode == "tool":
        replay = s.replay(
            answer(provider, first, False, True), answer(provider, second, False, False)
        )
        return replay, [truth(provider, first), truth(provider, second)]
    stream = mode == "stream"
    return s.replay(answer(provider, first, stream, False)), [truth(provider, first)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_callback_handler(case: Case, provider: str, mode: str) -> None:
    replay, truths = replay_for(provider, mode)
    llm = chat_model(provider, replay)
    handler = UsageCallbackHandler(case.usage, operation="default-op")
    config: Any = {
        "callbacks": [handler],
        "metadata": {"tenant_id": str(case.tenant), "operation": "conformance"},
    }
    if mode == "call":
        llm.invoke("Hi", config=config)
    elif mode == "stream":
        assert "".join(str(c.content) for c in llm.stream("Hi", config=config)) is not None
    elif mode == "tool":
        tool_run(llm, config)
    else:

        async def run() -> None:
            await llm.ainvoke("Hi", config=config)

        asyncio.run(run())
    rows = case.conform(truths)
    assert {r["operation"] for r in rows} == {"conformance"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_langchain_objects_handed_to_the_client(case: Case, provider: str, mode: str) -> None:
    replay, truths = replay_for(provider, mode)
    llm = chat_model(provider, replay)
    usage = case.usage
    if mode == "call":
        with usage.track_usage(**case.fields) as call:
            call.response(llm.invoke("Hi"))
    elif mode == "stream":
        chunks = list(usage.track_stream(llm.stream("Hi"), **case.fields))
        assert chunks
    elif mode == "tool":
        with usage.track_usage(**case.fields) as call:
            call.response(tool_run(llm))  # the conversation: one event per AIMessage
    else:

        async def run() -> None:
            async with usage.track_usage(**case.fields) as call:
                call.response(await llm.ainvoke("Hi"))

        asyncio.run(run())
    case.conform(truths)


def test_a_failed_request_is_recorded_as_a_failure(case: Case) -> None:
    replay = s.replay((b'{"error": {"message": "overloaded"}}', s.JSON, 500))
    llm = chat_model("openai-chat", replay)
    handler = UsageCallbackHandler(case.usage, tenant_id=case.tenant, operation="conformance")
    with pytest.raises(Exception, match="overloaded"):
        llm.invoke("Hi", config={"callbacks": [handler]})
    case.conform([s.failure("gpt-4.1", "openai")])


def test_defaults_give_the_tenant_when_the_metadata_does_not(case: Case) -> None:
    first = usages("anthropic")[0]
    llm = chat_model("anthropic", s.replay(answer("anthropic", first, False, False)))
    handler = UsageCallbackHandler(case.usage, tenant_id=case.tenant, operation="conformance")
    llm.invoke("Hi", config={"callbacks": [handler], "metadata": {"tenant_id": None}})
    case.conform([truth("anthropic", first)])
