"""OpenAI Agents SDK: its objects read exactly, and `RunHooks` that record every model call.

    from worker.client.integrations.openai_agents import UsageHooks

    hooks = UsageHooks(usage, fields=lambda ctx: {"tenant_id": ctx.tenant_id}, operation="triage")
    result = await Runner.run(agent, "...", context=app_context, hooks=hooks)

`UsageHooks.on_llm_end` runs once per model call (streamed or not, every agent of a handoff
chain), so a tool loop records one event per request. The event fields come from the run's
`context` (the application's own object, `RunContextWrapper.context`) through the function
given, over the defaults.

The trap: the SDK's `ModelResponse` names no model. It is the agent's `model` setting, a string
(`"gpt-4.1"`, `"openai/gpt-4.1"`, `"litellm/anthropic/claude-..."`) or a `Model` object (its
`model` attribute; the provider from its client's base URL, or the LiteLLM route), mapped by
`agent_model()` alone. A `RunConfig(model=...)` replaces every agent's setting and is not visible
to hooks or results: give the same `model=` to `UsageHooks` (fields given win over what is read).

Mapping: the SDK's `Usage` follows the Responses API (whatever the model's API):
`input_tokens` counts the cache, `input_tokens_details.cached_tokens` / `.cache_write_tokens`
are parts of it, `output_tokens_details.reasoning_tokens` part of the output (mapped as
genai-prices' Responses extractor maps it). The SDK keeps no 5m/1h split of Anthropic's cache
writes (through `LitellmModel`): they are recorded and priced as 5-minute writes. For 1-hour
writes, meter those calls with `worker.client.integrations.litellm.UsageLogger` instead
(LiteLLM's own callback sees the split). A streamed LiteLLM or chat model reports usage only
with `ModelSettings(include_usage=True)` (the OpenAI client's default).

`read()`: a `RunResult` (or a finished `RunResultStreaming`) gives one entry per entry of
`raw_responses`, each with the model of the agent that made it; the events of `stream_events()`
are read by `stream_reader()`: one entry per `response.completed`, the provider from the agent
of the latest `agent_updated_stream_event`.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from agents import RunHooks
from agents.items import ModelResponse
from agents.result import RunResult, RunResultStreaming
from agents.stream_events import AgentUpdatedStreamEvent, RawResponsesStreamEvent
from agents.usage import Usage

from worker.client.integrations._shared import (
    FieldsOf,
    Hook,
    aguarded,
    call_usage,
    provider_id,
    remember,
    unpriced,
)
from worker.client.responses import BadCount, CallUsage, get
from worker.client.tracker import warn_once

if TYPE_CHECKING:
    from agents import Agent, RunContextWrapper

    from worker.client.publisher import UsageClient

__all__ = ["UsageHooks", "agent_model", "read", "stream_reader"]

#: MultiProvider's prefixes that route a model through LiteLLM / any-llm ("<provider>/<model>").
_ROUTERS = ("litellm", "any-llm")


def agent_model(setting: Any) -> tuple[str | None, str | None]:
    """(model, genai-prices provider id) of an agent's `model` setting: a string, a `Model`
    object, or None (the SDK's default model). The one place the Agents model is mapped."""
    if setting is None:
        from agents.models import get_default_model

        return get_default_model(), "openai"
    if isinstance(setting, str):
        prefix, _, rest = setting.partition("/")
        if not rest:
            return setting, "openai"  # MultiProvider sends a bare name to OpenAI
        if prefix == "openai":
            return rest, "openai"
        if prefix in _ROUTERS:
            return _routed(rest)
        return setting, None
    name = getattr(setting, "model", None)
    if not isinstance(name, str) or not name:
        return None, None
    # By name: importing the extensions' classes would import LiteLLM / any-llm themselves.
    if type(setting).__name__ in ("LitellmModel", "AnyLLMModel"):
        return _routed(name)
    client = getattr(setting, "_client", None)  # OpenAIResponsesModel, OpenAIChatCompletionsModel
    return name, _provider_of_url(str(getattr(client, "base_url", "") or ""))


def _routed(name: str) -> tuple[str, str | None]:
    """A LiteLLM-style "<provider>/<model>" name."""
    provider, _, model = name.partition("/")
    return (model, provider_id(provider)) if model else (name, None)


@functools.lru_cache(maxsize=64)
def _provider_of_url(base_url: str) -> str | None:
    """The provider serving an OpenAI client's base URL (genai-prices' API patterns); OpenAI for
    a client not made yet (the SDK makes a default one); None for an endpoint it does not know."""
    if not base_url:
        return "openai"
    from genai_prices.data_snapshot import get_snapshot

    try:
        return str(get_snapshot().find_provider(None, None, base_url).id)
    except LookupError:
        return None


def usage_of(usage: Any, model: str | None, provider: str | None) -> CallUsage:
    """The SDK's `Usage` (or a Responses `ResponseUsage`) as a CallUsage."""
    # The SDK's own normalised shape, the Responses API's whatever the model's API, mapped as
    # genai-prices' Responses extractor maps it (the suite checks both agree on every wire);
    # by hand, as the extractor's generic path costs more than the rest of the hook.
    inputs = get(usage, "input_tokens_details")
    counts = {
        "input_tokens": get(usage, "input_tokens"),
        "output_tokens": get(usage, "output_tokens"),
        "cache_read_tokens": get(inputs, "cached_tokens"),
        "cache_write_tokens": get(inputs, "cache_write_tokens"),
        "output_reasoning_tokens": get(get(usage, "output_tokens_details"), "reasoning_tokens"),
    }
    # The SDK keeps no TTL split of Anthropic's writes: call_usage takes them as 5-minute ones,
    # which misprices 1-hour writes (2x the input price, not 1.25x): say so, once.
    writes = counts["cache_write_tokens"]
    if provider == "anthropic" and isinstance(writes, int) and writes > 0:
        warn_once(
            "agents-anthropic-cache-ttl",
            "ai-usage: the OpenAI Agents SDK does not say whether Anthropic cache writes "
            "were 5-minute or 1-hour ones: they are priced as 5-minute writes. Meter calls "
            "that write 1-hour caches with worker.client.integrations.litellm.UsageLogger, "
            "which reads the split.",
        )
    return call_usage(counts, model, provider)


def _agents_of(result: RunResult | RunResultStreaming) -> list[Any]:
    """The agent that made each raw response: the one its output items were attributed to (a
    handoff changes it), else the run's last agent."""
    by_item = {id(item.raw_item): item.agent for item in result.new_items}
    last = result.last_agent
    agents = []
    for response in result.raw_responses:
        owner = next((by_item[id(o)] for o in response.output if id(o) in by_item), None)
        agents.append(owner if owner is not None else last)
    return agents


def read(obj: Any) -> list[CallUsage] | None:
    """The model requests an Agents SDK object holds (see the module docstring); None for an
    object this reader does not know."""
    if isinstance(obj, RunResult | RunResultStreaming):
        if isinstance(obj, RunResultStreaming) and not obj.is_complete:
            return []
        return [
            usage_of(response.usage, *agent_model(getattr(agent, "model", None)))
            for response, agent in zip(obj.raw_responses, _agents_of(obj), strict=True)
        ]
    if isinstance(obj, ModelResponse):
        return [usage_of(obj.usage, None, None)]  # it names no model: give model=
    if isinstance(obj, Usage):
        entries = obj.request_usage_entries or [obj]
        return [usage_of(entry, None, None) for entry in entries]
    if isinstance(obj, RawResponsesStreamEvent):
        return [_completed(obj, None)] if _is_completed(obj) else []
    if type(obj).__module__.startswith("agents.stream_events"):
        return []
    return None


def _is_completed(event: RawResponsesStreamEvent) -> bool:
    return bool(get(event.data, "type") == "response.completed")


def _completed(event: RawResponsesStreamEvent, agent: Any) -> CallUsage:
    response = get(event.data, "response")
    model, provider = agent_model(agent.model) if agent is not None else (None, None)
    if model is None:
        # No agent seen: the response's own name (a LiteLLM route names its provider too).
        named = get(response, "model")
        if isinstance(named, str) and named:
            model, provider = _routed(named) if "/" in named else (named, provider)
    return usage_of(get(response, "usage"), model, provider)


class AgentsStream:
    """Reads the events of `RunResultStreaming.stream_events()` (one entry per model response),
    and whatever else of the SDK is given to the same call."""

    def __init__(self) -> None:
        self._agent: Any = None
        self._found: list[CallUsage] | None = None

    def feed(self, chunk: Any) -> None:
        """Read one event; never raises."""
        found: list[CallUsage] | None
        if isinstance(chunk, AgentUpdatedStreamEvent):
            self._agent, found = chunk.new_agent, []
        elif isinstance(chunk, RawResponsesStreamEvent) and _is_completed(chunk):
            found = [_completed(chunk, self._agent)]
        else:
            found = read(chunk)  # a whole RunResult given to call.response(), say
        if found is not None:
            self._found = [*(self._found or []), *found]

    def usages(self) -> list[CallUsage] | None:
        """The responses read so far (None: no event of this SDK seen)."""
        return self._found


def stream_reader() -> AgentsStream:
    """The StreamReader for `stream_events()` (see worker.client.integrations)."""
    return AgentsStream()


class UsageHooks(Hook, RunHooks[Any]):
    """Records one usage event per model call of a run (`Runner.run(..., hooks=UsageHooks(usage,
    fields=..., **defaults))`).

    `fields(context)` gives the event fields (tenant_id, user_id, operation...) from the run's
    context object; `defaults` are used for what it leaves out. Fields given win over what is
    read (model=, provider=). Recording never raises into the run: a bad field is logged.
    """

    what = "an OpenAI Agents SDK model response"

    def __init__(
        self, usage: UsageClient, *, fields: FieldsOf | None = None, **defaults: Any
    ) -> None:
        super().__init__(usage, fields=fields, **defaults)
        self._started: dict[tuple[int, int], float] = {}

    @aguarded
    async def on_llm_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], *_: Any, **__: Any
    ) -> None:
        remember(self._started, (id(context), id(agent)), time.monotonic())

    @aguarded
    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        started = self._started.pop((id(context), id(agent)), None)
        took = None if started is None else int((time.monotonic() - started) * 1000)
        found: CallUsage | None = None
        try:
            named = agent_model(agent.model)
            found = usage_of(response.usage, *named)
        except BadCount as exc:
            found = unpriced(exc, *named, self.what)
        except Exception:  # an SDK object of another shape: recorded unpriced, not raised
            found = None
        self.record_request(found, context.context, duration_ms=took)
