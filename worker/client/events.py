"""The usage event: one AI call, as producers send it. This schema is the public contract
(docs/recording/events.md) and the judge of every event: the client validates at the call site
and the worker again before writing, both through its fast path (worker.client.fast), which
takes only what this model would take with the same values and hands it everything else."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.client.errors import InvalidEvent
from worker.client.limits import FUTURE_TOLERANCE, INT_MAX, MAX_USAGE_DETAILS, TOKEN_FIELDS

Count = Annotated[StrictInt, Field(ge=0, le=INT_MAX)]
Label = Annotated[str, Field(min_length=1, max_length=100)]
#: A usage dimension beyond the token fields: a genai-prices usage key (cache_write_1h_tokens,
#: input_audio_tokens, web_searches, ...). Token counts are integers; other units (seconds,
#: characters, ...) may be fractional.
DetailKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
DetailValue = Annotated[StrictInt | StrictFloat, Field(ge=0, le=1e12, allow_inf_nan=False)]


def _check_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a lone surrogate cannot be encoded to UTF-8. Both would
    # fail the whole INSERT, so they are refused here, naming the field.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


class UsageEvent(BaseModel):
    """One AI API call. See docs/recording/events.md for the rules of each field."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID | None = None
    assessment_id: uuid.UUID | None = None
    lead_id: uuid.UUID | None = None
    operation: Label
    model: Label
    provider: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    input_tokens: Count
    output_tokens: Count
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    usage_details: dict[DetailKey, DetailValue] | None = None
    total_tokens: Count | None = None
    cost_usd: (
        Annotated[StrictFloat | StrictInt, Field(ge=0, allow_inf_nan=False, le=1e12)] | None
    ) = None
    duration_ms: Count | None = None
    success: Literal["success", "failure"] = "success"
    created_at: dt.datetime

    @field_validator("operation", "model", "provider")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value)

    @field_validator("success", mode="before")
    @classmethod
    def _success(cls, value: Any) -> Any:
        if value is True:
            return "success"
        if value is False:
            return "failure"
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _created_at_is_a_time(cls, value: Any) -> Any:
        # pydantic would read a number as Unix seconds or milliseconds, by a guess on its size:
        # a producer's mistake (0, a token count, a duration) would land silently in some
        # other month's bill. The contract is ISO-8601.
        if isinstance(value, int | float):
            raise ValueError("must be an ISO-8601 date-time string, not a number")
        return value

    @field_validator("created_at")
    @classmethod
    def _created_at(cls, value: dt.datetime, info: ValidationInfo) -> dt.datetime:
        utc = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        # A batch passes its clock reading in the context: one now() per batch, not per event.
        now = info.context["now"] if info.context else dt.datetime.now(dt.UTC)
        if utc > now + FUTURE_TOLERANCE:
            raise ValueError("is more than 5 minutes in the future")
        return utc

    @field_validator("usage_details")
    @classmethod
    def _details(cls, value: dict[str, int | float] | None) -> dict[str, int | float] | None:
        if not value:
            return None
        if len(value) > MAX_USAGE_DETAILS:
            raise ValueError(f"at most {MAX_USAGE_DETAILS} keys, got {len(value)}")
        for key, number in value.items():
            if key in TOKEN_FIELDS:
                raise ValueError(f"{key} is a field of its own, not a usage detail")
            if key.endswith("_tokens") and not isinstance(number, int):
                raise ValueError(f"{key} must be a whole number of tokens, got {number!r}")
        return value

    @model_validator(mode="after")
    def _totals(self) -> UsageEvent:
        cached = self.cache_read_tokens + self.cache_write_tokens
        if cached > self.input_tokens:
            raise ValueError(
                f"input_tokens: {self.input_tokens} is less than cache_read_tokens +"
                f" cache_write_tokens ({cached}); input_tokens counts every input token, cached"
                " or not (Anthropic's and Bedrock's input counts leave the cache out: add it)"
            )
        if self.usage_details:
            split = sum(
                int(self.usage_details.get(k, 0))
                for k in ("cache_write_5m_tokens", "cache_write_1h_tokens")
            )
            if split > self.cache_write_tokens:
                raise ValueError(
                    f"usage_details: cache_write_5m_tokens + cache_write_1h_tokens ({split})"
                    f" exceed cache_write_tokens ({self.cache_write_tokens}), which counts every"
                    " cache write"
                )
        least = self.input_tokens + self.output_tokens
        if self.total_tokens is None:
            if least > INT_MAX:
                raise ValueError("total_tokens: input_tokens + output_tokens exceeds INTEGER")
            object.__setattr__(self, "total_tokens", least)
        elif self.total_tokens < least:
            raise ValueError(
                f"total_tokens: {self.total_tokens} is less than input_tokens + output_tokens"
                f" ({least})"
            )
        return self

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready form carried in Celery messages."""
        return self.model_dump(mode="json", exclude_none=True)


def _describe(error: ValidationError) -> tuple[str, str]:
    first = error.errors(include_url=False)[0]
    # The top-level field only: a union's member (`cost_usd.float`) is not a field.
    loc = str(first["loc"][0]) if first["loc"] else ""
    msg = first["msg"]
    if not loc and first["type"] == "string_unicode":  # a field name that is not valid Unicode
        return "event", f"field name {first['input']!a} is not valid Unicode"
    if not loc:
        # Model-level checks put the field name in front of their message ("total_tokens: ...").
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        loc, _, rest = msg.partition(": ")
        return loc, rest or msg
    if loc == "usage_details" and len(first["loc"]) > 1:
        # A key or a value of the map: say which.
        msg = f"{first['loc'][1]!s}: {msg}"
    if first["type"] == "extra_forbidden":
        msg = "is not a known field"
    elif first["type"] == "missing":
        msg = "is required"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return loc, msg


def parse_event(data: Any, now: dt.datetime | None = None) -> UsageEvent:
    """Validate one event (a mapping, as decoded from JSON); `now` is the clock reading the
    future-timestamp rule compares with (default: the current time).

    Raises InvalidEvent whose message starts with the offending field's name."""
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"event: expected a JSON object, got {type(data).__name__}", field=None)
    try:
        return UsageEvent.model_validate(data, context={"now": now} if now else None)
    except ValidationError as exc:
        field, msg = _describe(exc)
        raise InvalidEvent(f"{field}: {msg}", field=field) from None
