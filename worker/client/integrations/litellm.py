"""LiteLLM: `UsageLogger`, and the reader of LiteLLM's own objects.

    import litellm
    from worker.client.integrations.litellm import UsageLogger

    litellm.callbacks = [UsageLogger(usage, operation="chat")]      # once
    litellm.completion(model=..., messages=..., metadata={"tenant_id": tenant})

One event per request, sync or async, streamed or not, failures included. Fields come from the
call's `metadata={...}` (tenant_id, user_id, assessment_id, lead_id, operation); on the LiteLLM
proxy, where the caller's metadata may be absent, the tenant is the key's team id, else its end
user's (`standard_logging_object` metadata; both must be tenant UUIDs), else the defaults.

The usage is LiteLLM's `Usage` (`prompt_tokens` counts the cache, as genai-prices does): cache
reads are `prompt_tokens_details.cached_tokens`, writes `cache_creation_input_tokens`, and the
1-hour share of the writes is only in
`prompt_tokens_details.cache_creation_token_details.ephemeral_1h_input_tokens` (priced higher:
missing it under-prices Claude's 1h writes). The provider is LiteLLM's `custom_llm_provider`,
never guessed from the response's shape (LiteLLM gives every provider's answer OpenAI's shape).
`standard_logging_object`'s token counts carry no cache: they are not used.

Importing this module imports litellm (it must be installed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
from litellm.responses.streaming_iterator import BaseResponsesAPIStreamingIterator
from litellm.types.llms.openai import ResponseCompletedEvent, ResponsesAPIResponse
from litellm.types.utils import ModelResponse, ModelResponseStream

from worker.client.responses import CallUsage, token_count
from worker.client.tracker import warn_once
from worker.client.tracking import TrackedCall

__all__ = ["UsageLogger", "read", "stream_reader", "usage_of"]

log = logging.getLogger(__name__)

#: LiteLLM's provider names -> genai-prices' provider ids. A name not here is stored as no
#: provider (the worker then prices by the model alone), never guessed.
PROVIDERS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure",
    "azure_ai": "azure",
    "azure_text": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "bedrock": "aws",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
}

#: LiteLLM providers whose streams carry the provider's usage whatever the request says. Any
#: other's stream has it only with `stream_options={"include_usage": True}`; without it LiteLLM
#: counts the tokens itself with a tokenizer (no cache, not what is billed): such an estimate is
#: never recorded as the usage.
STREAM_USAGE_ALWAYS = frozenset({"anthropic", "gemini", "vertex_ai", "vertex_ai_beta", "bedrock"})

#: The metadata keys taken as event fields.
FIELDS = ("tenant_id", "user_id", "assessment_id", "lead_id", "operation")


def _int(obj: Any, name: str) -> int:
    value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return token_count(value, name)


def _part(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def cache_split(prompt_details: Any) -> tuple[int, int]:
    """(5-minute, 1-hour) cache writes of a `prompt_tokens_details`: LiteLLM keeps the split
    only in its `cache_creation_token_details` (the 1-hour writes cost more). The mutation
    check breaks this function."""
    split = _part(prompt_details, "cache_creation_token_details") if prompt_details else None
    return _int(split, "ephemeral_5m_input_tokens"), _int(split, "ephemeral_1h_input_tokens")


def usage_of(usage: Any, model: str | None, provider: str | None) -> CallUsage:
    """A LiteLLM `Usage` (object or dict) in genai-prices' convention."""
    prompt = _part(usage, "prompt_tokens_details")
    completion = _part(usage, "completion_tokens_details")
    read = _int(prompt, "cached_tokens") or _int(usage, "cache_read_input_tokens")
    write = (
        _int(usage, "cache_creation_input_tokens")
        or _int(prompt, "cache_creation_tokens")
        or _int(prompt, "cache_write_tokens")
    )
    five, hour = cache_split(prompt)
    details: dict[str, int | float] = {}
    for key, value in (
        ("cache_write_5m_tokens", five),
        ("cache_write_1h_tokens", hour),
        ("output_reasoning_tokens", _int(completion, "reasoning_tokens")),
        ("input_audio_tokens", _int(prompt, "audio_tokens")),
        ("output_audio_tokens", _int(completion, "audio_tokens")),
    ):
        if value:
            details[key] = value
    return CallUsage(
        input_tokens=_int(usage, "prompt_tokens"),
        output_tokens=_int(usage, "completion_tokens"),
        cache_read_tokens=read,
        cache_write_tokens=write,
        usage_details=details,
        model=model,
        provider=provider,
    )


def responses_usage_of(usage: Any, model: str | None, provider: str | None) -> CallUsage:
    """The `usage` of a `litellm.responses()` answer (the Responses API's names)."""
    inp = _part(usage, "input_tokens_details")
    out = _part(usage, "output_tokens_details")
    details: dict[str, int | float] = {}
    reasoning = _int(out, "reasoning_tokens")
    if reasoning:
        details["output_reasoning_tokens"] = reasoning
    return CallUsage(
        input_tokens=_int(usage, "input_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        cache_read_tokens=_int(inp, "cached_tokens"),
        cache_write_tokens=_int(inp, "cache_write_tokens"),
        usage_details=details,
        model=model,
        provider=provider,
    )


def provider_of(hidden: Mapping[str, Any] | None) -> str | None:
    """genai-prices' id of the provider LiteLLM called, from a response's `_hidden_params`."""
    hidden = hidden or {}
    name = hidden.get("custom_llm_provider")
    if not name:
        # A non-streamed response keeps only the "provider/model" LiteLLM resolved.
        routed = hidden.get("litellm_model_name")
        if isinstance(routed, str) and "/" in routed:
            name = routed.partition("/")[0]
    return PROVIDERS.get(name) if isinstance(name, str) else None


def read(obj: Any) -> list[CallUsage] | None:
    """One CallUsage for a `ModelResponse` (or a `ModelResponseStream` chunk carrying the
    stream's usage: the last one, with `stream_options={"include_usage": True}`), for a
    `litellm.responses()` answer or its stream's `response.completed` event; [] for a chunk
    or event without usage; None for an object of no type read here."""
    if isinstance(obj, CustomStreamWrapper | BaseResponsesAPIStreamingIterator):
        return []  # the stream itself (see Stream.feed)
    if isinstance(obj, ResponseCompletedEvent):
        obj = obj.response
    if isinstance(obj, ResponsesAPIResponse):
        if obj.usage is None:
            return []
        hidden = getattr(obj, "_hidden_params", None)
        model = obj.model if isinstance(obj.model, str) and obj.model else None
        # LiteLLM's logging rewrites this usage in place into chat's names (prompt_tokens...)
        # before its callbacks run: the same object is read either way.
        if _part(obj.usage, "prompt_tokens") is not None:
            return [usage_of(obj.usage, model, provider_of(hidden))]
        return [responses_usage_of(obj.usage, model, provider_of(hidden))]
    if not isinstance(obj, ModelResponse | ModelResponseStream):
        # Another event of a responses() stream: LiteLLM's, without usage.
        return [] if type(obj).__module__.startswith("litellm.types") else None
    usage = getattr(obj, "usage", None)
    if usage is None:
        return []
    hidden = getattr(obj, "_hidden_params", None) or {}
    return [usage_of(usage, _model(obj, hidden), provider_of(hidden))]


def _model(obj: Any, hidden: Mapping[str, Any]) -> str | None:
    # The model the provider answered with (LiteLLM sets `model` to the one asked for in a
    # stream's chunks): its dated version, when the provider names one.
    for found in (hidden.get("provider_response_model"), getattr(obj, "model", None)):
        if isinstance(found, str) and found:
            return found
    return None


class Stream:
    """A LiteLLM stream's chunks (the last with usage holds the whole request's) or whole
    responses (each a request of its own). The stream object itself, fed first, names the
    provider (a `responses()` stream's events name none) and the chunks the model."""

    def __init__(self) -> None:
        self._done: list[CallUsage] = []
        self._last: CallUsage | None = None
        self._known = False
        self._provider: str | None = None
        self._model: str | None = None

    def feed(self, chunk: Any) -> None:
        """Read the stream, one of its chunks, or a response."""
        found = read(chunk)
        if found is None:
            return
        self._known = True
        if isinstance(chunk, CustomStreamWrapper | BaseResponsesAPIStreamingIterator):
            self._provider = PROVIDERS.get(str(getattr(chunk, "custom_llm_provider", None)))
            return
        hidden = getattr(chunk, "_hidden_params", None) or {}
        named = hidden.get("provider_response_model")
        if isinstance(named, str) and named:
            self._model = named
        if not isinstance(chunk, ModelResponse | ResponsesAPIResponse):
            # A stream's chunk or event: the last with usage holds the request's.
            if found:
                self._last = found[0]
        else:
            self._done.extend(found)

    def usages(self) -> list[CallUsage] | None:
        """The requests read (None: nothing LiteLLM's was given)."""
        if not self._known:
            return None
        if self._last is None:
            return list(self._done)
        last = dataclasses.replace(
            self._last,
            model=self._model or self._last.model,
            provider=self._last.provider or self._provider,
        )
        return [*self._done, last]


def stream_reader() -> Stream:
    """The StreamReader of worker.client.integrations' contract."""
    return Stream()


def _estimated(kwargs: Mapping[str, Any]) -> bool:
    """Whether LiteLLM made the usage of this call up (a stream without the provider's)."""
    if not kwargs.get("stream") or kwargs.get("custom_llm_provider") in STREAM_USAGE_ALWAYS:
        return False
    if "completion" not in str(kwargs.get("call_type")):
        return False  # responses(): its response.completed event always has the usage
    options = (kwargs.get("optional_params") or {}).get("stream_options") or {}
    return not options.get("include_usage")


def _ms(start: Any, end: Any) -> int | None:
    if isinstance(start, dt.datetime) and isinstance(end, dt.datetime):
        return max(0, int((end - start).total_seconds() * 1000))
    return None


class UsageLogger(CustomLogger):
    """Records one usage event per LiteLLM request (success or failure).

    `usage` is the application's UsageClient; `defaults` are event fields for calls whose
    metadata does not give them. `proxy_tenant` orders where a proxy request's tenant is taken
    from when its metadata names none: the key's "team", its "end_user"."""

    def __init__(
        self, usage: Any, *, proxy_tenant: Sequence[str] = ("team", "end_user"), **defaults: Any
    ) -> None:
        super().__init__()
        self._usage = usage
        self._defaults = defaults
        self._proxy_tenant = tuple(proxy_tenant)
        # LiteLLM may run both a sync and an async success hook for one call (an async call's
        # sync handler in its thread pool): each call id is recorded once.
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def _first(self, call_id: Any, failed: bool) -> bool:
        if not isinstance(call_id, str):
            return True
        key = f"{call_id}:{failed}"  # a failed attempt, then the call's success, are two
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        return True

    def fields(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The event fields of a call: its metadata's, the proxy key's tenant, the defaults."""
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or {}
        fields = dict(self._defaults)
        if "tenant_id" not in metadata:
            logged = (kwargs.get("standard_logging_object") or {}).get("metadata") or {}
            names = {"team": "user_api_key_team_id", "end_user": "user_api_key_end_user_id"}
            for source in self._proxy_tenant:
                tenant = logged.get(names.get(source, ""))
                if tenant:
                    fields["tenant_id"] = tenant
                    break
        fields.update({k: metadata[k] for k in FIELDS if metadata.get(k) is not None})
        return fields

    def _log(
        self, kwargs: dict[str, Any], response: Any, start: Any, end: Any, failed: bool
    ) -> None:
        try:
            if not self._first(kwargs.get("litellm_call_id"), failed):
                return
            fields = self.fields(kwargs)
            fields["duration_ms"] = _ms(start, end)
            provider = PROVIDERS.get(str(kwargs.get("custom_llm_provider")))
            if provider is not None:
                fields.setdefault("provider", provider)
            call = TrackedCall(self._usage.record, fields)
            if failed:
                call.default(model=kwargs.get("model"))
            elif _estimated(kwargs):
                found = read(response) or []
                call.default(model=found[0].model if found else kwargs.get("model"))
                call.tracker.tokens(0, 0)  # no usage: the worker stores the call unpriced
                warn_once(
                    f"litellm-estimated:{kwargs.get('custom_llm_provider')}",
                    "LiteLLM counted the usage of a %s stream itself (no stream_options="
                    "{'include_usage': True}): recorded with 0 tokens, unpriced, not its estimate",
                    kwargs.get("custom_llm_provider"),
                )
            else:
                call.tracker.feed(response)
            call.finish(failed)
        except Exception:  # never into LiteLLM's (and the application's) call
            log.exception("could not record a LiteLLM call")

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """A request (or a whole stream) succeeded."""
        self._log(kwargs, response_obj, start_time, end_time, False)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """An async request (or stream) succeeded."""
        self._log(kwargs, response_obj, start_time, end_time, False)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """A request failed: recorded with 0 tokens, success="failure"."""
        self._log(kwargs, response_obj, start_time, end_time, True)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """An async request failed."""
        self._log(kwargs, response_obj, start_time, end_time, True)
