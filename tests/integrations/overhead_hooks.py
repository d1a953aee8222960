"""What the pydantic-ai, OpenAI Agents, LlamaIndex and OpenTelemetry integrations cost per call on
the application's request path, in µs (as tests.integrations.overhead does for LangChain and
LiteLLM, whose harness and no-op publisher this uses): each hook fed the framework's real object
from a real run over a mock transport, and the same object handed to `call.response`. A
measurement, not a test. LlamaIndex's cases run from its own venv, the others from the first:

    .venv-integrations/bin/python -m tests.integrations.overhead_hooks
    .venv-llamaindex/bin/python -m tests.integrations.overhead_hooks
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import warnings
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

from tests.integrations.overhead import ROUNDS, TENANT, client, per_call

Cases = dict[str, Callable[[], Any]]

# The Agents cases import LiteLLM, which fetches its cost map from GitHub unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def drive(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run a hook's coroutine that never awaits, without an event loop's own cost."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the hook awaited something")


def pydantic_ai_cases() -> Cases:
    from tests.integrations.test_pydantic_ai import agent, scenario
    from worker.client.integrations.pydantic_ai import UsageCapability

    usage = client()
    replay, _ = scenario("anthropic", "call")
    result = agent("anthropic", replay).run_sync("Hi", deps={})
    hook = UsageCapability(usage, fields=lambda deps: deps, operation="chat")
    ctx = SimpleNamespace(deps={"tenant_id": TENANT})

    def capability() -> None:
        drive(hook.after_model_request(ctx, request_context=None, response=result.response))

    def handed() -> None:
        with usage.track_usage(tenant_id=TENANT, operation="chat") as call:
            call.response(result)

    return {
        "pydantic-ai UsageCapability": capability,
        "pydantic-ai call.response(AgentRunResult)": handed,
    }


def openai_agents_cases() -> Cases:
    from agents import RunContextWrapper, set_tracing_disabled

    from tests.integrations.test_openai_agents import AppContext, agent, run, scenario
    from worker.client.integrations.openai_agents import UsageHooks

    set_tracing_disabled(True)
    usage = client()
    replay, _ = scenario("responses-model", "call")
    made = agent("responses-model", replay)
    result = asyncio.run(run(made, "call"))
    hooks = UsageHooks(usage, fields=lambda ctx: {"tenant_id": ctx.tenant}, operation="chat")
    context = RunContextWrapper(context=AppContext(TENANT))

    def on_llm_end() -> None:
        drive(hooks.on_llm_end(context, made, result.raw_responses[0]))

    def handed() -> None:
        with usage.track_usage(tenant_id=TENANT, operation="chat") as call:
            call.response(result)

    return {
        "OpenAI Agents UsageHooks.on_llm_end": on_llm_end,
        "OpenAI Agents call.response(RunResult)": handed,
    }


def otel_cases() -> Cases:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult as Result

    from worker.client.integrations.otel import UsageSpanProcessor

    ended: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> Result:
            ended.extend(spans)
            return Result.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    with provider.get_tracer("app").start_as_current_span("chat") as span:
        span.set_attributes(
            {
                "ai_usage.tenant_id": str(TENANT),
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.response.model": "claude-sonnet-5-5",
                "gen_ai.usage.input_tokens": 12_560,
                "gen_ai.usage.output_tokens": 400,
                "gen_ai.usage.cache_read.input_tokens": 8_000,
                "gen_ai.usage.cache_creation.input_tokens": 4_500,
                "gen_ai.usage.details.ephemeral_1h_input_tokens": 3_000,
            }
        )
    processor = UsageSpanProcessor(client(), operation="chat")
    return {"OpenTelemetry UsageSpanProcessor.on_end": lambda: processor.on_end(ended[0])}


def llamaindex_cases() -> Cases:
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent

    from tests.integrations.test_llamaindex import ASK, llm, scenario
    from worker.client.integrations.llamaindex import UsageEventHandler

    usage = client()
    replay, _ = scenario("anthropic", "call")
    made = llm("anthropic", replay)
    response = made.chat(ASK)
    handler = UsageEventHandler(usage, operation="chat")
    tags = {"tenant_id": str(TENANT)}
    model = {"model": "claude-sonnet-4-5", "class_name": "Anthropic_LLM"}

    # The events LlamaIndex builds anyway: only the handler's work is measured.
    start = LLMChatStartEvent(
        messages=ASK, additional_kwargs={}, model_dict=model, span_id="s", tags=tags
    )
    end = LLMChatEndEvent(messages=ASK, response=response, span_id="s", tags=tags)

    def events() -> None:
        handler.handle(start)
        handler.handle(end)

    def handed() -> None:
        with usage.track_usage(tenant_id=TENANT, operation="chat") as call:
            call.response(response)

    return {
        "LlamaIndex UsageEventHandler (start + end)": events,
        "LlamaIndex call.response(ChatResponse)": handed,
    }


def floor() -> Callable[[], Any]:
    """`record()` alone with the numbers of the cases' Anthropic call: what any hook pays."""
    usage = client()
    split: dict[str, int | float] = {"cache_write_5m_tokens": 1_500, "cache_write_1h_tokens": 3_000}

    def record() -> None:
        usage.record(
            tenant_id=TENANT,
            operation="chat",
            model="claude-sonnet-5-5",
            input_tokens=12_560,
            output_tokens=400,
            cache_read_tokens=8_000,
            cache_write_tokens=4_500,
            usage_details=split,
        )

    return record


def main() -> None:
    cases: Cases = {"record() alone (the floor, this process)": floor()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frameworks' import-time warnings
        if importlib.util.find_spec("llama_index") is not None:
            cases |= llamaindex_cases()
        else:
            cases |= pydantic_ai_cases() | openai_agents_cases() | otel_cases()
    print(f"{'per call, median of ' + str(ROUNDS) + ' rounds':45} {'µs':>8}")
    for name, func in cases.items():
        print(f"{name:45} {per_call(func):8.1f}")


if __name__ == "__main__":
    main()
