"""Queue items as the worker's transport takes them: the take script, the decoding of an
item's envelope, and what becomes of an item that is not a message (a refusal, a set-aside
record in `<queue>.undecodable`). Plain functions and data: no connection, no kombu."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import msgspec

#: The suffix of the Redis list where items that are not messages are set aside.
UNDECODABLE_SUFFIX = ".undecodable"


# Pops messages of one queue (its lists KEYS[3..], in kombu's priority order) while the room
# ARGV[1] (in events) lasts, and records each as unacknowledged in the same step, as kombu's
# QoS.append does for one message (ZADD to the index KEYS[1], HSET in KEYS[2] of
# [payload, exchange, routing_key]) but under a fresh tag ARGV[4].n. The payload is spliced
# in unparsed, so nothing in it is re-encoded, and it is restored to the queue it was taken
# from (exchange "" routes by the routing key ARGV[3], the queue's name as JSON), whatever it
# says. A message counts as its `ai_usage_events` header, as 1 for ai_usage.record, else as
# the estimate ARGV[5]. Nothing may raise after an RPOP (Redis does not undo it): an item that
# is not JSON is recorded all the same, and the worker sets it aside. Returns
# {payload, tag, payload, tag, ...}. Needs Redis >= 6.2 (the wait's BLMOVE).
TAKE_SCRIPT = """
local room = tonumber(ARGV[1])
local estimate = tonumber(ARGV[5])
local taken = {}
local n = 0
for k = 3, #KEYS do
  while room > 0 do
    local item = redis.call('RPOP', KEYS[k])
    if not item then break end
    n = n + 1
    local tag = ARGV[4] .. '.' .. n
    redis.call('ZADD', KEYS[1], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. item .. ', "", ' .. ARGV[3] .. ']')
    taken[#taken + 1] = item
    taken[#taken + 1] = tag
    local cost = estimate
    local ok, msg = pcall(cjson.decode, item)
    if ok and type(msg) == 'table' and type(msg['headers']) == 'table' then
      local count = msg['headers']['ai_usage_events']
      if type(count) == 'number' and count >= 1 then
        cost = count
      elseif msg['headers']['task'] == 'ai_usage.record' then
        cost = 1
      end
    end
    room = room - cost
  end
  if room <= 0 then break end
end
return taken
"""


def decode_envelope(item: bytes) -> Any:
    """The JSON of a queue item: msgspec reads the common case (a 500-event body is one long
    string: Python's json spent a tenth of the worker's time here); Python's json what only it
    reads (lone surrogate escapes, NaN). Raises ValueError when neither can."""
    try:
        return msgspec.json.decode(item)
    except msgspec.DecodeError:
        return json.loads(item)


def undecodable_key(queue: str) -> str:
    """The Redis list where `queue`'s items that are not messages are set aside."""
    return queue + UNDECODABLE_SUFFIX


def set_aside_record(queue: str, item: bytes, reason: str, tag: str | bytes | None = None) -> str:
    """What is pushed to the undecodable list: the item, untouched, and why."""
    if isinstance(tag, bytes):
        tag = tag.decode("utf-8", "replace")
    record: dict[str, Any] = {
        "reason": reason,
        "queue": queue,
        "set_aside_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if tag:
        record["tag"] = tag
    try:
        record["item"] = item.decode("utf-8")
    except UnicodeDecodeError:
        record["item_base64"] = base64.b64encode(item).decode()
    return json.dumps(record)


@dataclass
class Refused:
    """A taken item the channel could not deliver as a message: the ingest step's
    `on_refused` hook decides (dead letters if it can read events out of it, else set aside).
    The item is recorded in `unacked` under `tag` until `channel.settle()` removes it."""

    queue: str
    item: bytes
    tag: str
    reason: str
    envelope: dict[str, Any] | None
