"""What the ingest queue holds, read from Redis: for `ai-usage check` and the worker's gauges.

- depth: messages waiting (every priority list);
- the age of the oldest waiting message (the one a worker takes next), from the client's
  `ai_usage_sent_at` header, else from its first event's `created_at`;
- unacknowledged messages, and those unacknowledged for longer than a live worker would let
  them be (no worker is restoring them);
- items set aside in the undecodable list;
- the workers whose heartbeat key is alive.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from worker.client.envelope import QUEUE
from worker.consumer.items import undecodable_key
from worker.consumer.transport import key_names, queue_keys

#: Redis keys `ai_usage.worker.<hostname>`, refreshed by each running worker.
HEARTBEAT_PREFIX = "ai_usage.worker."
HEARTBEAT_TTL_S = 45


@dataclass
class Backlog:
    """A reading of the ingest queue's state."""

    depth: int
    unacked: int
    stale_unacked: int
    oldest_age_s: float | None
    set_aside: int
    workers: list[dict[str, Any]] = field(default_factory=list)


def stale_after_s(visibility_timeout: float) -> float:
    """How long an entry may stay unacknowledged while some worker lives: the timeout, then at
    most one restore sweep (every half timeout, at most 30 s), then a margin."""
    return visibility_timeout + min(30.0, visibility_timeout / 2) + 15.0


def read_backlog(client: Any, visibility_timeout: float, now: float | None = None) -> Backlog:
    """Read the queue's state with a redis-py client."""
    now = time.time() if now is None else now
    names = key_names()
    pipe = client.pipeline(transaction=False)
    for key in queue_keys(QUEUE):
        pipe.llen(key)
    pipe.hlen(names["unacked"])
    pipe.zcount(names["unacked_index"], "-inf", now - stale_after_s(visibility_timeout))
    pipe.llen(undecodable_key(QUEUE))
    pipe.lindex(QUEUE, -1)
    *depths, unacked, stale, aside, oldest = pipe.execute()
    workers = []
    for key in client.scan_iter(match=HEARTBEAT_PREFIX + "*", count=100):
        raw = client.get(key)
        if raw:
            try:
                workers.append(json.loads(raw))
            except ValueError:
                continue
    return Backlog(
        depth=sum(int(d) for d in depths),
        unacked=int(unacked),
        stale_unacked=int(stale),
        oldest_age_s=message_age(oldest, now) if oldest else None,
        set_aside=int(aside),
        workers=workers,
    )


def message_age(item: bytes, now: float) -> float | None:
    """Seconds since a queued message was sent, if it says (None when it cannot be read)."""
    try:
        envelope = json.loads(item)
        headers = envelope.get("headers") or {}
        sent = headers.get("ai_usage_sent_at")
        if isinstance(sent, int | float):
            return max(0.0, now - float(sent))
        body = envelope.get("body")
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, *_ = json.loads(body)
        event = kwargs if kwargs else (args[0][0] if args and args[0] else {})
        created = dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
        if created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
        return max(0.0, now - created.timestamp())
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
