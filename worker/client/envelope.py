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

# Event ids from a PRNG seeded by os.urandom (and reseeded in a forked child): uuid4() reads
# os.urandom on every call, a system call that also hands the GIL to the publishing thread.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_id() -> uuid.UUID:
    """A random (version 4) UUID."""
    return uuid.UUID(int=_ids.getrandbits(128), version=4)


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
