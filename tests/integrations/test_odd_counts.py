"""Counts that are no counts, from every reader and hook: a negative number, a fraction, a word,
a list, NaN. None may raise into the application, be read as 0 while the rest of the usage is
priced, or lose the row: each request lands unpriced (0 tokens, cost NULL, the model read
kept), with one warning naming the value. Objects are the frameworks' own, built by their
packages; the rows go through the real worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from langchain_core.messages import AIMessage
from litellm.types.utils import ModelResponse, Usage
from opentelemetry.sdk.trace import TracerProvider
from pydantic_ai.messages import ModelResponse as PaiResponse
from pydantic_ai.messages import TextPart
from pydantic_ai.usage import RequestUsage

from tests.integrations import support as s
from tests.integrations.support import Case
from tests.sdk_ledger import client_warnings
from worker.client.integrations.litellm import UsageLogger
from worker.client.integrations.otel import UsageSpanProcessor
from worker.client.integrations.pydantic_ai import UsageCapability

pytestmark = pytest.mark.e2e

HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini-2024-07-18"
#: Values an instrumentation or a framework object might hold where a count belongs.
Said = Callable[[str], list[str]]
ODD = ["many", -10, 5.5, float("nan"), [1, 2]]


@pytest.fixture
def warned(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Said:
    """The client's warnings containing a text, given since the test began."""
    return client_warnings(monkeypatch, caplog)


def unpriced(rows: list[dict[str, Any]], model: str, provider: str) -> None:
    for row in rows:
        assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, None), row
        assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (0, 0), row
        assert (row["model"], row["provider"], row["success"]) == (model, provider, "success")


def test_otel_span_with_odd_counts(case: Case, warned: Said) -> None:
    """Each odd input count (with a good output count beside it): the row is unpriced, not
    priced on the output alone."""
    made = TracerProvider()
    made.add_span_processor(UsageSpanProcessor(case.usage, tenant_id=case.tenant))
    tracer = made.get_tracer("app")
    for value in ODD:
        with tracer.start_as_current_span("chat") as span:
            span.set_attributes({"gen_ai.system": "anthropic", "gen_ai.request.model": HAIKU})
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 7})
            span.set_attribute("gen_ai.usage.input_tokens", value)
    made.shutdown()
    unpriced(s.landed(case.db, case.tenant, len(ODD)), HAIKU, "anthropic")
    said = warned("gen_ai.usage.input_tokens is")
    assert len(said) == len(ODD), said
    assert "'many'" in said[0] and "-10" in said[1] and "unpriced" in said[0]


def test_litellm_logger_with_odd_counts(case: Case, warned: Said) -> None:
    """A LiteLLM response whose counts are not counts: the logger's row is unpriced."""
    logger = UsageLogger(case.usage, **case.fields)
    for n, value in enumerate(ODD):
        response = ModelResponse(
            model=MINI, usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
        )
        response.usage.prompt_tokens = value
        kwargs = {"litellm_call_id": f"odd-{n}", "custom_llm_provider": "openai"}
        logger.log_success_event(kwargs, response, None, None)
    rows = s.landed(case.db, case.tenant, len(ODD))
    for row in rows:  # the model is not kept: the reader could not read the response
        assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, None)
        assert row["provider"] == "openai"
    assert warned("prompt_tokens is 'many'")


def test_langchain_message_with_odd_counts(case: Case, warned: Said) -> None:
    for value in ODD:
        message = AIMessage(
            content="hi",
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            response_metadata={"model_name": HAIKU, "model_provider": "anthropic"},
        )
        assert message.usage_metadata is not None
        message.usage_metadata["input_tokens"] = value
        with case.usage.track_usage(**case.fields) as call:
            assert call.response(message) is message
    rows = s.landed(case.db, case.tenant, len(ODD))
    assert all((r["input_tokens"], r["cost_usd"]) == (0, None) for r in rows), rows
    assert warned("usage_metadata input_tokens is -10")


def test_pydantic_ai_hook_with_odd_counts(case: Case, warned: Said) -> None:
    """The capability's hook is given a response whose usage holds a negative count (a
    provider adapter's bug): its row is unpriced and the run goes on."""
    hook = UsageCapability(case.usage, **case.fields)
    response = PaiResponse(
        parts=[TextPart("hi")],
        usage=RequestUsage(input_tokens=-3, output_tokens=5),
        model_name=HAIKU,
        provider_name="anthropic",
    )
    ctx: Any = SimpleNamespace(deps=None)  # what the hook reads of the run's context
    back = asyncio.run(
        hook.after_model_request(ctx, request_context=cast(Any, None), response=response)
    )
    assert back is response
    unpriced(s.landed(case.db, case.tenant, 1), HAIKU, "anthropic")
    assert warned("input_tokens is -3")
