"""What a message on the ingest queue carries: its events, or why it carries none.

Plain functions over a kombu Message (or an envelope the transport could not build into one),
testable without a broker. Every message ends in exactly one of:
- `Events`: the events to write (a message of the wrong shape whose events can still be read
  carries them as MalformedMessage items, so that each is dead-lettered with the reason and
  can be replayed);
- `Forward`: a task of this app that is not an ingest task (a rollup someone sent to the ingest
  queue): it goes to the queue Celery consumes, untouched;
- `SetAside`: it is no Celery message one can read (pickle, a body that is not JSON or not a
  Celery body, an unknown task without events): it is set aside in the undecodable list,
  untouched, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from kombu.utils.json import object_hook

from worker.client.envelope import RECORD, RECORD_BATCH
from worker.ledger.rows import MalformedMessage

#: What the body of a protocol-2 Celery message is: [args, kwargs, embed].
_BODY = msgspec.json.Decoder(tuple[msgspec.Raw, msgspec.Raw, msgspec.Raw])
_BATCH_ARGS = msgspec.json.Decoder(tuple[list[msgspec.Raw]])
_ANY = msgspec.json.Decoder()


@dataclass
class Events:
    """The message's events: msgspec.Raw (decoded per batch, so that a message of 100k
    events is not all decoded at once), or MalformedMessage items."""

    events: list[Any]


@dataclass
class Forward:
    """A task of this app that is not an ingest task: hand it to `queue`, untouched."""

    queue: str
    task: str


@dataclass
class SetAside:
    """Nothing can be read out of the message: set it aside with `reason`."""

    reason: str


Outcome = Events | Forward | SetAside


def decode_event(raw: Any) -> Any:
    """An event (a msgspec.Raw, or a value already decoded) as the schema reads it: kombu's
    tagged values (a Python producer's UUID, datetime or Decimal objects) restored, as kombu's
    own decoder would."""
    if isinstance(raw, msgspec.Raw):
        try:
            raw = _ANY.decode(raw)
        except msgspec.DecodeError as exc:  # pragma: no cover - the body decoded already
            return MalformedMessage(
                f"event: not valid JSON ({exc})", {"raw": bytes(raw).decode("utf-8", "replace")}
            )
    if isinstance(raw, dict):
        for key, value in raw.items():
            if type(value) is dict and value.keys() == {"__type__", "__value__"}:
                raw[key] = object_hook(value)
    return raw


def classify(
    task: str | None,
    content_type: str | None,
    body: bytes,
    *,
    is_task: Callable[[str], bool],
    forward_queue: str,
) -> Outcome:
    """What to do with a message of the ingest queue. `is_task(name)` says whether the app
    has a task of that name (it is then forwarded, not refused)."""
    if content_type != "application/json":
        # Checked before anything is decoded: a pickle body is never deserialised.
        return SetAside(f"content type {content_type!r} refused: only application/json is read")
    try:
        args_raw, kwargs_raw, _ = _BODY.decode(body)
    except msgspec.DecodeError:
        return _slow(task, body, is_task, forward_queue)
    if task == RECORD_BATCH:
        try:
            (events,) = _BATCH_ARGS.decode(args_raw)
        except msgspec.ValidationError:
            pass
        else:
            if bytes(kwargs_raw) == b"{}" or not _ANY.decode(kwargs_raw):
                return Events(list(events))
    elif task == RECORD and bytes(args_raw) == b"[]":
        return Events([kwargs_raw])
    return _from_values(
        task, _ANY.decode(args_raw), _ANY.decode(kwargs_raw), is_task, forward_queue
    )


def _slow(
    task: str | None, body: bytes, is_task: Callable[[str], bool], forward_queue: str
) -> Outcome:
    """A body msgspec does not take: Python's JSON (kombu's own decoder) reads lone surrogate
    escapes and NaN, which a Python producer can send; the schema then judges each event.
    Also a protocol-1 body ({"task", "id", "args", "kwargs"}), as celery-node v1 sends."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return SetAside(f"the body is not valid JSON ({exc})")
    if isinstance(decoded, list) and len(decoded) == 3:
        return _from_values(task, decoded[0], decoded[1], is_task, forward_queue)
    if isinstance(decoded, dict) and "args" in decoded:
        name = task or decoded.get("task")
        kwargs = decoded.get("kwargs")
        return _from_values(
            name if isinstance(name, str) else None,
            decoded.get("args"),
            {} if kwargs is None else kwargs,
            is_task,
            forward_queue,
        )
    return SetAside("the body is not a Celery task body ([args, kwargs, embed])")


def _from_values(
    task: str | None, args: Any, kwargs: Any, is_task: Callable[[str], bool], forward_queue: str
) -> Outcome:
    """The events of a decoded body, whatever its shape."""
    if task == RECORD_BATCH:
        if isinstance(args, list) and len(args) == 1 and isinstance(args[0], list) and not kwargs:
            return Events(list(args[0]))
        return _malformed_batch(args, kwargs)
    if task == RECORD:
        if args == [] and isinstance(kwargs, dict):
            return Events([kwargs])
        if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            # celery-node's `delay(event)`: the event is there, as a positional argument. It
            # is dead-lettered with its id and the fix, and a replay lands it as it is.
            return Events(
                [
                    MalformedMessage(
                        "message: ai_usage.record takes the event as keyword arguments, got it"
                        " as a positional argument (celery-node: applyAsync([], event))",
                        args[0],
                    )
                ]
            )
        return Events(
            [
                MalformedMessage(
                    "message: ai_usage.record takes the event as keyword arguments, got"
                    " positional arguments",
                    {"args": args, "kwargs": kwargs},
                )
            ]
        )
    if task and is_task(task):
        return Forward(forward_queue, task)
    return _unknown(task, args, kwargs)


def _malformed_batch(args: Any, kwargs: Any) -> Events:
    reason = "message: ai_usage.record_batch takes one positional list of events"
    events = _readable_events(args, kwargs)
    if events:
        return Events([MalformedMessage(reason, e) for e in events])
    return Events([MalformedMessage(reason, {"args": args, "kwargs": kwargs})])


def _readable_events(args: Any, kwargs: Any) -> list[dict[str, Any]]:
    """Events that can be read out of a message of the wrong shape: an object that looks like
    an event (it has a tenant_id), alone or in a list, in the arguments."""
    found: list[dict[str, Any]] = []

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, dict) and "tenant_id" in value:
            found.append(value)
        elif isinstance(value, list) and depth < 3:
            for item in value:
                visit(item, depth + 1)

    visit(args, 0)
    visit(kwargs, 0)
    return found


def _unknown(task: str | None, args: Any, kwargs: Any) -> Outcome:
    what = f"unknown task {task!r}" if task else "no task name"
    events = _readable_events(args, kwargs)
    if events:
        reason = (
            f"message: {what} on the ingest queue (expected {RECORD} or {RECORD_BATCH});"
            " the event was not recorded"
        )
        return Events([MalformedMessage(reason, e) for e in events])
    return SetAside(f"{what}, and no event in its arguments")


def readable_body(envelope: dict[str, Any], decode_body: Callable[[Any, Any], Any]) -> bytes | None:
    """The body of an envelope kombu could not build into a message (headers that are not an
    object, say), if it decodes: its events may still be read."""
    try:
        body = decode_body(envelope.get("body"), envelope["properties"].get("body_encoding"))
    except Exception:
        return None
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return body if isinstance(body, bytes) else None
