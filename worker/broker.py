"""Broker-side helpers for the worker's batching: receiving and acknowledging many messages
per Redis round trip, and not building a redis-py client per operation.

kombu's Redis transport acknowledges a message with its own pipeline (ZREM + HDEL) and makes
a new `redis.Redis` object for every such operation; profiled under py-spy, those two costs were
55% of the worker's time draining single-event messages. A batch already commits as one
transaction, so it is acknowledged as one pipeline too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)


def ack_messages(messages: Sequence[Any]) -> None:
    """Acknowledge kombu messages; Redis ones sharing a channel in one pipeline."""
    by_channel: dict[int, list[Any]] = {}
    for message in messages:
        by_channel.setdefault(id(message.channel), []).append(message)
    for group in by_channel.values():
        channel = group[0].channel
        qos = getattr(channel, "qos", None)
        if not isinstance(qos, kombu_redis.QoS):
            for message in group:
                message.ack()
            continue
        with channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            for message in group:
                qos._remove_from_indices(message.delivery_tag, pipe)
            pipe.execute()
        for message in group:
            # What kombu's Message.ack and the virtual QoS do after the Redis commands.
            virtual.QoS.ack(qos, message.delivery_tag)
            message._state = "ACK"


@contextlib.contextmanager
def _cached_conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    cached = self.__dict__.get("_ai_usage_client")
    if cached is None:
        # A client is only a handle on the channel's connection pool: reusing it is what
        # redis-py intends, and the pool still replaces broken connections.
        cached = self.__dict__["_ai_usage_client"] = self._create_client()
    yield cached


def reuse_redis_clients() -> None:
    """Make kombu's Redis channels reuse one client per channel (worker process only)."""
    kombu_redis.Channel.conn_or_acquire = _cached_conn_or_acquire
    kombu_redis.Channel._brpop_read = _brpop_read_guarded


def _brpop_read_guarded(self: Any, **options: Any) -> bool:
    """kombu's Channel._brpop_read, except that a queue item that is not JSON is set aside in
    `<queue>.undecodable` instead of raising out of the event loop (which stops the worker)."""
    try:
        try:
            dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        if not dest__item:
            raise Empty()
        dest, item = dest__item
        dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        try:
            message = loads(bytes_to_str(item))
        except ValueError:
            log.error("queue %s: set aside a message that is not JSON", dest)
            self.client.lpush(f"{dest}.undecodable", item)
            return True
        self.connection._deliver(message, dest)
        return True
    finally:
        self._in_poll = None


# Pops up to ARGV[1] messages from the queue and records each as unacknowledged, atomically,
# exactly as kombu's QoS.append does for one message (ZADD to the index, HSET of
# [payload, exchange, routing_key]); the payload is spliced in unparsed so that nothing in it
# is re-encoded. Needs Redis >= 6.2 (RPOP with a count).
_BULK_POP = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then return {} end
local taken = {}
for _, item in ipairs(items) do
  -- Nothing may raise after the RPOP: Redis does not undo it. cjson refuses some envelopes
  -- that are valid JSON (a lone surrogate escape in Celery's argsrepr), so the envelope's
  -- fields are then read from the raw text; an item with no delivery tag at all is not a
  -- kombu message and is set aside in KEYS[4], never dropped.
  local tag, exchange, routing_key
  local ok, msg = pcall(cjson.decode, item)
  if ok and type(msg) == 'table' and type(msg['properties']) == 'table'
      and type(msg['properties']['delivery_info']) == 'table' then
    local props = msg['properties']
    tag = props['delivery_tag']
    exchange = props['delivery_info']['exchange']
    routing_key = props['delivery_info']['routing_key']
  else
    tag = string.match(item, '"delivery_tag": *"([^"]+)"')
    exchange = string.match(item, '"exchange": *"([^"]*)"')
    routing_key = string.match(item, '"routing_key": *"([^"]*)"')
  end
  if type(tag) == 'string' then
    redis.call('ZADD', KEYS[2], ARGV[2], tag)
    redis.call('HSET', KEYS[3], tag,
      '[' .. item .. ',' .. cjson.encode(exchange or '') .. ','
          .. cjson.encode(routing_key or '') .. ']')
    taken[#taken + 1] = item
  else
    redis.call('LPUSH', KEYS[4], item)
  end
end
return taken
"""


class BulkReceiver:
    """Takes many waiting messages per Redis round trip instead of kombu's one per BRPOP.

    Called after each message the consumer delivers; when the batch has room, it pops up to
    that many more messages (registered as unacknowledged in the same atomic script) and hands
    each to the consumer's own receive callback, so every message, ours or not, takes Celery's
    usual path from there (an unknown task or a pickle body is refused as usual)."""

    def __init__(self, consumer: Any, queue: str, room: Callable[[], int]) -> None:
        self._consumer = consumer
        self._queue = queue
        self._room = room
        self._busy = False
        self._script: Any = None

    def after_message(self, message: Any) -> None:
        """Fill the batch from the queue `message` came from, if it is a Redis one."""
        channel = message.channel
        qos = getattr(channel, "qos", None)
        if self._busy or not isinstance(qos, kombu_redis.QoS):
            return
        room = self._room()
        if qos.prefetch_count:
            room = min(room, qos.prefetch_count - len(qos._delivered))
        if room <= 0:
            return
        self._busy = True
        try:
            with channel.conn_or_acquire() as client:
                if self._script is None:
                    self._script = client.register_script(_BULK_POP)
                items = self._script(
                    keys=[
                        self._queue,
                        qos.unacked_index_key,
                        qos.unacked_key,
                        f"{self._queue}.undecodable",
                    ],
                    args=[room, time.time()],
                    client=client,
                )
            receive = self._consumer.task_consumer._receive_callback
            for item in items:
                try:
                    envelope = json.loads(item)
                except ValueError:
                    log.error("queue %s: set aside a message that is not JSON", self._queue)
                    with channel.conn_or_acquire() as client:
                        client.lpush(f"{self._queue}.undecodable", item)
                    continue
                received = channel.Message(envelope, channel=channel)
                virtual.QoS.append(qos, received, received.delivery_tag)
                receive(received)
        except kombu_redis.redis.RedisError as exc:
            log.warning("bulk receive failed (%s); kombu's own delivery continues", exc)
        finally:
            self._busy = False
