"""Reading the billable usage of one AI call from what the provider's SDK returned.

Every shape is read as an SDK object (pydantic models, read by attribute) or as its dict, in
snake_case or camelCase. A shape is first recognised here (which provider's wire format it
is, and where its usage sits); the usage itself is then mapped by genai-prices'
`extract_usage`, with genai-prices' own extractor for that provider and API flavour, into
genai-prices' convention: `input_tokens` counts every input token, cached or not, and
`cache_read_tokens` / `cache_write_tokens` are parts of it.

| shape | where the usage is |
|---|---|
| Anthropic `Message`, `message_stop` of `messages.stream()` | `usage` |
| Anthropic stream events | `message_start.message.usage`, then `message_delta.usage` |
| OpenAI `ChatCompletion`, the last chunk with `include_usage` | `usage` (flavour chat) |
| OpenAI `Response`, `response.completed` (and other `response.*`) | `[response.]usage` |
| OpenAI embeddings | `usage` (flavour embeddings) |
| Gemini `GenerateContentResponse` (and each stream chunk) | `usage_metadata` |
| Bedrock Converse (a dict), ConverseStream `metadata` event | `usage`, `metadata.usage` |

genai-prices' extractors know whole responses as JSON, so three things are done here first:
SDK objects are dumped to dicts (only their usage part), stream events are unwrapped to the
part its extractors know (`message_start.message`, `response.completed.response`, a
ConverseStream `metadata`), and an Anthropic stream's start and delta usages are merged, as
the SDK's own accumulator merges them (genai-prices has no stream extractors).

A shape is only looked for in objects of a type read here: a provider SDK's own (the top
package of its type's module: anthropic, openai, google) or a dict. Any other type (a
framework's object, say) is not read by shape: worker.client.integrations reads the frameworks'
objects, and anything else is recorded unpriced by the tracker, with a warning.

Nothing here imports an SDK; genai-prices is imported on the first read only (about 200 ms),
never when `worker.client` is imported.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The token fields of an event; every other genai-prices usage key goes to usage_details.
TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(frozen=True, slots=True)
class CallUsage:
    """The billable usage of one AI call, in genai-prices' convention (and the event's)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    #: Further genai-prices usage keys with a non-zero value (cache_write_1h_tokens,
    #: output_reasoning_tokens, input_audio_tokens, web_searches, ...).
    usage_details: Mapping[str, int | float] = field(default_factory=dict)
    #: The model the response names (None when it names none: Bedrock Converse).
    model: str | None = None
    #: genai-prices' id of the provider whose wire format this is (anthropic, openai, google,
    #: aws).
    provider: str | None = None

    def event_fields(self) -> dict[str, Any]:
        """The usage as `UsageClient.record()` keyword arguments."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "usage_details": dict(self.usage_details) or None,
        }


class BadCount(ValueError):
    """A framework's token count that is no count (a negative number, a fraction, a word...):
    the request is recorded unpriced, never with the count guessed (the message names it)."""


def token_count(value: Any, name: str) -> int:
    """`value` as a token count: None is 0; an int, a whole finite float or a string of digits
    (what some instrumentations write) is read as such; anything else raises BadCount naming
    `name`, rather than being read as 0 and the rest of the usage priced without it."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
    elif isinstance(value, float):
        if value >= 0 and value.is_integer():  # False for inf and nan too
            return int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    raise BadCount(f"{name} is {value!r}, not a token count")


@dataclass(slots=True)
class Piece:
    """What one object says about the usage, before genai-prices maps it."""

    provider: str
    flavor: str
    #: The usage part of the object (SDK object, dict, ...), converted only when extracted:
    #: a stream may hand over hundreds of pieces, of which only the last counts.
    usage: Any
    model: str | None
    #: An Anthropic `message_delta`: its counts overwrite those of the `message_start` it
    #: follows (they are cumulative; the ones it leaves out keep the start's values).
    merge: bool = False


@functools.lru_cache(maxsize=1024)
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.lru_cache(maxsize=1024)
def _snake(name: str) -> str:
    # ephemeral5mInputTokens -> ephemeral_5m_input_tokens: digits after a letter start a word
    # too, so that the round trip through camelCase gives back the provider's own names.
    name = re.sub(r"(?<=[a-z])(?=[0-9])", "_", name)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def get(obj: Any, name: str) -> Any:
    """`obj`'s attribute or key `name` (snake_case), or its camelCase spelling, or None."""
    if isinstance(obj, Mapping):
        value = obj.get(name)
        return obj.get(_camel(name)) if value is None and "_" in name else value
    value = getattr(obj, name, None)
    if value is None and "_" in name:
        value = getattr(obj, _camel(name), None)
    return value


def text(value: Any) -> str | None:
    """`value` if it is a non-empty string (a model name), else None."""
    return value if isinstance(value, str) and value else None


#: The provider SDKs whose objects are read here, by the top package of their type's module,
#: and the providers whose shapes each may take. A dict (what boto3 returns, or an SDK object
#: dumped) may be any provider's: its provider-specific keys decide.
SDK_PROVIDERS: dict[str, frozenset[str]] = {
    "anthropic": frozenset({"anthropic"}),
    "openai": frozenset({"openai"}),
    "google": frozenset({"google"}),
    # Vertex AI's own SDK (google-cloud-aiplatform): its GenerationResponse has Gemini's shape.
    "vertexai": frozenset({"google"}),
}
_ANY_PROVIDER = frozenset({"anthropic", "openai", "google", "aws"})


def providers_of(obj: Any) -> frozenset[str] | None:
    """The providers `obj`'s TYPE may be a response of: every one for a dict, the SDK's own
    for a provider SDK's object, None for any other type (read by no shape here: another
    library's object is never taken for a provider's because its attributes look alike)."""
    if isinstance(obj, Mapping):
        return _ANY_PROVIDER
    top = (type(obj).__module__ or "").partition(".")[0]
    return SDK_PROVIDERS.get(top)


def known(obj: Any) -> bool:
    """Whether `obj` is of a type read here (a provider SDK's object or a dict)."""
    return providers_of(obj) is not None


def piece(obj: Any) -> Piece | None:
    """Recognise `obj`'s shape; None when it carries no usage (most stream chunks) or when
    its type is not one read here (see providers_of)."""
    if obj is None or isinstance(obj, str | bytes | int | float):
        return None
    allowed = providers_of(obj)
    if allowed is None:
        return None
    found = _shape(obj)
    # An SDK's object is only ever read as that SDK's provider's response.
    return found if found is None or found.provider in allowed else None


def _shape(obj: Any) -> Piece | None:
    kind = get(obj, "type")
    if kind == "message_start":
        message = get(obj, "message")
        usage = get(message, "usage")
        if usage is None:
            return None
        return Piece("anthropic", "default", usage, text(get(message, "model")))
    if kind == "message_delta":
        usage = get(obj, "usage")
        return None if usage is None else Piece("anthropic", "default", usage, None, merge=True)
    if kind == "chunk" and get(obj, "snapshot") is not None:
        # An event of OpenAI's chat.completions.stream() helper: the raw chunk inside.
        return _shape(get(obj, "chunk"))
    if isinstance(kind, str) and kind.startswith("response."):
        # OpenAI Responses stream events: response.completed (also .incomplete, .failed)
        # carries the whole Response; the earlier ones carry it with usage still null.
        obj = get(obj, "response")
        if obj is None:
            return None
        kind = "response"
    if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), Mapping):
        # A Bedrock ConverseStream event is a one-key dict; `metadata` holds the usage.
        usage = obj["metadata"].get("usage")
        if usage is not None:
            return Piece("aws", "default", usage, None)
    meta = get(obj, "usage_metadata")
    if meta is not None:
        return Piece("google", "default", meta, text(get(obj, "model_version")))
    usage = get(obj, "usage")
    if usage is None:
        return None
    model = text(get(obj, "model"))
    if get(usage, "prompt_tokens") is not None:
        if get(usage, "completion_tokens") is None:
            return Piece("openai", "embeddings", usage, model)
        return Piece("openai", "chat", usage, model)
    if (
        kind == "response"
        or get(obj, "object") == "response"
        or get(usage, "input_tokens_details") is not None
    ):
        return Piece("openai", "responses", usage, model)
    if kind != "message" and _bedrock(obj, usage):
        return Piece("aws", "default", usage, model)
    if get(usage, "input_tokens") is not None:
        return Piece("anthropic", "default", usage, model)
    return None


def _bedrock(obj: Any, usage: Any) -> bool:
    """Whether an input_tokens-shaped usage is Bedrock Converse's (boto3 returns the wire's
    camelCase dict, with no model in it) rather than an Anthropic message's."""
    if get(usage, "cache_write_input_tokens") is not None or get(usage, "cache_details"):
        return True
    if get(obj, "metrics") is not None or get(obj, "output") is not None:
        return True
    return (
        isinstance(usage, Mapping)
        and "inputTokens" in usage
        and "cacheCreationInputTokens" not in usage
    )


def plain(obj: Any) -> Any:
    """`obj` as JSON-like data (dicts, lists, numbers, strings)."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # the SDKs' pydantic models
        try:
            return plain(dump(mode="json", exclude_none=True, warnings=False))
        except TypeError:  # a model_dump of another signature
            return plain(dump())
    value = getattr(obj, "value", None)  # an enum (a Gemini modality, say)
    if isinstance(value, str | int):
        return value
    if hasattr(obj, "__dict__"):
        return {k: plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj


def _recase(data: Any, camel: bool) -> Any:
    if isinstance(data, Mapping):
        name = _camel if camel else _snake
        return {name(k): _recase(v, camel) for k, v in data.items()}
    if isinstance(data, list):
        return [_recase(v, camel) for v in data]
    return data


def merged(start: Any, delta: Any) -> dict[str, Any]:
    """An Anthropic message_start usage updated by a message_delta usage (as the SDK's own
    accumulator does: the delta's counts are cumulative, those it omits keep their value)."""
    base = _recase(plain(start), camel=False)
    update = _recase(plain(delta), camel=False)
    base.update({k: v for k, v in update.items() if v is not None})
    return dict(base)


def extract(p: Piece) -> CallUsage:
    """Map a piece's usage with genai-prices' extractor. Raises ValueError when the usage is
    not what the extractor needs (a required count missing)."""
    from genai_prices import extract_usage

    # genai-prices' Google and AWS extractors read the wire's camelCase, the others snake_case.
    camel = p.provider in ("google", "aws")
    usage = _recase(plain(p.usage), camel)
    root = "usageMetadata" if p.provider == "google" else "usage"
    # The model is left out on purpose: given one, genai-prices looks it up and raises
    # LookupError for a model it has no price for, and such a call must still be recorded
    # (the worker stores it unpriced). The model is read from the response by `piece`.
    found = extract_usage({root: usage}, provider_id=p.provider, api_flavor=p.flavor).usage
    # genai-prices' Usage keeps the reported values as its instance attributes (its
    # attribute access would infer the missing ones instead).
    values = {k: v for k, v in vars(found).items() if isinstance(v, int | float) and v}
    return CallUsage(
        input_tokens=int(values.pop("input_tokens", 0)),
        output_tokens=int(values.pop("output_tokens", 0)),
        cache_read_tokens=int(values.pop("cache_read_tokens", 0)),
        cache_write_tokens=int(values.pop("cache_write_tokens", 0)),
        usage_details=values,
        model=p.model,
        provider=p.provider,
    )


def read_usage(response: Any) -> CallUsage | None:
    """The usage of one SDK response (or stream event) in genai-prices' convention, or None
    when it carries none that can be read. Never raises for an unknown shape."""
    found = piece(response)
    if found is None:
        return None
    try:
        return extract(found)
    except ValueError:
        return None
