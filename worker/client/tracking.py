"""Timing AI calls and reading their usage: the client's `track_usage`, `track` and
`track_stream`, sync and async.

The usage is read from the SDK's response (worker.client.responses); a stream is passed
through and read as it goes by (worker.client.streams). Once the AI call has succeeded,
nothing here raises into the application: a usage that cannot be read is recorded as 0
tokens (the worker stores such a call unpriced, cost NULL, never $0) with one warning per
response type, and a failure to record is logged.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from worker.client import fast, integrations
from worker.client.errors import InvalidEvent
from worker.client.responses import CallUsage, read_usage
from worker.client.streams import Kind as StreamKind
from worker.client.streams import stream_kind, wrap
from worker.client.tracker import UsageTracker, type_name, warn_once

__all__ = ["TrackedCall", "TrackingMixin", "UsageTracker", "extract_usage"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Fields that, given to track_usage / track / track_stream, replace the response's usage.
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "usage_details",
)
#: The model of a call whose response names none and for which none was given.
UNKNOWN_MODEL = "unknown"


def _check(fields: dict[str, Any]) -> None:
    """Raise InvalidEvent (naming the field) for bad fields, before the AI call is made."""
    probe = {"model": "probe", "input_tokens": 0, "output_tokens": 0, **fields}
    probe.setdefault("id", uuid.uuid4())
    now = dt.datetime.now(dt.UTC)
    probe.setdefault("created_at", now)
    if fast.from_fields(probe, now) is None:
        from worker.client.events import parse_event  # the schema names the field

        parse_event(probe, now)


class TrackedCall:
    """What `track_usage` returns: a context manager for `with` and `async with` alike,
    giving the call's UsageTracker; the call is recorded when the block ends."""

    def __init__(self, record: Callable[..., uuid.UUID], fields: dict[str, Any]) -> None:
        self.tracker = UsageTracker()
        self._record = record
        self._fields = fields
        self._started = time.perf_counter()

    def start(self, check: bool = True) -> UsageTracker:
        """Check the fields (InvalidEvent names a bad one) and start the clock."""
        if check:
            _check(self._fields)
        self._started = time.perf_counter()
        return self.tracker

    def default(self, **fields: Any) -> None:
        """Set fields the call was not given (an integration's fallback model, say)."""
        for key, value in fields.items():
            self._fields.setdefault(key, value)

    def __enter__(self) -> UsageTracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.finish(exc_type is not None)

    async def __aenter__(self) -> UsageTracker:
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.finish(exc_type is not None)

    def finish(self, failed: bool, what: str | None = None) -> None:
        """Record the call (one event per model request read); logs, never raises."""
        what = what or self.tracker.describe()
        try:
            for values in self._events(failed, what):
                self._recorded(values, what)
        except Exception:
            log.exception("could not record the usage of an AI call (%s)", self._fields)

    def _recorded(self, values: dict[str, Any], what: str) -> None:
        """Record one event; usage the event refuses (a reader's negative or oversized count, a
        cache larger than the input) is recorded unpriced, with a warning naming the field,
        rather than dropped: the call happened."""
        try:
            self._record(**values)
        except InvalidEvent as exc:
            field = exc.field or ""
            if field.partition(".")[0] not in (*USAGE_FIELDS, "total_tokens"):
                raise
            warn_once(
                f"bad-usage:{what}:{field}",
                "the usage read from the %s is not valid (%s): recorded with 0 tokens, which"
                " the worker stores unpriced (cost NULL)",
                what,
                exc,
            )
            for key in (*USAGE_FIELDS, "total_tokens"):
                values.pop(key, None)
            self._record(**values, input_tokens=0, output_tokens=0)

    def _events(self, failed: bool, what: str) -> list[dict[str, Any]]:
        values = {k: v for k, v in self._fields.items() if v is not None}
        values.setdefault("duration_ms", int((time.perf_counter() - self._started) * 1000))
        values["success"] = "failure" if failed else values.get("success", "success")
        if any(key in values for key in USAGE_FIELDS):
            return [self._named(values, None, failed, what)]
        found = self.tracker.requests()
        if not found:
            values.update(input_tokens=0, output_tokens=0)
            if not failed:
                self._warn_unread(what)
            return [self._named(values, None, failed, what)]
        events = []
        for n, request in enumerate(found):
            event = dict(values)
            if n:
                # A multi-request run (a tool loop): one event per request. The call's
                # duration is the first's (the requests' own are not known); ids derived
                # from a given id stay stable across retries of the same record.
                event.pop("duration_ms", None)
                if "id" in event:
                    event["id"] = uuid.uuid5(uuid.UUID(str(event["id"])), f"request-{n}")
            event.update(request.event_fields())
            events.append(self._named(event, request, failed, what))
        return events

    def _warn_unread(self, what: str) -> None:
        unknown = self.tracker.unknown
        if unknown is not None:
            warn_once(
                f"unread:{unknown}",
                "no usage could be read from the %s: a %s is not a response the client reads;"
                " recorded with 0 tokens, which the worker stores unpriced (cost NULL, never"
                " $0); %s",
                what,
                unknown,
                integrations.advice(self.tracker.framework),
            )
            return
        hint = (
            "; stream with stream_options={'include_usage': True}"
            if "ChatCompletionChunk" in what or "ModelResponseStream" in what
            else ""
        )
        warn_once(
            f"unread:{what}",
            "no usage could be read from the %s: recorded with 0 tokens, which the"
            " worker stores unpriced (cost NULL, never $0); give the usage with"
            " call.tokens(...)%s",
            what,
            hint,
        )

    def _named(
        self, values: dict[str, Any], request: CallUsage | None, failed: bool, what: str
    ) -> dict[str, Any]:
        """`values` with the model and provider: the fields', else the request's, else the
        responses'."""
        model = request.model if request is not None else None
        provider = request.provider if request is not None else None
        if "model" not in values:
            values["model"] = model or self.tracker.model or UNKNOWN_MODEL
            if values["model"] == UNKNOWN_MODEL and not failed:
                warn_once(
                    f"model:{what}",
                    "no model given and none named by the %s: recorded as model %r (unpriced);"
                    " pass model=...",
                    what,
                    UNKNOWN_MODEL,
                )
        if "provider" not in values:
            provider = provider or self.tracker.provider
            if provider is not None:
                values["provider"] = provider
        return values


class TrackingMixin:
    """`track_usage`, `track` and `track_stream` for a class with a `record(**fields)`."""

    record: Callable[..., uuid.UUID]  # provided by the client

    def track_usage(self, **fields: Any) -> TrackedCall:
        """Time an AI call and record it when the block ends (`with` or `async with`);
        records `success="failure"` if the block raises. Bad fields raise InvalidEvent here,
        before the AI call.

        with usage.track_usage(tenant_id=t, operation="summarise") as call:
            call.response(openai_client.chat.completions.create(...))
        """
        return TrackedCall(self.record, fields)

    def track_stream(self, stream: T, **fields: Any) -> T:
        """Pass a stream through unchanged and record its usage when it ends: exhausted,
        closed, or broken by an exception (then `success="failure"` with the usage seen).

        for chunk in usage.track_stream(client.chat.completions.create(stream=True, ...),
                                        tenant_id=t, operation="chat"):
        async for chunk in usage.track_stream(async_client.chat.completions.create(...), ...):
        with usage.track_stream(client.messages.stream(...), ...) as stream:   # SDK managers

        Sync and async iterables, awaitables of async ones (AsyncOpenAI's create coroutine,
        Gemini's client.aio generate_content_stream), SDK stream managers and boto3's
        converse_stream() result are accepted. Something else is read as a whole response,
        recorded at once and returned as is."""
        call = TrackedCall(self.record, fields)
        call.start(check=False)  # the AI call is made: bad fields are logged, not raised
        kind = stream_kind(stream)
        if kind is None:
            warn_once(
                f"notstream:{type_name(stream)}",
                "track_stream got a %s, not a stream: read as a whole response",
                type_name(stream),
            )
            call.tracker.feed(stream)
            call.finish(False)
            return stream
        return cast(T, _wrapped(call, stream, kind))

    def track(self, **fields: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator form of track_usage: the function's return value is read as the
        response. An `async def` is awaited first. A returned stream is passed back wrapped,
        recorded when it ends, as with track_stream."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                    call = TrackedCall(self.record, fields)
                    call.start()
                    return _returned(call, await _guarded(call, func(*args, **kwargs)))

                return cast(Callable[P, R], run_async)

            @functools.wraps(func)
            def run(*args: P.args, **kwargs: P.kwargs) -> R:
                call = TrackedCall(self.record, fields)
                call.start()
                try:
                    result = func(*args, **kwargs)
                except BaseException:
                    call.finish(True)
                    raise
                if stream_kind(result) == "awaitable":
                    # A plain function handing back a coroutine: read what it resolves to.
                    awaitable = cast(Awaitable[Any], result)

                    async def later() -> Any:
                        return _returned(call, await _guarded(call, awaitable))

                    return cast(R, later())
                return cast(R, _returned(call, result))

            return run

        return decorate


async def _guarded(call: TrackedCall, awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except BaseException:
        call.finish(True)
        raise


def _returned(call: TrackedCall, result: Any) -> Any:
    kind = stream_kind(result)
    if kind is not None and kind != "awaitable":
        return _wrapped(call, result, kind)
    call.tracker.feed(result)
    call.finish(False)
    return result


def _wrapped(call: TrackedCall, stream: Any, kind: StreamKind) -> Any:
    """`stream` passed through, the call recorded when it ends."""
    name = type_name(stream)
    call.tracker.opened(stream)

    def on_end(failed: bool) -> None:
        call.finish(failed, f"{name} stream of {call.tracker.describe()}")

    return wrap(stream, kind, call.tracker, on_end)


def extract_usage(response: Any) -> tuple[int, int] | None:
    """(input, output) tokens of an SDK response, or None when it carries no usage.

    Kept for compatibility; `worker.client.read_usage` gives the whole usage (cache tokens,
    details, model, provider). `input` counts every input token, cached or not
    (genai-prices' convention): for an Anthropic response with cache reads or writes that is
    more than its `usage.input_tokens`."""
    found = read_usage(response)
    return None if found is None else (found.input_tokens, found.output_tokens)
