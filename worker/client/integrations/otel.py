"""OpenTelemetry: a SpanProcessor that records every ended span of a model call.

    from opentelemetry import trace
    from worker.client.integrations.otel import UsageSpanProcessor

    trace.get_tracer_provider().add_span_processor(UsageSpanProcessor(usage, operation="chat"))

This meters an application already instrumented (OpenLLMetry, openinference,
opentelemetry-instrumentation-openai, pydantic-ai's or LiteLLM's own instrumentation...) with
no code at the call sites. A span is recorded when it carries a token count and is a model call:
spans of whole agent runs, tools and workflows (`gen_ai.operation.name` invoke_agent,
create_agent, execute_tool, invoke_workflow; openinference's AGENT/CHAIN/TOOL kinds; OpenLLMetry's
workflow/task/agent/tool kinds) carry their children's sums and are skipped, or a run would be
counted twice.

Fields: `ai_usage.<field>` span attributes (tenant_id, user_id, assessment_id, lead_id,
operation), else the W3C baggage entries `tenant_id` / `user_id` in force when the span started,
else the defaults. The operation otherwise defaults to `gen_ai.operation.name`.

Mapping (GenAI semantic conventions, with the older names instrumentations still write):
- input: `gen_ai.usage.input_tokens` (or `gen_ai.usage.prompt_tokens`, openinference's
  `llm.token_count.prompt`); the conventions say it SHOULD include the cache reads and writes,
  and OpenLLMetry's Anthropic instrumentation and pydantic-ai sum them in, as genai-prices counts
  input. A span whose cache counts exceed its input count cannot hold them: such an input
  (Anthropic's own `input_tokens`, written as is by some instrumentations) is read as excluding
  them and they are added.
- cache read / write: `gen_ai.usage.cache_read.input_tokens` / `cache_creation.input_tokens`
  (or `gen_ai.usage.cache_read_input_tokens` / `cache_creation_input_tokens`, openinference's
  `llm.token_count.prompt_details.cache_read` / `cache_write`). The conventions have no 5m/1h
  split: Anthropic's `ephemeral_1h_input_tokens` is taken where an instrumentation passes it
  through as `gen_ai.usage.details.*` (pydantic-ai does); otherwise every cache write is priced
  at the 5-minute rate.
- output: `gen_ai.usage.output_tokens` (or `completion_tokens`, `llm.token_count.completion`);
  reasoning (`gen_ai.usage.reasoning.output_tokens`) and `gen_ai.usage.details.<key>` for a key
  genai-prices prices (audio tokens...) go to usage_details.
- model: `gen_ai.response.model`, else `gen_ai.request.model` (openinference `llm.model_name`);
  provider: `gen_ai.provider.name`, else `gen_ai.system` (openinference `llm.provider` /
  `llm.system`), as genai-prices' id (`gcp.gemini` -> google, `aws.bedrock` -> aws).
- a span with status ERROR is recorded as a failure, with whatever usage it carries.
- a count is an int, a whole float or a string of digits; any other value (negative, a word,
  NaN) records the span unpriced (0 tokens, the model kept) with a warning naming it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from worker.client.integrations._shared import (
    call_usage,
    guarded,
    priced_keys,
    provider_id,
    record,
    remember,
    unpriced,
)
from worker.client.responses import TOKEN_KEYS, BadCount, CallUsage, token_count

if TYPE_CHECKING:
    from worker.client.publisher import UsageClient

__all__ = ["UsageSpanProcessor", "usage_of_span"]

log = logging.getLogger(__name__)

#: Event fields a span may carry as `ai_usage.<field>`.
FIELDS = ("tenant_id", "user_id", "assessment_id", "lead_id", "operation")
#: Event fields taken from W3C baggage when the span does not carry them.
BAGGAGE = ("tenant_id", "user_id")

#: Each count's attribute names, the current convention first.
NAMES: dict[str, tuple[str, ...]] = {
    "input_tokens": (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
    ),
    "output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "output_reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
}
_DETAILS = "gen_ai.usage.details."

#: Provider usage keys some instrumentations pass through as `gen_ai.usage.details.<key>`
#: (pydantic-ai does), by genai-prices' name: the 5m/1h split of cache writes, reasoning.
DETAIL_ALIASES = {
    "ephemeral_5m_input_tokens": "cache_write_5m_tokens",
    "ephemeral_1h_input_tokens": "cache_write_1h_tokens",
    "reasoning_tokens": "output_reasoning_tokens",
}

#: Spans that sum their children's usage (a whole agent run, a tool, a workflow).
AGGREGATE_OPERATIONS = frozenset(
    {"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"}
)
AGGREGATE_KINDS = frozenset({"agent", "chain", "tool", "workflow", "task", "retriever"})

#: The conventions' provider names genai-prices' own matching does not resolve.
PROVIDERS = {
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.openai": "azure",  # the conventions' names before azure.ai.*
    "az.ai.inference": "azure",
    "x_ai": "x-ai",
    "mistral_ai": "mistral",
}


def _first(attrs: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None:
            return value
    return None


def _count(attrs: Mapping[str, Any], names: tuple[str, ...]) -> int:
    # An attribute is whatever the instrumentation wrote: a whole float or a string of digits
    # is read; anything else (negative, a word, a list) raises BadCount naming the attribute.
    for name in names:
        value = attrs.get(name)
        if value is not None:
            return token_count(value, name)
    return 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _aggregate(attrs: Mapping[str, Any]) -> bool:
    if attrs.get("gen_ai.operation.name") in AGGREGATE_OPERATIONS:
        return True
    kind = attrs.get("openinference.span.kind") or attrs.get("traceloop.span.kind")
    return isinstance(kind, str) and kind.lower() in AGGREGATE_KINDS


def usage_of_span(attrs: Mapping[str, Any]) -> CallUsage | None:
    """The usage a model call's span carries (see the module docstring); None for a span of no
    model call (no token count, or a sum of its children's)."""
    if _first(attrs, NAMES["input_tokens"]) is None and (
        _first(attrs, NAMES["output_tokens"]) is None
    ):
        return None
    if _aggregate(attrs):
        return None
    counts = {key: _count(attrs, names) for key, names in NAMES.items()}
    cached = counts["cache_read_tokens"] + counts["cache_write_tokens"]
    if cached > counts["input_tokens"]:
        counts["input_tokens"] += cached  # an input count that leaves the cache out
    keys = priced_keys()
    for name, value in attrs.items():
        if name.startswith(_DETAILS):
            key = name[len(_DETAILS) :]
            key = DETAIL_ALIASES.get(key, key)
            if key in keys and key not in TOKEN_KEYS and not counts.get(key):
                counts[key] = token_count(value, name)
    return call_usage(counts, *span_model(attrs))


def span_model(attrs: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(model, genai-prices provider id) a span names."""
    model = _text(attrs.get("gen_ai.response.model")) or _text(
        _first(attrs, ("gen_ai.request.model", "llm.model_name"))
    )
    named = _text(_first(attrs, ("gen_ai.provider.name", "gen_ai.system", "llm.provider")))
    named = named or _text(attrs.get("llm.system"))
    provider = PROVIDERS.get(named.lower()) if named else None
    return model, provider or provider_id(named)


class UsageSpanProcessor(SpanProcessor):
    """Records one usage event per ended span of a model call (see the module docstring).

    `defaults` are event fields for what neither the span nor the baggage gives. Recording
    never raises into the application: a bad field is logged.
    """

    def __init__(self, usage: UsageClient, **defaults: Any) -> None:
        self._usage = usage
        self._defaults = defaults
        #: Baggage fields in force when a span started, by span id, until it ends.
        self._baggage: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @guarded
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Keep the baggage fields in force at the span's start (its end has no context)."""
        try:
            found = {k: v for k in BAGGAGE if (v := baggage.get_baggage(k, parent_context))}
        except Exception:  # never into the application
            return
        if found and span.context is not None:
            with self._lock:
                remember(self._baggage, span.context.span_id, found)

    @guarded
    def on_end(self, span: ReadableSpan) -> None:
        """Record the span if it is a model call's."""
        with self._lock:
            held = self._baggage.pop(span.context.span_id, {}) if span.context else {}
        try:
            attrs = span.attributes or {}
            try:
                found = usage_of_span(attrs)
            except BadCount as exc:
                found = unpriced(exc, *span_model(attrs), _WHAT)
        except Exception:
            log.exception("could not read an OpenTelemetry span's usage")
            return
        if found is None:
            return
        fields = {**self._defaults, **held}
        operation = _text(attrs.get("gen_ai.operation.name"))
        if operation is not None:
            fields.setdefault("operation", operation)
        fields.update({k: v for k in FIELDS if (v := attrs.get(f"ai_usage.{k}")) is not None})
        took = None
        if span.start_time is not None and span.end_time is not None:
            took = max(span.end_time - span.start_time, 0) // 1_000_000
        failed = span.status.status_code is StatusCode.ERROR
        record(self._usage, found, fields, failed=failed, duration_ms=took, what=_WHAT)

    def shutdown(self) -> None:
        """Nothing to release: events go through the application's UsageClient."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here: the UsageClient flushes its own buffer."""
        return True


_WHAT = "an OpenTelemetry GenAI span"
