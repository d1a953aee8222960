"""The worker's Redis transport: kombu's, with how messages are waited for, taken, acknowledged
and restored changed in subclasses, selected by Celery's `broker_transport` setting
(`worker.consumer.transport:Transport`, or `:SentinelTransport` for `sentinel://` URLs).
Producers never use it: they publish with plain kombu or the client's one LPUSH.

- Waiting: kombu's BRPOP removes a message before the worker has read the reply, so a worker
  killed in between lost it. This channel waits with `BLMOVE queue queue RIGHT RIGHT`, which
  blocks until the queue holds a message and leaves the list as it was.
- Taking: one Lua script pops messages and records each as unacknowledged in the same step,
  under a delivery tag the worker assigns (never the producer's: a producer that stamps every
  message `delivery_tag: "celery"` would make in-flight messages share one recovery entry).
  It takes messages while the consumer has room counted in EVENTS, not messages: a message of
  500 events is 500 (the client says so in a header; other producers' messages are estimated
  from what was seen), so a worker holds a bounded number of events and the rest of a backlog
  stays in Redis for other workers.
- Delivering: each taken item is checked and built into a kombu Message here, one at a time,
  so that no item (not JSON, not an envelope, a body kombu cannot decode, headers that are not
  an object) can raise out of the event loop; what cannot be delivered is handed to the
  channel's `on_refused` hook (the ingest step dead-letters its events if it can read them)
  or set aside in `<queue>.undecodable` with its reason. Nothing is dropped.
- Acknowledging: a batch commits as one transaction, so it is acknowledged as one pipeline; a
  cached redis-py client per channel replaces kombu's new client per operation.
- Restoring: an `unacked` entry that cannot be restored is set aside instead of raising (kombu
  restores at every worker start: one bad entry would stop every start).

Every kombu internal this module relies on is named in KOMBU_INTERNALS
(worker.consumer.kombu_internals); the upgrade-canary
test (tests/test_transport_canary.py) fails, naming it, when one of them changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from worker.consumer.items import (
    TAKE_SCRIPT,
    Refused,
    decode_envelope,
    set_aside_record,
    undecodable_key,
)

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, with room counted in events where the consumer says so."""

    #: Room left in events (set by the ingest step for its channel); None: kombu's prefetch.
    event_room: Callable[[], int] | None = None

    def can_consume(self) -> bool:
        if self.event_room is not None:
            return self.event_room() > 0
        return bool(super().can_consume())

    def take_room(self) -> int:
        """How much to take now: events for the ingest channel, else messages."""
        if self.event_room is not None:
            return max(0, self.event_room())
        estimate = self.can_consume_max_estimate()
        return 100 if estimate is None else estimate

    def ack_many(self, tags: Sequence[str]) -> None:
        """Acknowledge `tags` with one pipeline. The in-memory acknowledgement happens even
        when Redis fails: entries left in `unacked` come back after the visibility timeout (and
        are written once, idempotently), while tags left counted would stop consumption."""
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                for tag in tags:
                    self._remove_from_indices(tag, pipe)
                pipe.execute()
        finally:
            for tag in tags:
                virtual.QoS.ack(self, tag)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore_by_tag, except that an entry that does not decode as a kombu
        message is set aside instead of raising."""

        def restore_transaction(pipe: Any) -> None:
            p = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if not p:
                return
            try:
                message, exchange, routing_key = json.loads(p)
                if not (
                    isinstance(message, dict)
                    and isinstance(message.get("properties"), dict)
                    and isinstance(exchange, str)
                    and isinstance(routing_key, str)
                ):
                    raise ValueError("not a kombu message")
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                queue = routing_key_of(p)
                log.error("unacked entry %s cannot be restored (%s): set aside", tag, exc)
                pipe.lpush(
                    undecodable_key(queue),
                    set_aside_record(queue, p, f"unacked entry cannot be restored: {exc}", tag),
                )
                return
            self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as c:
            c.transaction(restore_transaction, self.unacked_key)


def routing_key_of(record: bytes) -> str:
    """The queue an `unacked` record (as this transport writes them) was taken from, or the
    ingest queue when it cannot be read."""
    from worker.client.envelope import QUEUE

    tail = record.rsplit(b",", 1)[-1].strip().rstrip(b"]").strip()
    try:
        value = json.loads(tail)
    except ValueError:
        return QUEUE
    return value if isinstance(value, str) else QUEUE


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, waiting without popping and taking through `TAKE_SCRIPT`."""

    QoS = QoS

    #: Called with each taken item that cannot be delivered (set by the ingest step).
    on_refused: Callable[[Channel, Refused], None] | None = None
    #: Events a message of unknown size is counted as, until one is seen (then the largest
    #: seen recently): an estimate, so a worker can exceed its room by one message's excess.
    unknown_message_events = 500

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumers_by_queue: dict[str, tuple[Callable[[Any], Any], bool]] = {}
        self._tag_prefix = uuid.uuid4().hex[:16]
        self._takes = 0
        self._rotation = 0
        self._waiting: list[str] | None = None
        self._take_script: Any = None

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """A redis-py client: the one given, or this channel's own, made once. (kombu makes a
        new one per operation; a client is only a handle on the channel's pool, which still
        replaces broken connections.)"""
        if client:
            yield client
            return
        cached = self.__dict__.get("_cached_client")
        if cached is None:
            cached = self.__dict__["_cached_client"] = self._create_client()
        yield cached

    def _key(self, name: str) -> str:
        return f"{self.global_keyprefix}{name}" if self.global_keyprefix else name

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        self._consumers_by_queue[queue] = (callback, no_ack)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    # -- waiting ----------------------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Instead of `BRPOP queues...`, `BLMOVE q q RIGHT RIGHT` on one of the queues (taken
        in turn): it returns when that list holds a message, or at the timeout, and changes
        nothing; then every consumed queue is taken from. Messages of other queues, and those
        sent with a priority (other lists), are taken at the wait's timeout (1 s)."""
        queues = sorted(self.active_queues)
        if not queues:
            return
        self._rotation += 1
        first = self._rotation % len(queues)
        queues = queues[first:] + queues[:first]
        if timeout is None:
            timeout = self.brpop_timeout
        self._waiting = queues
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # kombu >= 5.7 checks a wait overdue with it
        key = self._key(queues[0])
        self.client.connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        queues, self._waiting = self._waiting, None
        try:
            try:
                self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            # kombu >= 5.7: the wait's connection is idle now, the moment to send a pending
            # re-authentication (as its own _brpop_read does).
            reauth = getattr(self, "_flush_brpop_reauth", None)
            if reauth is not None:
                reauth()
        if self._closing or not queues:
            # kombu's Channel.close reads the outstanding reply; taking now would leave
            # messages in 'unacked' until the visibility timeout.
            raise Empty()
        delivered = False
        for queue in queues:
            room = self.qos.take_room()
            if room <= 0:
                break
            taken = self.take(queue, room)
            if taken:
                delivered = True
                self.deliver(queue, taken)
        if not delivered:
            raise Empty()
        return True

    # -- taking -----------------------------------------------------------------------------

    def take(self, queue: str, room: int) -> list[tuple[bytes, str]]:
        """Pop messages of `queue` worth up to `room`, each recorded as unacknowledged under
        a fresh tag in the same step: (payload, tag) pairs."""
        qos = self.qos
        self._takes += 1
        estimate = 1 if qos.event_room is None else self.unknown_message_events
        with self.conn_or_acquire() as client:
            if self._take_script is None:
                self._take_script = client.register_script(TAKE_SCRIPT)
            lists = dict.fromkeys(self._key(self._q_for_pri(queue, p)) for p in self.priority_steps)
            flat: list[bytes] = self._take_script(
                keys=[self._key(qos.unacked_index_key), self._key(qos.unacked_key), *lists],
                args=[
                    room,
                    time.time(),
                    json.dumps(queue),
                    f"{self._tag_prefix}.{self._takes}",
                    estimate,
                ],
                client=client,
            )
        return [(flat[i], flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    def deliver(self, queue: str, taken: Sequence[tuple[bytes, str]]) -> None:
        """Build each taken item into a kombu Message and hand it to the queue's consumer;
        an item that cannot be delivered is refused (see `Refused`), never raised."""
        consumer = self._consumers_by_queue.get(queue)
        for item, tag in taken:
            try:
                envelope = decode_envelope(item)
            except (ValueError, UnicodeDecodeError) as exc:
                self.refuse(Refused(queue, item, tag, f"not JSON: {exc}", None))
                continue
            properties = envelope.get("properties") if isinstance(envelope, dict) else None
            if not isinstance(properties, dict) or not isinstance(
                properties.get("delivery_info"), dict
            ):
                self.refuse(Refused(queue, item, tag, "not a kombu message envelope", None))
                continue
            # The worker's tag, whatever the producer wrote: it names this delivery's entry.
            properties["delivery_tag"] = tag
            try:
                message = self.Message(envelope, channel=self)
                if message.errors:  # kombu keeps a failed decompression here
                    raise message.errors[0][1]
            except Exception as exc:
                reason = f"the envelope cannot be read: {type(exc).__name__}: {exc}"
                self.refuse(Refused(queue, item, tag, reason, envelope))
                continue
            if consumer is None:  # cancelled meanwhile: put it back at once
                self.qos.restore_by_tag(tag)
                continue
            callback, no_ack = consumer
            message.raw_item = item  # the item as taken: what is forwarded or set aside
            if not no_ack:
                virtual.QoS.append(self.qos, message, tag)
            try:
                callback(message)
            except Exception as exc:  # a consumer's bug must not stop the event loop
                log.exception("queue %s: delivering message %s failed", queue, tag)
                virtual.QoS.ack(self.qos, tag)
                self.settle(queue, tag, aside=(item, f"the consumer failed on it: {exc!r}"))

    def refuse(self, refused: Refused) -> None:
        """Hand an undeliverable item to `on_refused`, or set it aside."""
        hook = self.on_refused
        if hook is not None:
            try:
                hook(self, refused)
                return
            except Exception:
                log.exception("queue %s: the refusal hook failed", refused.queue)
        self.settle(refused.queue, refused.tag, aside=(refused.item, refused.reason))

    def settle(
        self,
        queue: str,
        tag: str,
        *,
        aside: tuple[bytes, str] | None = None,
        forward_to: tuple[str, bytes] | None = None,
    ) -> None:
        """Remove a taken item's `unacked` entry and, in the same MULTI, set it aside with its
        reason or forward it to another queue's list: it is never in neither place."""
        qos = self.qos
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            if aside is not None:
                item, reason = aside
                log.error("queue %s: set aside an item (%s)", queue, reason)
                pipe.lpush(
                    self._key(undecodable_key(queue)), set_aside_record(queue, item, reason, tag)
                )
            if forward_to is not None:
                target, item = forward_to
                pipe.lpush(self._key(target), item)
            qos._remove_from_indices(tag, pipe)
            pipe.execute()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with this module's Channel."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The Sentinel variant: kombu's master discovery, this module's taking."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with this module's Channel (for `sentinel://` URLs)."""

    Channel = SentinelChannel


def key_names() -> dict[str, str]:
    """The Redis key names the transport uses (for `ai-usage check` and the bench)."""
    return {
        "unacked": Channel.unacked_key,
        "unacked_index": Channel.unacked_index_key,
        "priority_separator": Channel.sep,
    }


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a kombu queue: its own, and one per priority (queue + separator +
    n), any of 1-9 so that a non-default priority_steps is counted too."""
    return [queue] + [f"{queue}{Channel.sep}{n}" for n in range(1, 10)]
