"""The worker's side of kombu's Redis transport: how messages are waited for, taken,
acknowledged and restored. Used by the worker process only (patch_kombu_redis), never by
producers.

- Taking: kombu's BRPOP removes a message before the worker has read the reply, so a worker
  killed in between lost it. The worker waits without popping and takes messages with one Lua
  script that pops and records them as unacknowledged in the same step, many per round trip.
- Acknowledging: kombu acknowledges a message with its own pipeline (ZREM + HDEL) and makes a
  new `redis.Redis` object for every such operation; profiled under py-spy, those two costs
  were 55% of the worker's time draining single-event messages. A batch already commits as one
  transaction, so it is acknowledged as one pipeline too.
- Anything in the queue that is not a kombu message, and any 'unacked' entry that cannot be
  restored, is set aside in `<queue>.undecodable`, never dropped and never fatal.
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

from worker.settings import QUEUE

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
        try:
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                for message in group:
                    qos._remove_from_indices(message.delivery_tag, pipe)
                pipe.execute()
        finally:
            # What kombu's Message.ack and the virtual QoS do after the Redis commands. Done
            # even when those failed: the entries left in 'unacked' come back after the
            # visibility timeout (and are written once, idempotently), while tags left in the
            # channel's prefetch count would stop it consuming for good.
            for message in group:
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


_kombu_brpop_start = kombu_redis.Channel._brpop_start
_kombu_qos_append = kombu_redis.QoS.append


def patch_kombu_redis() -> None:
    """Patch kombu's Redis transport for the worker process (never for producers):

    - one redis-py client per channel instead of one per operation;
    - a queue with one consumer is waited on without popping: kombu's BRPOP takes a message
      out of the queue before the worker has read the reply, so a worker killed in between
      loses it; here the message is popped and recorded as unacknowledged in one atomic
      script, after the worker is awake to take it (see `_wait_start`);
    - a queue item that is not a kombu message, or an 'unacked' entry that cannot be
      restored, is set aside in `<queue>.undecodable` instead of stopping the worker.
    """
    kombu_redis.Channel.conn_or_acquire = _cached_conn_or_acquire
    kombu_redis.Channel._brpop_start = _wait_start
    kombu_redis.Channel._brpop_read = _wait_read
    kombu_redis.QoS.append = _append_unless_recorded
    kombu_redis.QoS.restore_by_tag = _restore_by_tag


def _wait_start(self: Any, timeout: float | None = None) -> None:
    """Instead of `BRPOP queue`, send `BLMOVE queue queue RIGHT RIGHT`: it blocks until the
    queue holds a message and returns a copy of its tail, leaving the list as it was. The
    worker then takes messages with `_TAKE`, which records them as unacknowledged in the same
    step, so at no moment is a message only in a socket."""
    queues = self.active_queues
    if self.global_keyprefix or len(queues) != 1:
        # Several queues cannot be waited on this way (BLMOVE watches one list): kombu's own
        # BRPOP, with its window, is kept for such consumers. Ours consumes one queue.
        self.__dict__.pop("_ai_usage_waiting", None)
        _kombu_brpop_start(self, timeout)
        return
    (queue,) = queues
    if timeout is None:
        timeout = self.brpop_timeout
    self._ai_usage_waiting = queue
    self._in_poll = self.client.connection
    self.client.connection.send_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", timeout or 0)


def _wait_read(self: Any, **options: Any) -> bool:
    queue = self.__dict__.pop("_ai_usage_waiting", None)
    if queue is None:
        return _brpop_read_guarded(self, **options)
    try:
        try:
            self.client.parse_response(self.client.connection, "BLMOVE", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
    finally:
        self._in_poll = None
    if self._closing:
        # kombu's Channel.close reads the outstanding reply; taking now would leave a message
        # in 'unacked' until the visibility timeout.
        raise Empty()
    # Take even when the wait timed out: it watches the queue's main list only, and messages
    # sent with a priority wait in the queue's other lists.
    items = take(self, queue, 1)
    if not items:
        raise Empty()
    deliver(self, queue, items)
    return True


def _append_unless_recorded(self: Any, message: Any, delivery_tag: str) -> None:
    # kombu's QoS.append writes the message to 'unacked'; `_TAKE` has already done that for
    # the messages `deliver` hands over, so only the in-memory bookkeeping is left to do.
    if getattr(self.channel, "_ai_usage_recorded", False):
        virtual.QoS.append(self, message, delivery_tag)
    else:
        _kombu_qos_append(self, message, delivery_tag)


def _restore_by_tag(self: Any, tag: str, client: Any = None, leftmost: bool = False) -> None:
    """kombu's QoS.restore_by_tag, except that an entry that does not decode is set aside
    instead of raising: kombu restores at every worker start, so one such entry would stop
    every worker from starting."""

    def restore_transaction(pipe: Any) -> None:
        p = pipe.hget(self.unacked_key, tag)
        pipe.multi()
        self._remove_from_indices(tag, pipe)
        if not p:
            return
        try:
            message, exchange, routing_key = loads(bytes_to_str(p))
            if not isinstance(message, dict) or not isinstance(routing_key, str):
                raise ValueError("not a kombu message")
        except (ValueError, TypeError) as exc:
            log.error("unacked message %s cannot be restored (%s): set aside", tag, exc)
            pipe.lpush(f"{QUEUE}.undecodable", p)
            return
        self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

    with self.channel.conn_or_acquire(client) as client:
        client.transaction(restore_transaction, self.unacked_key)


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


# Pops up to ARGV[1] messages from the queue's lists (KEYS[4..], in kombu's priority order) and
# records each as unacknowledged, atomically, as kombu's QoS.append does for one message (ZADD
# to the index, HSET of [payload, exchange, routing_key]); the payload is spliced in unparsed,
# so nothing in it is re-encoded, and the restore target is the queue it was taken from
# (exchange "" routes by the routing key ARGV[3], the queue's name as JSON), whatever the
# payload says. Returns {payload, tag, payload, tag, ...}. Needs Redis >= 6.2 (RPOP count).
_TAKE = """
local want = tonumber(ARGV[1])
local taken = {}
for k = 4, #KEYS do
  if want <= 0 then break end
  local items = redis.call('RPOP', KEYS[k], want)
  if items then
    want = want - #items
    for _, item in ipairs(items) do
      -- Nothing may raise after the RPOP: Redis does not undo it. Only a kombu envelope
      -- (properties, their delivery_info and a string delivery_tag) is recorded; anything
      -- else is set aside in KEYS[3], never dropped. cjson refuses some envelopes that are
      -- valid JSON (a lone surrogate escape in Celery's argsrepr): those are read as text.
      local tag = nil
      local ok, msg = pcall(cjson.decode, item)
      if ok then
        if type(msg) == 'table' and type(msg['properties']) == 'table'
            and type(msg['properties']['delivery_info']) == 'table'
            and type(msg['properties']['delivery_tag']) == 'string' then
          tag = msg['properties']['delivery_tag']
        end
      elseif string.find(item, '"properties": *{') then
        tag = string.match(item, '"delivery_tag": *"([^"]+)"')
      end
      if tag then
        redis.call('ZADD', KEYS[1], ARGV[2], tag)
        redis.call('HSET', KEYS[2], tag, '[' .. item .. ', "", ' .. ARGV[3] .. ']')
        taken[#taken + 1] = item
        taken[#taken + 1] = tag
      else
        redis.call('LPUSH', KEYS[3], item)
      end
    end
  end
end
return taken
"""


def take(channel: Any, queue: str, count: int) -> list[tuple[bytes, str]]:
    """Pop up to `count` messages of `queue`, recorded as unacknowledged in the same step:
    (payload, delivery tag) pairs."""
    qos = channel.qos
    with channel.conn_or_acquire() as client:
        script = channel.__dict__.get("_ai_usage_take")
        if script is None:
            script = channel.__dict__["_ai_usage_take"] = client.register_script(_TAKE)
        lists = dict.fromkeys(channel._q_for_pri(queue, pri) for pri in channel.priority_steps)
        flat: list[bytes] = script(
            keys=[qos.unacked_index_key, qos.unacked_key, f"{queue}.undecodable", *lists],
            args=[count, time.time(), json.dumps(queue)],
            client=client,
        )
    return [(flat[i], bytes_to_str(flat[i + 1])) for i in range(0, len(flat), 2)]


def deliver(channel: Any, queue: str, taken: Sequence[tuple[bytes, str]]) -> None:
    """Hand messages `take` returned to the channel's consumer, the way kombu delivers one it
    popped, so that every message, ours or not, takes Celery's usual path (an unknown task or
    a pickle body is refused as usual)."""
    for item, tag in taken:
        try:
            envelope = json.loads(item)
            properties = envelope["properties"]
            if properties["delivery_tag"] != tag or not isinstance(
                properties["delivery_info"], dict
            ):
                raise ValueError("not a kombu message")
        except (ValueError, TypeError, KeyError):
            # The script's reading and Python's can differ (cjson accepts hexadecimal numbers).
            _set_aside(channel, queue, item, tag)
            continue
        recorded = getattr(channel, "_ai_usage_recorded", False)
        channel._ai_usage_recorded = True
        try:
            channel.connection._deliver(envelope, queue)
        finally:
            channel._ai_usage_recorded = recorded


def _set_aside(channel: Any, queue: str, item: bytes, tag: str) -> None:
    log.error("queue %s: set aside an item that is not a kombu message", queue)
    qos = channel.qos
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline()
        pipe.lpush(f"{queue}.undecodable", item)
        pipe.zrem(qos.unacked_index_key, tag)  # recorded by the script: it must not come back
        pipe.hdel(qos.unacked_key, tag)
        pipe.execute()


class BulkReceiver:
    """Takes many waiting messages per Redis round trip instead of kombu's one per wait.

    Called after each message the consumer delivers; when the batch has room, it takes up to
    that many more messages and delivers them."""

    def __init__(self, queue: str, room: Callable[[], int]) -> None:
        self._queue = queue
        self._room = room
        self._busy = False

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
            deliver(channel, self._queue, take(channel, self._queue, room))
        except kombu_redis.redis.RedisError as exc:
            log.warning("bulk receive failed (%s); the consumer's own wait continues", exc)
        finally:
            self._busy = False
