"""pydantic-ai: its objects read exactly, and a capability that records every model request.

    from worker.client.integrations.pydantic_ai import UsageCapability

    agent = Agent(model, deps_type=Deps, capabilities=[
        UsageCapability(usage, fields=lambda deps: {"tenant_id": deps.tenant_id},
                        operation="support-chat"),
    ])

`UsageCapability` is pydantic-ai's own extension point (an `AbstractCapability` whose
`after_model_request` runs once per attempt at a model request, streamed or not), so a tool loop
records one event per request, each with the model that answered it; a request the provider
fails (`ModelAPIError`, seen by `wrap_model_request`) is recorded as a failure with the model
asked for. The attempts `RetryOnModelErrors` / `ModelFallback` moved on from run inside every
capability's `wrap_model_request`: they are recorded from the answer's `failed_attempts`, each a
failure with the usage billed for it, if any. The event fields come from the run's `deps`
through the function given, over the defaults.

Mapping: pydantic-ai's `RequestUsage` is already in genai-prices' convention (it implements
genai-prices' `AbstractUsage`): `input_tokens` counts the cache, `cache_read_tokens`,
`cache_write_tokens` and `cache_write_1h_tokens` are parts of it (for Anthropic, the rest of the
writes are reported as `cache_write_5m_tokens`, as genai-prices does); every other key genai-prices
prices (reasoning, audio, web searches...) goes to usage_details. The model is the response's
`model_name`; the provider its `provider_name`, as genai-prices' id (`google-gla` -> `google`).

`read()` (what `call.response()`, `track` and `track_stream` use): an `AgentRunResult` gives one
entry per model request of the run (its `new_messages()`, not the history it was given), with
the attempts a fallback or retry moved on from first (they were billed too); a `ModelResponse`
its own request; a `RunUsage` (or `RequestUsage`) one summed entry naming no model or provider
(pass model= and provider=: a run over several models cannot be priced from it); the last event
of `run_stream_events()`, `AgentRunResultEvent`, its run's requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.messages import ModelRequestAttempt, ModelResponse
from pydantic_ai.result import StreamedRunResult, StreamedRunResultSync
from pydantic_ai.run import AgentRunResult, AgentRunResultEvent
from pydantic_ai.usage import RequestUsage, RunUsage

from worker.client.integrations._shared import Hook, call_usage, guarded, provider_id, unpriced
from worker.client.responses import BadCount, CallUsage

if TYPE_CHECKING:
    from pydantic_ai.capabilities.abstract import WrapModelRequestHandler
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.tools import RunContext

__all__ = ["UsageCapability", "read"]


def usage_of(usage: RequestUsage | RunUsage, model: str | None, provider: str | None) -> CallUsage:
    """A pydantic-ai usage as a CallUsage (it is in genai-prices' convention already)."""
    # Provider-specific counters (web_searches, ...) are instance attributes beside the fields.
    return call_usage(vars(usage), model, provider_id(provider))


def _requests(responses: Iterable[Any]) -> list[CallUsage]:
    found: list[CallUsage] = []
    for message in responses:
        if not isinstance(message, ModelResponse):
            continue
        for attempt in message.failed_attempts or ():
            if attempt.usage is not None:
                found.append(usage_of(attempt.usage, attempt.model_name, attempt.provider_name))
        found.append(usage_of(message.usage, message.model_name, message.provider_name))
    return found


def read(obj: Any) -> list[CallUsage] | None:
    """The model requests a pydantic-ai object holds (see the module docstring); None for an
    object this reader does not know."""
    if isinstance(obj, ModelResponse):
        return _requests([obj])
    if isinstance(obj, AgentRunResultEvent):
        obj = obj.result
    if isinstance(obj, AgentRunResult):
        return _requests(obj.new_messages())
    if isinstance(obj, RunUsage | RequestUsage):
        return [usage_of(obj, None, None)]
    if isinstance(obj, StreamedRunResult | StreamedRunResultSync):
        # agent.run_stream(...): its messages are whole once the stream has been consumed.
        return _requests(obj.new_messages()) if obj.is_complete else []
    if type(obj).__name__.endswith("Event"):
        return []  # the other events of run_stream_events(): no usage until the last
    return None


class UsageCapability(Hook, AbstractCapability[Any]):
    """Records one usage event per model request of every run of the agent it is given to:
    `UsageCapability(usage, fields=..., **defaults)`.

    `fields(deps)` gives the event fields of a run (tenant_id, user_id, operation...) from its
    `deps`; `defaults` are used for what it leaves out. Fields given win over what the response
    says (model=, provider=). Recording never raises into the run: a bad field is logged.
    """

    what = "pydantic-ai's ModelResponse"

    async def after_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        response: ModelResponse,
    ) -> ModelResponse:
        self._record(ctx, response)
        return response

    @guarded
    def _record(self, ctx: RunContext[Any], response: ModelResponse) -> None:
        # The attempts RetryOnModelErrors / ModelFallback made before this response (they run
        # inside every capability's wrap_model_request, so no hook sees them fail): each a
        # failure, with the usage the provider billed for it, if any.
        for attempt in response.failed_attempts or ():
            self._record_attempt(ctx, attempt)
        try:
            found = usage_of(response.usage, response.model_name, response.provider_name)
        except BadCount as exc:
            provider = provider_id(response.provider_name)
            found = unpriced(exc, response.model_name, provider, self.what)
        took = response.duration
        self.record_request(
            found, ctx.deps, duration_ms=None if took is None else int(took.total_seconds() * 1000)
        )

    @guarded
    def _record_attempt(self, ctx: RunContext[Any], attempt: ModelRequestAttempt) -> None:
        provider = provider_id(attempt.provider_name)
        try:
            found = (
                CallUsage(model=attempt.model_name, provider=provider)
                if attempt.usage is None
                else usage_of(attempt.usage, attempt.model_name, attempt.provider_name)
            )
        except BadCount as exc:
            found = unpriced(exc, attempt.model_name, provider, self.what)
        took = int(attempt.duration.total_seconds() * 1000)
        self.record_request(found, ctx.deps, duration_ms=took, failed=True)

    @guarded
    def _record_failure(self, ctx: RunContext[Any], request_context: ModelRequestContext) -> None:
        model = request_context.model
        failed = CallUsage(model=model.model_name, provider=provider_id(model.system))
        self.record_request(failed, ctx.deps, duration_ms=None, failed=True)

    async def wrap_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        handler: WrapModelRequestHandler,
    ) -> ModelResponse:
        try:
            return await handler(request_context)
        except ModelAPIError:
            # The provider refused or failed the request (after the SDK's own retries): a
            # failure, with the model asked for. Other exceptions (a capability's ModelRetry,
            # a validation error) are the run's control flow, not a failed request.
            self._record_failure(ctx, request_context)
            raise
