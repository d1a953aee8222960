"""OpenTelemetry conformance: `UsageSpanProcessor` on a real SDK TracerProvider, fed by a real
GenAI instrumentation (pydantic-ai's `Instrumentation` capability, which writes the GenAI
semantic conventions) over OpenAI chat, OpenAI Responses and Anthropic (5-minute and 1-hour cache
writes) models whose SDK clients answer from mock HTTP transports; each row through a real
worker, compared with genai-prices on the provider's own usage. The tenant comes from W3C baggage
or the span's `ai_usage.tenant_id`.

The attribute names other instrumentations write (OpenLLMetry's older `gen_ai.usage.prompt_tokens`
and Anthropic input without the cache, openinference's `llm.token_count.*`) are checked on spans
made here with those names, as their sources write them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.models.instrumented import InstrumentationSettings

from tests.integrations import support as s
from tests.integrations.support import Case
from tests.integrations.test_pydantic_ai import CLAUDE, GPT, PROVIDERS, agent, run, scenario
from worker.client.integrations import _shared as shared
from worker.client.integrations.otel import UsageSpanProcessor, usage_of_span

pytestmark = pytest.mark.e2e


@pytest.fixture
def provider(case: Case) -> Iterator[TracerProvider]:
    """A TracerProvider whose ended spans go to the case's UsageClient."""
    made = TracerProvider()
    made.add_span_processor(UsageSpanProcessor(case.usage, operation="conformance"))
    yield made
    made.shutdown()


def instrumented(tracer_provider: TracerProvider) -> Instrumentation:
    settings = InstrumentationSettings(tracer_provider=tracer_provider, include_content=False)
    return Instrumentation(settings=settings)


@pytest.mark.parametrize("mode", ["call", "stream", "tool"])
@pytest.mark.parametrize("name", PROVIDERS)
def test_instrumented_agent_spans(
    case: Case, provider: TracerProvider, name: str, mode: str
) -> None:
    """One row per model-request span, none for the agent run's span (it holds their sum);
    the tenant from the baggage in force when the spans started."""
    replay, truths = scenario(name, mode)
    made = agent(name, replay, [instrumented(provider)])
    token = context.attach(baggage.set_baggage("tenant_id", str(case.tenant)))
    try:
        asyncio.run(run(made, mode, {}))
    finally:
        context.detach(token)
    case.conform(truths)


def test_span_attribute_tenant_and_failure(case: Case, provider: TracerProvider) -> None:
    """`ai_usage.tenant_id` on the span gives the tenant; a span with status ERROR is a
    failure, recorded with the usage it carries."""
    usage = s.chat_usage(3_000, 200, 2_048)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("chat") as span:
        span.set_attributes(
            {
                "ai_usage.tenant_id": str(case.tenant),
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-5.5",
                "gen_ai.response.model": GPT,
                "gen_ai.usage.input_tokens": 3_000,
                "gen_ai.usage.cache_read.input_tokens": 2_048,
                "gen_ai.usage.output_tokens": 200,
            }
        )
    with tracer.start_as_current_span("chat") as span:
        span.set_attributes({"ai_usage.tenant_id": str(case.tenant), "gen_ai.system": "openai"})
        span.set_attributes({"gen_ai.request.model": GPT, "gen_ai.usage.input_tokens": 3_000})
        span.set_status(Status(StatusCode.ERROR, "timeout"))
    truth = s.truth(usage, GPT, "openai", "chat")
    rows = s.landed(case.db, case.tenant, 2)
    s.compare(rows[0], truth)
    assert (rows[1]["success"], rows[1]["input_tokens"], rows[1]["model"]) == (
        "failure",
        3_000,
        GPT,
    )


def test_aggregate_spans_are_not_counted_twice(case: Case, provider: TracerProvider) -> None:
    """An agent run's, a tool's or a workflow's span carrying its children's sums is skipped."""
    tracer = provider.get_tracer("app")
    usage = s.chat_usage(1_000, 50, 0)
    with tracer.start_as_current_span("invoke_agent") as outer:
        outer.set_attributes({"gen_ai.operation.name": "invoke_agent"})
        outer.set_attributes({"gen_ai.usage.input_tokens": 1_000, "gen_ai.usage.output_tokens": 50})
        with tracer.start_as_current_span("chat") as inner:
            inner.set_attributes({"ai_usage.tenant_id": str(case.tenant)})
            inner.set_attributes({"gen_ai.provider.name": "openai", "gen_ai.request.model": GPT})
            inner.set_attributes(
                {"gen_ai.usage.input_tokens": 1_000, "gen_ai.usage.output_tokens": 50}
            )
    with tracer.start_as_current_span("workflow") as workflow:
        workflow.set_attributes({"ai_usage.tenant_id": str(case.tenant)})
        workflow.set_attributes({"traceloop.span.kind": "workflow", "gen_ai.usage.input_tokens": 9})
    s.conform(case.db, case.tenant, [s.truth(usage, GPT, "openai", "chat")])


def test_older_and_openinference_names() -> None:
    """OpenLLMetry's older names with Anthropic's input written as is (without the cache: it
    cannot hold a cache count larger than itself, so the cache is added), OpenLLMetry's summed
    input left alone, and openinference's llm.token_count.* names."""
    older = usage_of_span(
        {
            "gen_ai.system": "Anthropic",
            "gen_ai.request.model": CLAUDE,
            "gen_ai.usage.prompt_tokens": 60,
            "gen_ai.usage.completion_tokens": 400,
            "gen_ai.usage.cache_read_input_tokens": 8_000,
            "gen_ai.usage.cache_creation_input_tokens": 1_500,
        }
    )
    assert older is not None
    assert (older.input_tokens, older.cache_read_tokens, older.cache_write_tokens) == (
        9_560,
        8_000,
        1_500,
    )
    assert (older.model, older.provider, older.output_tokens) == (CLAUDE, "anthropic", 400)
    summed = usage_of_span(
        {
            "gen_ai.system": "Anthropic",
            "gen_ai.usage.input_tokens": 9_560,
            "gen_ai.usage.cache_read.input_tokens": 8_000,
            "gen_ai.usage.cache_creation.input_tokens": 1_500,
            "gen_ai.usage.output_tokens": 400,
        }
    )
    assert summed is not None and summed.input_tokens == 9_560
    inference = usage_of_span(
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "openai",
            "llm.model_name": GPT,
            "llm.token_count.prompt": 3_000,
            "llm.token_count.prompt_details.cache_read": 2_048,
            "llm.token_count.completion": 200,
            "llm.token_count.completion_details.reasoning": 64,
        }
    )
    assert inference is not None
    assert (inference.input_tokens, inference.cache_read_tokens, inference.output_tokens) == (
        3_000,
        2_048,
        200,
    )
    assert dict(inference.usage_details) == {"output_reasoning_tokens": 64}
    assert usage_of_span({"openinference.span.kind": "CHAIN", "llm.token_count.prompt": 5}) is None
    assert usage_of_span({"gen_ai.operation.name": "chat", "gen_ai.request.model": GPT}) is None


@pytest.mark.parametrize(
    ("named", "expected"),
    [
        ("gcp.gemini", "google"),
        ("gcp.vertex_ai", "google"),
        ("aws.bedrock", "aws"),
        ("azure.ai.openai", "azure"),
        ("Anthropic", "anthropic"),
        ("openai", "openai"),
    ],
)
def test_provider_names_are_genai_prices_ids(named: str, expected: str) -> None:
    found = usage_of_span({"gen_ai.provider.name": named, "gen_ai.usage.input_tokens": 1})
    assert found is not None and found.provider == expected


def test_a_bad_span_never_reaches_the_application(provider: TracerProvider) -> None:
    """A span naming no tenant (nothing in baggage, attributes or defaults) is logged, not
    raised into the code that ended it (test_odd_counts: a count that is no count)."""
    tracer = provider.get_tracer("app")
    attrs: dict[str, Any] = {"gen_ai.usage.input_tokens": "many", "gen_ai.usage.output_tokens": 3}
    with tracer.start_as_current_span("chat") as span:
        span.set_attributes(attrs)


def test_spans_never_ended_are_not_kept_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The baggage kept for open spans is bounded: spans that never end do not grow it."""
    monkeypatch.setattr(shared, "MAX_OPEN", 3)
    processor = UsageSpanProcessor(None, operation="chat")  # type: ignore[arg-type]
    made = TracerProvider()
    made.add_span_processor(processor)
    token = context.attach(baggage.set_baggage("tenant_id", "t"))
    try:
        spans = [made.get_tracer("app").start_span(f"chat {i}") for i in range(10)]
    finally:
        context.detach(token)
    assert len(processor._baggage) == 3
    assert list(processor._baggage) == [span.get_span_context().span_id for span in spans[-3:]]
