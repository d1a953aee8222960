"""The ingest bootstep: a Celery consumer step (Celery's documented extension point) that
consumes the ingest queue with its own kombu Consumer, batches events, writes them, and
acknowledges each message after its events are committed or dead-lettered.

- Room is counted in events: the transport takes messages while `held < max_held` (default
  two batches), so a worker never hoards a backlog (during a database outage it stays in
  Redis) and several workers share it.
- Every message ends as written events, dead letters, a task forwarded to the queue Celery
  consumes, or an item set aside with its reason (worker.consumer.envelopes): none is dropped
  and none stops the worker.
- Warm shutdown (SIGTERM): the step stops taking, writes what it holds within
  AI_USAGE_SHUTDOWN_DRAIN_S, cancels a write still stuck at the deadline, and puts every message
  not written back on the queue at once (not after the visibility timeout).
- It refreshes a heartbeat key in Redis that `ai-usage check` reads.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import bootsteps
from kombu import Consumer, Queue
from kombu.transport import virtual

from worker import metrics
from worker.client.envelope import QUEUE
from worker.consumer.backlog import HEARTBEAT_PREFIX, HEARTBEAT_TTL_S, read_backlog
from worker.consumer.batcher import Batcher
from worker.consumer.envelopes import (
    Events,
    Forward,
    SetAside,
    classify,
    decode_event,
    readable_body,
)
from worker.consumer.items import Refused
from worker.consumer.runtime import tune
from worker.consumer.transport import Channel
from worker.ledger.db import get_engine
from worker.ledger.ingest import store_batch
from worker.ledger.pricing import default_pricer
from worker.ledger.rows import MalformedMessage, PreparedBatch, WriteResult, prepare_batch
from worker.settings import PERIODIC_QUEUE, get_settings

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0


class IngestStep(bootsteps.ConsumerStep):
    """Consumes the ingest queue; see the module docstring."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        s = get_settings()
        self.settings = s
        self.max_held = s.prefetch_events or 2 * s.batch_max_events
        self.batcher = Batcher(
            self._store,
            prepare=self._prepare,
            executor=ThreadPoolExecutor(1, thread_name_prefix="ai-usage-writer"),
            max_events=s.batch_max_events,
            max_bytes=s.batch_max_bytes,
            max_wait_s=s.batch_max_wait_ms / 1000,
            retry_max_s=s.db_retry_max_s,
            acknowledge=acknowledge,
        )
        self.stopping = False
        self._timers: list[Any] = []
        self._writer: Any = None  # the psycopg2 connection of the write in progress
        self._writer_lock = threading.Lock()
        self._hostname = getattr(parent, "hostname", None) or socket.gethostname()

    # -- the consumer ---------------------------------------------------------------------

    def get_consumers(self, channel: Any) -> list[Consumer]:
        if isinstance(channel, Channel):
            channel.qos.event_room = self.room
            channel.on_refused = self.on_refused
        else:  # pragma: no cover - the app always selects worker.consumer.transport
            log.warning("the broker transport is not worker.consumer.transport: no event room")
        return [
            Consumer(
                channel,
                queues=[Queue(QUEUE, routing_key=QUEUE)],
                on_message=self.on_message,
                accept=["json"],
                no_ack=False,
            )
        ]

    def start(self, c: Any) -> None:
        task_consumer = getattr(c, "task_consumer", None)
        if task_consumer is not None and task_consumer.consuming_from(QUEUE):
            # An old command line (`-Q ai_usage`): Celery's own consumer must not take ingest
            # messages (it drops unknown tasks and acknowledges bad bodies).
            log.warning(
                "queue %s is consumed by the ingest step, not by Celery's task consumer:"
                " run the worker with -Q %s",
                QUEUE,
                PERIODIC_QUEUE,
            )
            task_consumer.cancel_by_queue(QUEUE)
        self.stopping = False
        super().start(c)
        self._arm_timers(c)
        tune(self.settings)  # once: start-up is over

    def room(self) -> int:
        """Events the worker may still take."""
        if self.stopping:
            return 0
        return self.max_held - self.batcher.held_events

    def on_message(self, message: Any) -> None:
        channel = message.channel
        tag = message.delivery_tag
        headers = message.headers if isinstance(message.headers, dict) else {}
        task = headers.get("task")
        body = message.body
        if not isinstance(body, bytes):  # a producer's body that kombu did not decode
            body = b"" if body is None else str(body).encode("utf-8", "surrogatepass")
        outcome = classify(
            task if isinstance(task, str) else None,
            message.content_type,
            body,
            is_task=lambda name: name in self._app_tasks(),
            forward_queue=PERIODIC_QUEUE,
        )
        if isinstance(outcome, Events):
            if "ai_usage_events" not in headers:
                _learn_size(channel, len(outcome.events))
            self.batcher.add(outcome.events, len(body), (channel, tag))
            return
        virtual.QoS.ack(channel.qos, tag)  # in-memory: settled below in Redis
        item: bytes = getattr(message, "raw_item", b"")
        if isinstance(outcome, Forward):
            log.info("forwarded task %s from %s to %s", outcome.task, QUEUE, outcome.queue)
            channel.settle(QUEUE, tag, forward_to=(outcome.queue, item))
        else:
            assert isinstance(outcome, SetAside)
            channel.settle(QUEUE, tag, aside=(item, outcome.reason))

    def on_refused(self, channel: Channel, refused: Refused) -> None:
        """An item the transport could not build into a message: its events, if its body can
        be read, are dead-lettered with the reason (replay lands them); else it is set aside."""
        envelope = refused.envelope
        body = readable_body(envelope, channel.decode_body) if envelope else None
        if body is not None and envelope is not None:
            headers = envelope.get("headers")
            task = headers.get("task") if isinstance(headers, dict) else None
            outcome = classify(
                task if isinstance(task, str) else None,
                envelope.get("content-type"),
                body,
                is_task=lambda name: False,
                forward_queue=PERIODIC_QUEUE,
            )
            if isinstance(outcome, Events) and outcome.events:
                reason = f"message: {refused.reason}; the event was not recorded"
                letters = [
                    MalformedMessage(reason, e.payload if isinstance(e, MalformedMessage) else e)
                    for e in (decode_event(x) for x in outcome.events)
                ]
                self.batcher.add(letters, len(body), (channel, refused.tag))
                return
        channel.settle(refused.queue, refused.tag, aside=(refused.item, refused.reason))

    def _app_tasks(self) -> Any:
        from worker.consumer.app import app

        return app.tasks

    # -- writing ----------------------------------------------------------------------------

    def _prepare(self, payloads: list[Any]) -> PreparedBatch:
        # Events stay raw JSON until here: the fast path decodes them straight into its
        # struct; decode_event restores kombu's tagged values for the schema when it cannot.
        return prepare_batch(payloads, default_pricer(), decode_event)

    def _store(self, batch: PreparedBatch) -> WriteResult:
        return store_batch(get_engine(), batch, on_connection=self._remember_writer)

    def _remember_writer(self, connection: Any) -> None:
        with self._writer_lock:
            self._writer = connection

    def _cancel_write(self) -> None:
        """Cancel the statement the writer thread waits on (psycopg2's cancel is thread-safe):
        its transaction rolls back and its messages stay unacknowledged."""
        with self._writer_lock:
            connection = self._writer
        if connection is not None:
            try:
                connection.cancel()
            except Exception as exc:  # already finished, or the server is gone
                log.debug("cancel of the stuck write failed: %s", exc)

    # -- timers -------------------------------------------------------------------------------

    def _arm_timers(self, c: Any) -> None:
        """(Re)register the timers on every (re)start of the consumer: on a broker connection
        loss Celery clears the hub's timers (celery.worker.loops.asynloop)."""
        for entry in self._timers:
            entry.cancel()
        s = self.settings
        self._timers = [
            c.timer.call_repeatedly(max(0.01, s.batch_max_wait_ms / 4000), self.batcher.tick),
            # kombu sweeps for messages whose visibility timeout passed (a crashed worker's)
            # only every 100 s, whatever the timeout; sweep every half timeout (<= 30 s).
            c.timer.call_repeatedly(min(30.0, s.visibility_timeout / 2), self._restore_expired),
            c.timer.call_repeatedly(HEARTBEAT_EVERY_S, self.heartbeat),
        ]
        self.heartbeat()

    def _channel(self) -> Any:
        consumers = self.consumers or []
        return consumers[0].channel if consumers else None

    def _restore_expired(self) -> None:
        channel = self._channel()
        try:
            if channel is not None:
                channel.qos.restore_visible(num=None, interval=1)
        except Exception:  # a broker outage: the next sweep tries again
            log.debug("unacked-message sweep failed", exc_info=True)

    def heartbeat(self) -> None:
        """Refresh this worker's key (what it holds, and when) for `ai-usage check`, and the
        queue gauges from the same reading (the signals `check` fails on)."""
        channel = self._channel()
        if channel is None:
            return
        now = time.time()
        state = {
            "hostname": self._hostname,
            "pid": os.getpid(),
            "held_events": self.batcher.held_events,
            "at": now,
        }
        try:
            with channel.conn_or_acquire() as client:
                client.set(HEARTBEAT_PREFIX + self._hostname, json.dumps(state), ex=HEARTBEAT_TTL_S)
                backlog = read_backlog(client, self.settings.visibility_timeout, now)
        except Exception:
            log.debug("heartbeat failed", exc_info=True)
            return
        metrics.record_backlog(
            depth=backlog.depth,
            unacked=backlog.unacked,
            stale_unacked=backlog.stale_unacked,
            oldest_age_s=backlog.oldest_age_s,
            set_aside=backlog.set_aside,
            held_events=self.batcher.held_events,
            at=now,
        )

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, c: Any) -> None:
        """Warm shutdown (never a reconnect): stop taking, write what is held within the
        deadline, and hand back at once whatever could not be written."""
        self.stopping = True
        for consumer in self.consumers or []:
            try:
                consumer.cancel()
            except Exception:
                log.debug("cancel failed", exc_info=True)
        deadline = self.settings.shutdown_drain_s
        started = time.monotonic()
        held = self.batcher.held_events
        ok = self.batcher.drain(timeout=deadline)
        if not ok and self.batcher.held_events:
            self._cancel_write()
            self.batcher.drain(timeout=5)
        back = self.batcher.unwritten()
        for channel, tag in back:
            try:
                channel.qos.restore_by_tag(tag, leftmost=False)
                virtual.QoS.ack(channel.qos, tag)
            except Exception:  # the broker is gone: the visibility timeout brings them back
                log.warning(
                    "could not put message %s back; it returns after the visibility timeout", tag
                )
        log.info(
            "drained at shutdown: %d events held, %d messages put back, %.2fs",
            held,
            len(back),
            time.monotonic() - started,
        )
        for entry in self._timers:
            entry.cancel()
        channel = self._channel()
        if channel is not None:
            try:
                with channel.conn_or_acquire() as client:
                    client.delete(HEARTBEAT_PREFIX + self._hostname)
            except Exception:
                log.debug("heartbeat removal failed", exc_info=True)


def _learn_size(channel: Any, events: int) -> None:
    """Keep the estimate of a message of unknown size near the largest seen lately."""
    if isinstance(channel, Channel):
        estimate = channel.unknown_message_events
        channel.unknown_message_events = max(1, events, estimate - estimate // 8)


def acknowledge(receipts: Sequence[Any]) -> None:
    """Acknowledge messages: (channel, tag) pairs sharing a channel in one pipeline; a plain
    callable (tests) is called."""
    by_channel: dict[int, tuple[Any, list[str]]] = {}
    for receipt in receipts:
        if callable(receipt):
            receipt()
            continue
        channel, tag = receipt
        by_channel.setdefault(id(channel), (channel, []))[1].append(tag)
    for channel, tags in by_channel.values():
        channel.qos.ack_many(tags)
