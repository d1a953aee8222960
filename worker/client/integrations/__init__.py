"""Drop-in integrations for the frameworks applications call models through, and the registry
by which the client core reads those frameworks' own objects.

Nothing here imports a framework: each `worker.client.integrations.<name>` module imports its
framework when it is itself imported (the hooks) or on its first read (the readers), and none is a
dependency of the client.

## Reading a framework's objects (the contract between the core and the readers)

`call.response(obj)`, `track` and `track_stream` identify an object by its TYPE. An object whose
type's module belongs to a framework (its top package is one of `FRAMEWORKS`) is handed to that
framework's reader, `worker.client.integrations.<module>.read(obj)`, imported lazily:

    def read(obj: Any) -> list[CallUsage] | None

- one `CallUsage` per model request the object holds (a tool loop gives several; each becomes
  one event), each with `model` and `provider` (genai-prices' id) set when the object names them;
- `[]`: an object of this framework that carries no usage (most stream chunks);
- `None`: not an object this reader knows. The call is then recorded unpriced (0 tokens, cost
  NULL) with one warning naming the type, as it is when the module cannot be imported (the
  framework, or the reader, is missing).

A reader maps the framework's usage itself (or hands the provider SDK's own object to
`worker.client.responses.read_usage`); it never lets the core guess from attribute names.

## Streams

The chunks of a framework stream go through the same `read`, one chunk at a time; the stream
object itself is shown first, when it is a framework's own (its reader returns [] for it and
may keep what only the stream knows: LiteLLM's provider). How the
readings of successive chunks combine is the reader module's to say, by an optional
`stream_reader()` returning a `StreamReader` (below); without one, the last chunk that gave a
non-empty reading wins (LiteLLM's streams carry the whole usage in their last chunk). LangChain's
chunks carry deltas to be summed, LlamaIndex's carry the provider's own raw events: their modules
give a `stream_reader()`.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from worker.client.responses import CallUsage

log = logging.getLogger(__name__)

#: Top-level packages of framework types -> the integration module that reads them.
FRAMEWORKS: dict[str, str] = {
    "langchain_core": "langchain",
    "langchain": "langchain",
    "litellm": "litellm",
    "pydantic_ai": "pydantic_ai",
    "agents": "openai_agents",
    "llama_index": "llamaindex",
}

#: What to use instead, per integration module, for the warning about an object not read.
ADVICE: dict[str, str] = {
    "langchain": "worker.client.integrations.langchain.UsageCallbackHandler",
    "litellm": "worker.client.integrations.litellm.UsageLogger",
    "pydantic_ai": "the hook of worker.client.integrations.pydantic_ai",
    "openai_agents": "worker.client.integrations.openai_agents.UsageHooks",
    "llamaindex": "the event handler of worker.client.integrations.llamaindex",
}


class StreamReader(Protocol):
    """Combines the chunks of one framework stream (see the module docstring)."""

    def feed(self, chunk: Any) -> None:
        """Read one chunk; never raises."""

    def usages(self) -> list[CallUsage] | None:
        """The requests read so far (None: nothing read that this reader knows)."""


class LastReading:
    """The default StreamReader: the last chunk with a non-empty reading holds the usage."""

    def __init__(self, module: ModuleType) -> None:
        self._read = module.read
        self._found: list[CallUsage] | None = None

    def feed(self, chunk: Any) -> None:
        found = self._read(chunk)
        if found or self._found is None:
            self._found = found

    def usages(self) -> list[CallUsage] | None:
        return self._found


def framework_of(obj: Any) -> str | None:
    """The integration module that reads `obj`'s type, or None (not a framework's object)."""
    module = type(obj).__module__ or ""
    top = module.partition(".")[0]
    found = FRAMEWORKS.get(top)
    if found is None and top.startswith("langchain_"):  # langchain_openai, langchain_anthropic
        found = "langchain"
    return found


_missing: set[str] = set()


def reader(name: str) -> ModuleType | None:
    """The integration module `name`, imported on first use; None when it cannot be (its
    framework or the module itself missing), which makes its objects unknown ones."""
    if name in _missing:
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except Exception:  # ImportError, or a framework that fails to import: never raise here
        log.debug("no reader %s", name, exc_info=True)
        _missing.add(name)
        return None


def read(obj: Any) -> list[CallUsage] | None:
    """What `obj`'s framework reader says of it (see the module docstring), or None."""
    name = framework_of(obj)
    module = None if name is None else reader(name)
    if module is None:
        return None
    found: list[CallUsage] | None = module.read(obj)
    return found


def stream_reader(name: str) -> StreamReader | None:
    """A StreamReader for a stream of integration `name`'s chunks, or None (no reader)."""
    module = reader(name)
    if module is None:
        return None
    make = getattr(module, "stream_reader", None)
    if callable(make):
        made: StreamReader = make()
        return made
    return LastReading(module)


def advice(name: str | None) -> str:
    """What to use instead of handing the client an object it cannot read."""
    hook = ADVICE.get(name or "")
    if hook is not None:
        return f"use {hook}, or give the usage with call.tokens(...)"
    return (
        "hand the provider SDK's own response (Anthropic, OpenAI, Gemini, Bedrock) to"
        " call.response(...), or give the usage with call.tokens(...)"
    )
