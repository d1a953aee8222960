"""LlamaIndex: its responses read exactly, and an instrumentation event handler that records
every LLM call.

    from llama_index.core.instrumentation import get_dispatcher
    from worker.client.integrations.llamaindex import UsageEventHandler

    get_dispatcher().add_event_handler(UsageEventHandler(usage, operation="rag-answer"))
    with instrument_tags({"tenant_id": tenant}):
        llm.chat(messages)

The handler records one event per `LLMChatEndEvent` / `LLMCompletionEndEvent` (every chat,
complete and stream of every LLM, also those an agent or a query engine makes), with the event
fields from `instrument_tags({...})` (a ContextVar that reaches the handler as `event.tags`) over
the defaults.

Mapping: a LlamaIndex response's `raw` is the provider SDK's own object (OpenAI's
`ChatCompletion` or chunk; the Anthropic `Message` or stream event as a dict), read by the
client's own provider readers (`worker.client.responses`), which map it with genai-prices'
extractor for that provider: nothing of LlamaIndex's token counts (`additional_kwargs`, the
legacy `TokenCountingHandler`) is used, as they carry no cache. A stream is read chunk by chunk
(its `LLM*InProgressEvent`s): OpenAI's usage comes in its last chunk when the LLM is given
`additional_kwargs={"stream_options": {"include_usage": True}}`; an Anthropic stream's in its
`message_delta` alone, LlamaIndex keeping the `message_start` to itself: exact when the delta
repeats the whole usage (as the API does now), its cache writes taken as 5-minute ones when the
delta carries no `cache_creation` split. Such a stream names no model: the handler takes the
LLM's own `model` (from the start event); `track_stream` needs `model=` (else the row is stored
unpriced, with a warning saying so).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
    LLMCompletionStartEvent,
)
from pydantic import PrivateAttr

from worker.client.integrations._shared import record, remember
from worker.client.responses import CallUsage
from worker.client.tracker import UsageTracker

if TYPE_CHECKING:
    from worker.client.publisher import UsageClient

__all__ = ["UsageEventHandler", "read", "stream_reader"]


class LlamaStream:
    """Reads one LLM call's responses (a whole one, or a stream's chunks) through the provider
    SDK objects in their `raw`: the client's UsageTracker merges a stream's pieces."""

    def __init__(self) -> None:
        self._tracker = UsageTracker()
        self._seen = False

    def feed(self, chunk: Any) -> None:
        """Read one response or chunk; never raises."""
        if isinstance(chunk, ChatResponse | CompletionResponse):
            self._seen = True
            if chunk.raw is not None:
                self._tracker.feed(chunk.raw)

    def usages(self) -> list[CallUsage] | None:
        """The call's usage ([] if its responses carried none); None: no response seen."""
        return self._tracker.requests() if self._seen else None

    @property
    def model(self) -> str | None:
        """The model the responses named, if any."""
        return self._tracker.model


def stream_reader() -> LlamaStream:
    """The StreamReader for a LlamaIndex stream (see worker.client.integrations)."""
    return LlamaStream()


def read(obj: Any) -> list[CallUsage] | None:
    """A LlamaIndex `ChatResponse` / `CompletionResponse` (or an end event holding one) read
    through its `raw`; None for an object this reader does not know."""
    if isinstance(obj, LLMChatEndEvent | LLMCompletionEndEvent):
        obj = obj.response
    if not isinstance(obj, ChatResponse | CompletionResponse):
        return [] if isinstance(obj, BaseEvent) else None
    one = LlamaStream()
    one.feed(obj)
    return one.usages()


class UsageEventHandler(BaseEventHandler):
    """Records one usage event per LLM call (`get_dispatcher().add_event_handler(...)`).

    Event fields come from `instrument_tags({...})` around the call, over the `defaults`; fields
    given win over what is read (model=, provider=). Recording never raises into the call.
    """

    _usage: Any = PrivateAttr()
    _defaults: dict[str, Any] = PrivateAttr()
    #: Open calls by span id: (started, the LLM's own model name, the stream read so far).
    _open: dict[str, tuple[float, str | None, LlamaStream]] = PrivateAttr()

    def __init__(self, usage: UsageClient, **defaults: Any) -> None:
        super().__init__()
        self._usage = usage
        self._defaults = defaults
        self._open = {}

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this handler."""
        return "AiUsageEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Read the LLM events; every other event is ignored."""
        key = event.span_id or ""
        if isinstance(event, LLMChatStartEvent | LLMCompletionStartEvent):
            named = event.model_dict.get("model") or event.model_dict.get("model_name")
            model = named if isinstance(named, str) and named else None
            # A call that fails before streaming sends no end event: remember() bounds them.
            remember(self._open, key, (time.monotonic(), model, LlamaStream()))
        elif isinstance(event, LLMChatInProgressEvent | LLMCompletionInProgressEvent):
            if key in self._open:
                self._open[key][2].feed(event.response)
        elif isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
            self._end(key, event, event.response)
        elif isinstance(event, ExceptionEvent) and key in self._open:
            self._end(key, event, None)  # a stream broken midway: a failure, with what it read

    def _end(self, key: str, event: BaseEvent, response: Any) -> None:
        started, model, stream = self._open.pop(key, (None, None, LlamaStream()))
        if stream.usages() is None and response is not None:
            stream.feed(response)  # not streamed: the whole response
        read = stream.usages()
        found = read[-1] if read else None
        fields = {**self._defaults, **event.tags}
        if "model" not in fields and model is not None and (found is None or found.model is None):
            fields["model"] = model
        took = None if started is None else int((time.monotonic() - started) * 1000)
        failed = isinstance(event, ExceptionEvent)
        record(self._usage, found, fields, failed=failed, duration_ms=took, what=_WHAT)


_WHAT = "a LlamaIndex LLM response"
