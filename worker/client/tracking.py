"""Timing AI calls and reading their token counts, for the client's `track_usage` / `track`.

Token counts are read from response objects without importing the SDKs:
Anthropic and OpenAI Responses (`usage.input_tokens` / `usage.output_tokens`) and OpenAI chat
completions (`usage.prompt_tokens` / `usage.completion_tokens`).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class TrackingMixin:
    """`track_usage` and `track` for a class with a `record(**fields)` method."""

    record: Callable[..., uuid.UUID]  # provided by the client

    @contextmanager
    def track_usage(self, **fields: Any) -> Iterator[UsageTracker]:
        """Time an AI call and record it; records `success="failure"` if the block raises.

        with usage.track_usage(tenant_id=t, operation="summarise", model="gpt-4o") as call:
            response = openai_client.chat.completions.create(...)
            call.response(response)
        """
        tracker = UsageTracker()
        started = time.perf_counter()
        try:
            yield tracker
        except BaseException:
            self._record_tracked(fields, tracker, started, failed=True)
            raise
        self._record_tracked(fields, tracker, started, failed=False)

    def track(self, **fields: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator form of track_usage: the function's return value is read as the response."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.track_usage(**fields) as call:
                    result = func(*args, **kwargs)
                    call.response(result)
                    return result

            return wrapper

        return decorate

    def _record_tracked(
        self, fields: dict[str, Any], tracker: UsageTracker, started: float, *, failed: bool
    ) -> None:
        values = dict(fields)
        values.setdefault("duration_ms", int((time.perf_counter() - started) * 1000))
        values.setdefault("input_tokens", tracker.input_tokens or 0)
        values.setdefault("output_tokens", tracker.output_tokens or 0)
        if "model" not in values and tracker.model:
            values["model"] = tracker.model
        values["success"] = "failure" if failed else values.get("success", "success")
        if failed:
            try:
                self.record(**values)
            except Exception:  # never mask the application's own exception
                log.exception("could not record the failed AI call")
        else:
            self.record(**values)


class UsageTracker:
    """Collects token counts inside `track_usage`."""

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.model: str | None = None

    def response(self, response: Any) -> None:
        """Read token counts (and model) from an Anthropic or OpenAI response object or dict."""
        tokens = extract_usage(response)
        if tokens is not None:
            self.input_tokens, self.output_tokens = tokens
        model = _get(response, "model")
        if isinstance(model, str):
            self.model = model

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        """Set the token counts by hand."""
        self.input_tokens, self.output_tokens = input_tokens, output_tokens


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def extract_usage(response: Any) -> tuple[int, int] | None:
    """(input, output) tokens of an SDK response, without importing the SDK.

    Anthropic and OpenAI Responses: usage.input_tokens / usage.output_tokens.
    OpenAI chat completions: usage.prompt_tokens / usage.completion_tokens."""
    usage = _get(response, "usage")
    if usage is None:
        return None
    for inp, out in (("input_tokens", "output_tokens"), ("prompt_tokens", "completion_tokens")):
        i, o = _get(usage, inp), _get(usage, out)
        if isinstance(i, int) and isinstance(o, int):
            return i, o
    return None
