"""Celery protocol-2 task messages in kombu's Redis envelope, built by hand for the client.

This is what kombu's Redis transport stores for a message sent to the default exchange (the
routing key names the queue, and LPUSH puts it there): the client makes it with one redis-py
call instead of Celery's send_task, whose Python work per message holds the GIL the host
application's threads need. The end-to-end tests consume these messages with a real worker.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

#: The queue every ai_usage task is routed to. Part of the public contract.
QUEUE = "ai_usage"
#: The task names of the contract.
RECORD = "ai_usage.record"
RECORD_BATCH = "ai_usage.record_batch"

#: The third element of a protocol-2 body: no callbacks, errbacks, chain or chord.
EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"ai-usage-client@{socket.gethostname()}"

# Event ids: RFC 9562 UUIDv7, made here by the algorithm of CPython 3.14's uuid.uuid7 (a 48-bit
# millisecond timestamp, then a 42-bit counter, 12 bits in rand_a and 30 in rand_b, started at a
# random value with its top bit clear each new millisecond and counted up within one, then 32
# random bits). Time-ordered ids go to the right edge of the primary key instead of a random leaf:
# at 30M rows random v4 ids made ingest 3x slower (issue 27). Written by hand, not taken from:
# - uuid6 (PyPI): its uuid7 moves the timestamp 1 ms ahead per id within a millisecond (ids
#   run ahead of the clock beyond 1,000/s) and reads the OS's randomness per id;
# - uuid-utils (PyPI, Rust): fast, but returns its own UUID type; the stdlib UUID record()
#   returns costs as much to build from it as all of the work below, and what its generator
#   state does across fork() is not documented;
# - uuid.uuid7 (Python >= 3.14; we support 3.11): reads os.urandom per id.
# The random bits come from a PRNG seeded by os.urandom (and reseeded in a forked child, whose
# counter restarts too): os.urandom per id is a system call that also hands the GIL to the
# publishing thread. A lock keeps ids unique and ordered across the application's threads.
_ids = random.Random()
_id_lock = threading.Lock()
_last_ms = -1
_counter = 0
_MAX_COUNTER = (1 << 42) - 1
_V7_FLAGS = 0x7000 << 64 | 0x8000_0000_0000_0000  # version 7, variant RFC 9562
_new_uuid = uuid.UUID.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def _after_fork() -> None:
    global _last_ms, _id_lock
    _ids.seed()
    _last_ms = -1  # the child's next id starts a fresh random counter
    _id_lock = threading.Lock()  # a lock held by another thread at fork() stays held


os.register_at_fork(after_in_child=_after_fork)


def new_id() -> uuid.UUID:
    """A time-ordered RFC 9562 version 7 UUID: the current Unix millisecond, then a counter that
    keeps the ids of one process strictly increasing (within a millisecond, and when the clock
    steps back), then 32 random bits."""
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000
    with _id_lock:
        if now_ms > _last_ms:
            _last_ms, _counter = now_ms, _ids.getrandbits(41)
        else:
            # The same millisecond or a clock stepped back: count on from the last id.
            _counter += 1
            if _counter > _MAX_COUNTER:  # 4 trillion ids in one millisecond: borrow the next
                _last_ms, _counter = _last_ms + 1, _ids.getrandbits(41)
        value = (
            (_last_ms & 0xFFFF_FFFF_FFFF) << 80
            | (_counter >> 30) << 64
            | (_counter & 0x3FFF_FFFF) << 32
            | _ids.getrandbits(32)
            | _V7_FLAGS
        )
    # What UUID(int=value) makes, without its range and version checks (value is in range and
    # its bits are set); CPython 3.14's uuid builds its UUIDs the same way (UUID._from_int).
    u = _new_uuid(uuid.UUID)
    _set(u, "int", value)
    _set(u, "is_safe", _UNKNOWN)
    return u


def escape_json(text: str) -> str:
    """`text` escaped as the inside of a JSON string literal."""
    return json.dumps(text)[1:-1]


EMBED_ESCAPED = escape_json(json.dumps(EMBED))


def redis_envelope(task: str, body: str, events: int | None = None) -> str:
    """The envelope kombu's Redis transport would LPUSH for `task`; `body` is the protocol-2
    body already escaped as the inside of a JSON string, and is spliced in untouched. `events`
    (how many the message carries) goes in the `ai_usage_events` header, which lets a worker
    count its room in events before it decodes the body."""
    return '{"body": "' + body + '", ' + _rest(task, events)


# An `ai_usage.record_batch` body is these around the events, joined by commas: args
# [[events]], no kwargs, the embed (escaped as the inside of a JSON string).
_BATCH_OPEN = "[[["
_BATCH_CLOSE = "]],{}," + EMBED_ESCAPED + "]"


def batch_body(events: Sequence[str]) -> str:
    """The `ai_usage.record_batch` body of `events`, each an event's JSON escaped as the inside
    of a JSON string (and so the body too)."""
    return _BATCH_OPEN + ",".join(events) + _BATCH_CLOSE


def batch_envelope(events: Sequence[str]) -> list[str]:
    """`redis_envelope(RECORD_BATCH, batch_body(events), len(events))`, as pieces: the
    publishing thread joins a round's envelopes in one pass, instead of copying each body once
    per concatenation (a megabyte a round, with the GIL held)."""
    body = [","] * (2 * len(events) - 1) if events else []
    body[::2] = events
    return [
        '{"body": "' + _BATCH_OPEN,
        *body,
        _BATCH_CLOSE + '", ' + _rest(RECORD_BATCH, len(events)),
    ]


def _rest(task: str, events: int | None) -> str:
    """The envelope after its body (and the comma after it)."""
    task_id = str(new_id())  # not uuid4(): see new_id
    rest = json.dumps(
        {
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": None,
                "kwargsrepr": None,
                "origin": _ORIGIN,
                "ignore_result": True,
                # When it was sent: `ai-usage check` reads the oldest message's age from it.
                "ai_usage_sent_at": round(time.time(), 3),
                **({"ai_usage_events": events} if events else {}),
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "utf-8",
                "delivery_tag": str(new_id()),
            },
        }
    )
    return rest[1:]
