"""The CPU half of a write: validate, price and render a batch of events as COPY text.

Every event of a batch ends as a row to store, a dead letter (invalid, or priced as
impossible by genai-prices), or a duplicate of an earlier event of the same batch (a
conflicting one, with other content under the same id, is a dead letter). Touches no database.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from worker.client import fast
from worker.client.errors import InvalidEvent
from worker.client.events import UsageEvent, parse_event
from worker.ledger.pricing import Pricer, PricingError, Usage, usage_keys

log = logging.getLogger(__name__)

#: The columns a row's COPY line holds, in order (the spec's, then revision e5f6a7b8c9d0's).
COLUMNS = (
    "id",
    "tenant_id",
    "user_id",
    "operation",
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "assessment_id",
    "lead_id",
    "duration_ms",
    "success",
    "created_at",
    "cache_read_tokens",
    "cache_write_tokens",
    "usage_details",
    "provider",
    "cost_usd",
    "fingerprint",
)
CONFLICT = "conflicting duplicate"
#: A validated event: the fast path's struct or the schema's model (the same attributes).
Event = fast.FastEvent | UsageEvent


@dataclass
class DeadLetter:
    """An event that could not be stored, and why."""

    payload: Any
    error: str
    field: str | None = None
    event_id: uuid.UUID | None = None
    #: Set for a conflicting duplicate: each distinct content sent under one id is kept.
    fingerprint: bytes | None = None


@dataclass
class MalformedMessage:
    """Stands in a batch for a message whose shape is wrong (not for one bad event): it is
    dead-lettered with `error`; `payload` is what the message carried (the event itself when
    one can be read out of it, so that a replay can land it)."""

    error: str
    payload: Any


@dataclass
class WriteResult:
    """What became of each event of a batch."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    unpriced: int = 0
    seconds: float = 0.0
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """What became of the batch's events, by outcome (logs, metrics, task results)."""
        return {
            "received": self.received,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "dead_lettered": self.dead_lettered,
            "unpriced": self.unpriced,
        }


@dataclass(slots=True)
class Row:
    """One valid event, priced and rendered."""

    event: Event
    cost: float | None
    payload: Any
    fingerprint: bytes
    line: str = ""  # the row as a line of COPY text


@dataclass
class PreparedBatch:
    """A batch validated, priced and rendered to COPY text, ready for the database half."""

    rows: list[Row]
    result: WriteResult
    started: float


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
NULL = "\\N"


def escape(value: str) -> str:
    """`value` as COPY text (most labels need no escaping: one regex scan, not four replaces)."""
    if _COPY_SPECIAL.search(value) is None:
        return value
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


_encode = msgspec.json.Encoder().encode


def instant(at: dt.datetime) -> str:
    """`at.isoformat()`, byte for byte. For a UTC datetime (every event's, once validated)
    msgspec writes the same RFC 3339 text ending in Z in a tenth of the time: an aware
    datetime's isoformat() was the dearest call of a row (about 0.8 us of its 11)."""
    if at.tzinfo is dt.UTC:
        return _encode(at)[1:-2].decode() + "+00:00"
    return at.isoformat()


def _text(payload: Any) -> Any:
    return (
        bytes(payload).decode("utf-8", "replace") if isinstance(payload, msgspec.Raw) else payload
    )


def _content(e: Event) -> str:
    """Every stored field of the event but its computed cost, as COPY text. The fingerprint
    is a hash of this (and of a producer's own cost): a price computed by another version of
    the worker does not make a redelivery look like a conflict."""
    # Profiled: this runs once per event on the consumer thread, so it is one f-string, with
    # the labels' need of escaping asked in one scan (they seldom need it). Ids are written
    # as 32 hex digits: valid uuid input, and cheaper to make than the dashed form.
    operation, model, provider = e.operation, e.model, e.provider
    if _COPY_SPECIAL.search(f"{operation}{model}{provider or ''}") is not None:
        operation, model = escape(operation), escape(model)
        provider = None if provider is None else escape(provider)
    details = e.usage_details
    user, assessment, lead = e.user_id, e.assessment_id, e.lead_id
    return (
        f"{e.id.hex}\t{e.tenant_id.hex}\t{NULL if user is None else user.hex}\t{operation}\t"
        f"{model}\t{e.input_tokens}\t{e.output_tokens}\t{e.total_tokens}\t"
        f"{NULL if assessment is None else assessment.hex}\t{NULL if lead is None else lead.hex}\t"
        f"{NULL if e.duration_ms is None else e.duration_ms}\t{e.success}\t"
        f"{instant(e.created_at)}\t{e.cache_read_tokens}\t{e.cache_write_tokens}\t"
        # Keys are [a-z0-9_] and values numbers: nothing in the JSON needs COPY escaping.
        f"{json.dumps(details, sort_keys=True, separators=(',', ':')) if details else NULL}\t"
        f"{NULL if provider is None else provider}"
    )


def event_id(payload: Any) -> uuid.UUID | None:
    """The event's id if it is one the contract accepts (a UUID string or object), else None:
    a dead letter is keyed by it, so that a redelivery updates its entry. Anything else, an
    integer of 32 digits say (which `uuid.UUID(str(...))` would take), is not an id, and
    distinct events carrying it must not share one dead letter."""
    value = payload.get("id") if isinstance(payload, dict) else None
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


def _unknown_detail(details: dict[str, int | float] | None) -> str | None:
    """Why `details` names a usage key genai-prices does not price, or None."""
    if not details:
        return None
    known = usage_keys()
    for key in details:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"usage_details: {key!r} is not a usage key genai-prices prices{hint}"
    return None


def _as_is(raw: Any) -> Any:
    return msgspec.json.decode(raw)


def prepare_batch(
    payloads: Sequence[Any], pricer: Pricer, decode: Callable[[Any], Any] = _as_is
) -> PreparedBatch:
    """Validate, price and render `payloads`: events as mappings, or as msgspec.Raw JSON
    (decoded straight into the fast path's struct; `decode` turns one the fast path does not
    take into what the schema reads, e.g. with kombu's tagged values restored)."""
    started = time.perf_counter()
    result = WriteResult(received=len(payloads))
    rows = _prepare_rows(payloads, pricer, result, decode)
    return PreparedBatch(rows, result, started)


def _prepare_rows(
    payloads: Sequence[Any], pricer: Pricer, result: WriteResult, decode: Callable[[Any], Any]
) -> list[Row]:
    rows: list[Row] = []
    seen: dict[int, bytes] = {}  # by the id's integer: a UUID's own hash is Python code
    unknown_models: set[str] = set()
    empty = 0
    now = dt.datetime.now(dt.UTC)
    for payload in payloads:
        if isinstance(payload, MalformedMessage):
            result.dead_letters.append(
                DeadLetter(payload.payload, payload.error, "message", event_id(payload.payload))
            )
            continue
        event: Event | None
        # The fast path first. A Raw stays raw when it takes it (decoded only if a dead
        # letter needs it); what it does not take is decoded as the schema reads it.
        if isinstance(payload, msgspec.Raw):
            event = fast.from_json(payload, now)
            if event is None:
                payload = decode(payload)
        elif isinstance(payload, dict):
            event = fast.from_fields(payload, now)
        else:
            event = None
        if event is None:
            # Not plainly valid: the schema decides, and names the field if it refuses.
            try:
                event = parse_event(payload, now)
            except InvalidEvent as exc:
                letter = DeadLetter(payload, str(exc), exc.field, event_id(payload))
                result.dead_letters.append(letter)
                continue
        unknown = _unknown_detail(event.usage_details)
        if unknown:
            result.dead_letters.append(DeadLetter(payload, unknown, "usage_details", event.id))
            continue
        content = _content(event)
        given = event.cost_usd
        fingerprint = hashlib.blake2b(
            f"{content}\t{NULL if given is None else repr(float(given))}".encode(),
            digest_size=16,
        ).digest()
        key = event.id.int
        earlier = seen.get(key)
        if earlier is not None:
            if earlier == fingerprint:
                result.duplicates += 1
            else:
                result.dead_letters.append(_conflict(payload, event.id, fingerprint))
            continue
        seen[key] = fingerprint
        cost: float | None = None
        usage = Usage(
            event.input_tokens,
            event.output_tokens,
            event.cache_read_tokens,
            event.cache_write_tokens,
            event.usage_details or {},
        )
        if given is not None:
            cost = float(given)
        elif (
            # Cheap test first: input_tokens includes the cache tokens.
            not (event.input_tokens or event.output_tokens)
            and usage.is_empty()
            and event.success == "success"
        ):
            # A successful call that reported no usage: its usage is unknown, not free. (A
            # failed call that reported none cost nothing: providers bill no failed request.)
            empty += 1
        else:
            try:
                priced = pricer.price_usage(event.model, event.provider, usage, event.created_at)
            except PricingError as exc:
                result.dead_letters.append(
                    DeadLetter(payload, f"{exc.field}: {exc}", exc.field, event.id)
                )
                continue
            if priced is None:
                unknown_models.add(event.model)
            else:
                cost = float(priced)
        line = f"{content}\t{NULL if cost is None else repr(cost)}\t\\\\x{fingerprint.hex()}\n"
        rows.append(Row(event, cost, payload, fingerprint, line))
    for model in sorted(unknown_models):
        log.warning("no price known for model %r: its rows are stored with cost_usd NULL", model)
    if empty:
        log.warning(
            "%d successful events reported no usage (0 tokens): stored with cost_usd NULL,"
            " counted as unpriced, never as free",
            empty,
        )
    return rows


def _conflict(payload: Any, event: uuid.UUID, fingerprint: bytes, differs: str = "") -> DeadLetter:
    detail = f" (differs in: {differs})" if differs else ""
    return DeadLetter(
        payload,
        f"{CONFLICT}: event {event} was already received with other content{detail};"
        " the stored row is unchanged",
        "id",
        event,
        fingerprint,
    )


def conflict(row: Row, differs: Sequence[str]) -> DeadLetter:
    """The dead letter of a row whose id is already stored with another fingerprint."""
    return _conflict(row.payload, row.event.id, row.fingerprint, ", ".join(differs))
