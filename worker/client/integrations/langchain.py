"""LangChain: `UsageCallbackHandler`, and the reader of LangChain's own objects.

    from worker.client.integrations.langchain import UsageCallbackHandler

    meter = UsageCallbackHandler(usage, operation="chat")          # defaults for every call
    llm.invoke(prompt, config={"callbacks": [meter],
                               "metadata": {"tenant_id": tenant, "operation": "summarise"}})

One event per model request (a tool loop's every request), from the message's
`usage_metadata`; fields from the run's `config={"metadata": {...}}` (tenant_id, user_id,
assessment_id, lead_id, operation), else the handler's defaults. `on_llm_error` records a
failure. The handler is a `BaseCallbackHandler` run inline, so it serves `invoke` and
`ainvoke`, `stream` and `astream` alike.

`usage_metadata` follows genai-prices' convention (`input_tokens` counts the cache) except for
one trap: langchain-anthropic reports `cache_creation: 0` beside `ephemeral_5m_input_tokens` /
`ephemeral_1h_input_tokens` when the API gives the split, so the cache writes are the split when
there is one, else `cache_creation` (LangChain's own rule for its `input_tokens`).

Importing this module imports langchain_core (it must be installed); `worker.client` never
imports this module except to read a LangChain object it was handed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult

from worker.client.integrations._shared import guarded
from worker.client.responses import CallUsage, token_count
from worker.client.tracking import TrackedCall

__all__ = ["UsageCallbackHandler", "read", "stream_reader", "usage_of"]

#: LangChain's `model_provider` / `ls_provider` names -> genai-prices' provider ids. A name not
#: here is stored as no provider (the worker then prices by the model alone), never guessed.
#: The handler takes the run's `ls_provider` (the chat model class's) over the message's
#: `model_provider`: an AzureChatOpenAI message says "openai". A message handed to
#: call.response() alone cannot tell: give provider="azure" there.
PROVIDERS = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "google_genai": "google",
    "google_vertexai": "google",
    "google_anthropic_vertex": "google",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "groq": "groq",
    "mistralai": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
}

#: The metadata keys taken as event fields (the rest of a run's metadata is LangChain's own).
FIELDS = ("tenant_id", "user_id", "assessment_id", "lead_id", "operation")


def _count(part: Mapping[str, Any], key: str) -> int:
    return token_count(part.get(key), f"usage_metadata {key}")


def cache_writes(details: Mapping[str, Any]) -> tuple[int, int, int]:
    """(all, 5-minute, 1-hour) cache writes of an `input_token_details`. The trap:
    langchain-anthropic gives `cache_creation: 0` beside the 5m/1h split when the API splits
    them, so the writes are the split when there is one, else `cache_creation` (LangChain's own
    rule for its `input_tokens`). The mutation check breaks this function."""
    five = _count(details, "ephemeral_5m_input_tokens")
    hour = _count(details, "ephemeral_1h_input_tokens")
    return five + hour or _count(details, "cache_creation"), five, hour


def usage_of(metadata: Mapping[str, Any], model: str | None, provider: str | None) -> CallUsage:
    """A LangChain `usage_metadata` in genai-prices' convention."""
    inp = metadata.get("input_token_details") or {}
    out = metadata.get("output_token_details") or {}
    write, five, hour = cache_writes(inp)
    details: dict[str, int | float] = {}
    for key, value in (
        ("cache_write_5m_tokens", five),
        ("cache_write_1h_tokens", hour),
        ("output_reasoning_tokens", _count(out, "reasoning")),
        ("input_audio_tokens", _count(inp, "audio")),
        ("output_audio_tokens", _count(out, "audio")),
    ):
        if value:
            details[key] = value
    return CallUsage(
        input_tokens=_count(metadata, "input_tokens"),
        output_tokens=_count(metadata, "output_tokens"),
        cache_read_tokens=_count(inp, "cache_read"),
        cache_write_tokens=write,
        usage_details=details,
        model=model,
        provider=provider,
    )


def _named(meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    model = meta.get("model_name") or meta.get("model")
    provider = meta.get("model_provider")
    return (
        model if isinstance(model, str) and model else None,
        PROVIDERS.get(provider) if isinstance(provider, str) else None,
    )


def _message(message: AIMessage) -> list[CallUsage]:
    if message.usage_metadata is None:
        return []
    model, provider = _named(message.response_metadata)
    return [usage_of(message.usage_metadata, model, provider)]


def read(obj: Any) -> list[CallUsage] | None:
    """One CallUsage per model request in a LangChain object: an `AIMessage` (or chunk), a
    `ChatGeneration`, a `ChatResult` / `LLMResult` (each prompt's first generation); [] for
    another message (human, tool...); None for an object of no type read here."""
    if isinstance(obj, AIMessage):
        return _message(obj)
    if isinstance(obj, BaseMessage):
        return []
    if isinstance(obj, ChatGeneration):
        return _message(obj.message) if isinstance(obj.message, AIMessage) else []
    if isinstance(obj, ChatResult):
        return [u for g in obj.generations[:1] for u in read(g) or []]
    if isinstance(obj, LLMResult):
        return [u for prompt in obj.generations for g in prompt[:1] for u in read(g) or []]
    return None


class Stream:
    """Reads a stream of `AIMessageChunk`s (LangChain's `stream()` / `astream()`), whose usage
    comes in deltas to be added up (as LangChain's own `chunk + chunk` does); a whole message
    among them is a request of its own (a list of a tool loop's messages)."""

    def __init__(self) -> None:
        self._done: list[CallUsage] = []
        self._sum: UsageMetadata | None = None
        self._meta: dict[str, Any] = {}
        self._known = False

    def feed(self, chunk: Any) -> None:
        """Read one chunk or message."""
        if isinstance(chunk, AIMessageChunk):
            self._known = True
            if chunk.usage_metadata is not None:
                self._sum = add_usage(self._sum, chunk.usage_metadata)
            for key in ("model_name", "model", "model_provider"):
                value = chunk.response_metadata.get(key)
                if value:
                    self._meta[key] = value
            return
        if isinstance(chunk, list | tuple):
            for item in chunk:
                self.feed(item)
            return
        found = read(chunk)
        if found is not None:
            self._known = True
            self._done.extend(found)

    def usages(self) -> list[CallUsage] | None:
        """The requests read (None: nothing LangChain's was given)."""
        if not self._known:
            return None
        if self._sum is None:
            return list(self._done)
        return [*self._done, usage_of(self._sum, *_named(self._meta))]


def stream_reader() -> Stream:
    """The StreamReader of worker.client.integrations' contract."""
    return Stream()


class UsageCallbackHandler(BaseCallbackHandler):
    """Records one usage event per model request of the runs it is a callback of.

    `usage` is the application's UsageClient; `defaults` are event fields (tenant_id,
    operation, user_id, ...) for runs whose `config["metadata"]` does not give them."""

    #: Called in the event loop's own thread for async runs: recording is a non-blocking
    #: hand-off to the client's buffer, not worth a thread-pool round trip.
    run_inline = True
    raise_error = False

    def __init__(self, usage: Any, **defaults: Any) -> None:
        super().__init__()
        self._usage = usage
        self._defaults = defaults
        self._runs: dict[uuid.UUID, tuple[TrackedCall, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: uuid.UUID, metadata: Mapping[str, Any] | None, **kw: Any) -> None:
        meta = metadata or {}
        fields = dict(self._defaults)
        fields.update({k: meta[k] for k in FIELDS if meta.get(k) is not None})
        call = TrackedCall(self._usage.record, fields)
        call.start(check=False)
        # What a failure is recorded as: the model asked for, the chat model's provider.
        params = kw.get("invocation_params") or {}
        asked = params.get("model") or params.get("model_name") or meta.get("ls_model_name")
        failed = {"model": asked, "provider": PROVIDERS.get(str(meta.get("ls_provider")))}
        with self._lock:
            self._runs[run_id] = (call, failed)

    def _take(self, run_id: uuid.UUID) -> tuple[TrackedCall, dict[str, Any]] | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    @guarded
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: uuid.UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Capture the run's fields (on_llm_end gets no metadata)."""
        self._start(run_id, metadata, **kwargs)

    @guarded
    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: uuid.UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Capture the run's fields (a completion model's run)."""
        self._start(run_id, metadata, **kwargs)

    @guarded
    def on_llm_end(self, response: LLMResult, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        """Record the request's usage."""
        taken = self._take(run_id)
        if taken is None:
            return
        call, asked = taken
        if asked["provider"] is not None:
            # The chat model's own provider (its ls_provider): langchain-openai's messages say
            # model_provider "openai" for AzureChatOpenAI too, the wire format, not the host.
            call.default(provider=asked["provider"])
        call.tracker.feed(response)
        call.finish(False)

    @guarded
    def on_llm_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        """Record a failure (0 tokens, the model asked for)."""
        taken = self._take(run_id)
        if taken is None:
            return
        call, failed = taken
        call.default(**{k: v for k, v in failed.items() if v})
        call.finish(True)
