"""One AI call's usage as it is read: what `call` is in `with usage.track_usage(...) as call`,
and what the stream wrappers show every chunk to.

Readings are cheap and lazy: each object is only recognised (worker.client.responses.piece);
genai-prices maps the last one when the usage is asked for, once.

Objects are told apart by their type: a provider SDK's object or a dict is read by shape
(worker.client.responses), a framework's object by that framework's reader
(worker.client.integrations, one reading per model request), and any other type is not read
at all: the call is recorded unpriced, with a warning naming the type (never a provider or a
cost guessed from attribute names).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar, cast

from worker.client import integrations
from worker.client.responses import (
    BadCount,
    CallUsage,
    Piece,
    extract,
    get,
    known,
    merged,
    piece,
    text,
)
from worker.client.streams import stream_kind, wrap
from worker.textsafe import visible

log = logging.getLogger(__name__)

T = TypeVar("T")

_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log `message` as a warning the first time `key` is seen in this process."""
    # Once per response type, not per call: an application in a loop would flood its log.
    if key not in _warned:
        _warned.add(key)
        # These lines go to the host application's log, through its own formatter (not
        # worker.logs): a value quoted from a response (a type's name, an error quoting a field)
        # is shown by the rule for untrusted text here, so it cannot end the line or send
        # escapes to the application's terminal. worker.textsafe imports the standard library
        # only, as the client must.
        log.warning("%s", visible(message % args))


def type_name(obj: Any) -> str:
    """`obj`'s type as module.Name, for log lines."""
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


class UsageTracker:
    """Collects the usage of one AI call: `call` in `with usage.track_usage(...) as call`."""

    def __init__(self) -> None:
        self._piece: Piece | None = None
        self._read: CallUsage | None = None
        self._manual: CallUsage | None = None
        self._seen: dict[str, None] = {}  # types given, in order (a set that keeps order)
        self._model: str | None = None  # named by a piece without usage
        #: The framework whose objects were given (its integration module's name), and the
        #: reader combining them (None: no reader could be imported).
        self._framework: str | None = None
        self._stream: integrations.StreamReader | None = None
        self._framework_type: str | None = None
        #: The first object given of a type no reader knows (for the warning).
        self._unknown: str | None = None
        #: A framework object whose counts are no counts was given: the call is unpriced.
        self._bad = False

    def response(self, response: T) -> T:
        """Read the usage and model of an SDK response, stream event or chunk (Anthropic,
        OpenAI, Gemini, Bedrock; objects or dicts) and return it. Called once per event of a
        stream, it keeps the usage of the stream so far. A whole stream is returned wrapped:
        iterate the wrapper, and its usage is read as it goes by."""
        kind = stream_kind(response)
        if kind is not None and kind != "awaitable":
            self.opened(response)
            return cast(T, wrap(response, kind, self, None))
        self.feed(response)
        return response

    def feed(self, item: Any) -> None:
        """Read one response, event or chunk (or a list of them: a framework's conversation,
        each of its model responses a request); never raises."""
        if isinstance(item, list | tuple):
            for each in item:
                self.feed(each)
            return
        if len(self._seen) < 4:
            self._seen[type_name(item)] = None
        if item is None or isinstance(item, str | bytes | int | float):
            return  # a text stream's pieces: nothing to read, nothing unknown
        name = integrations.framework_of(item)
        if name is not None:
            self._feed_framework(name, item)
            return
        if not known(item):
            self._unknown = self._unknown or type_name(item)
            return
        try:
            found = piece(item)
            if found is None and self._model is None:
                # A chunk without usage may still name the model (OpenAI chat chunks do).
                self._model = text(get(item, "model")) or text(get(item, "model_version"))
        except Exception:  # an object whose attributes raise: not a response
            log.debug("could not inspect a %s", type_name(item), exc_info=True)
            return
        if found is None:
            return
        if found.merge and self._piece is not None and self._piece.provider == "anthropic":
            # message_delta after message_start: the start's model, the counts merged.
            found = Piece(
                "anthropic", "default", merged(self._piece.usage, found.usage), self._piece.model
            )
        self._piece, self._read = found, None

    def opened(self, stream: Any) -> None:
        """Show a framework's stream object itself to its reader before its chunks (it may
        know what they do not: LiteLLM's provider); nothing for an SDK's stream."""
        try:
            name = integrations.framework_of(stream)
            if name is not None:
                self._feed_framework(name, stream)
        except Exception:  # never into the application
            log.debug("could not inspect a %s", type_name(stream), exc_info=True)

    def _feed_framework(self, name: str, item: Any) -> None:
        try:
            if self._stream is None or self._framework != name:
                self._framework, self._framework_type = name, type_name(item)
                self._stream = integrations.stream_reader(name)
            if self._stream is None:
                self._unknown = self._unknown or type_name(item)
                return
            self._stream.feed(item)
        except BadCount as exc:
            # The object is known but its usage is not a usage: unpriced, whatever else comes.
            warn_once(
                f"bad-count:{type_name(item)}:{exc}",
                "the usage of a %s is not valid (%s): recorded with 0 tokens, which the worker"
                " stores unpriced (cost NULL)",
                type_name(item),
                exc,
            )
            self._bad = True
        except Exception:  # a reader's bug is not the application's
            log.debug("could not read a %s", type_name(item), exc_info=True)
            self._unknown = self._unknown or type_name(item)

    def requests(self) -> list[CallUsage]:
        """The usage of each model request read so far: one for an SDK response (or usage set
        by hand), one per request of a framework's multi-request run; [] when none was read."""
        if self._manual is not None:
            return [self._manual]
        if self._bad:
            return []
        if self._stream is not None:
            try:
                found = self._stream.usages()
            except Exception:
                log.debug("could not read a %s", self.describe(), exc_info=True)
                found = None
            if found:
                return list(found)
        read = self._sdk_usage()
        return [] if read is None else [read]

    @property
    def unknown(self) -> str | None:
        """The type of the first object given that no reader knows, if any: one of no known
        type, or a framework's whose reader is missing or knew none of what it was given."""
        if self._bad:
            return None  # known, and warned about as such
        if self._unknown is None and self._stream is not None:
            try:
                known_any = self._stream.usages() is not None
            except Exception:
                known_any = False
            if not known_any:
                return self._framework_type
        return self._unknown

    @property
    def framework(self) -> str | None:
        """The integration module whose framework's objects were given, if any."""
        return self._framework

    def tokens(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        usage_details: dict[str, int | float] | None = None,
    ) -> None:
        """Set the usage by hand (genai-prices' convention: input counts the cache too)."""
        self._manual = CallUsage(
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, usage_details or {}
        )

    def usage(self) -> CallUsage | None:
        """The usage read so far (or set by hand), or None; the requests of a framework's
        multi-request run summed (see requests() for each)."""
        found = self.requests()
        if not found:
            return None
        return found[0] if len(found) == 1 else summed(found)

    def _sdk_usage(self) -> CallUsage | None:
        if self._piece is not None and self._read is None:
            try:
                self._read = extract(self._piece)
            except Exception as exc:
                warn_once(
                    f"extract:{self.describe()}",
                    "could not read the usage of a %s: %s",
                    self.describe(),
                    exc,
                )
                self._model = self._piece.model or self._model
                self._piece = None
        return self._read

    @property
    def input_tokens(self) -> int | None:
        """Input tokens read so far, cached ones included (None: none read)."""
        found = self.usage()
        return None if found is None else found.input_tokens

    @property
    def output_tokens(self) -> int | None:
        """Output tokens read so far (None: none read)."""
        found = self.usage()
        return None if found is None else found.output_tokens

    @property
    def model(self) -> str | None:
        """The model named by the responses read so far."""
        if self._stream is not None:
            found = self.usage()
            if found is not None and found.model is not None:
                return found.model
        if self._piece is not None and self._piece.model is not None:
            return self._piece.model
        return self._model

    @property
    def provider(self) -> str | None:
        """genai-prices' id of the provider whose response was read."""
        if self._stream is not None:
            found = self.usage()
            if found is not None:
                return found.provider
        return None if self._piece is None else self._piece.provider

    def describe(self) -> str:
        """The types given so far, for log lines."""
        return " / ".join(self._seen) or "call with no response given"


def summed(found: list[CallUsage]) -> CallUsage:
    """Several requests' usage as one (the model and provider kept only if all share them)."""
    details: dict[str, int | float] = {}
    for one in found:
        for key, value in one.usage_details.items():
            details[key] = details.get(key, 0) + value
    models = {one.model for one in found}
    providers = {one.provider for one in found}
    return CallUsage(
        input_tokens=sum(one.input_tokens for one in found),
        output_tokens=sum(one.output_tokens for one in found),
        cache_read_tokens=sum(one.cache_read_tokens for one in found),
        cache_write_tokens=sum(one.cache_write_tokens for one in found),
        usage_details=details,
        model=models.pop() if len(models) == 1 else None,
        provider=providers.pop() if len(providers) == 1 else None,
    )
