"""Celery tasks (thin: the logic is in worker.ledger.ingest, worker.consumer.batcher and worker.ledger.rollups).

`ai_usage.record` (one event as kwargs) and `ai_usage.record_batch` (one list of events) are
not run one message at a time: their strategy hands each message to the consumer's Batcher,
which writes many messages per transaction and acknowledges each after the commit.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError

from worker.client.envelope import RECORD, RECORD_BATCH
from worker.consumer.app import app
from worker.consumer.batcher import Batcher
from worker.consumer.transport import BulkReceiver, ack_messages
from worker.ledger.db import get_engine
from worker.ledger.ingest import (
    MalformedMessage,
    PreparedBatch,
    WriteResult,
    prepare_batch,
    store_batch,
    write_batch,
)
from worker.ledger.pricing import default_pricer
from worker.settings import QUEUE, get_settings

log = logging.getLogger(__name__)


def _write(payloads: list[Any]) -> WriteResult:
    return write_batch(get_engine(), payloads, default_pricer())


def _prepare(payloads: list[Any]) -> PreparedBatch:
    return prepare_batch(payloads, default_pricer())


def _store(batch: PreparedBatch) -> WriteResult:
    return store_batch(get_engine(), batch)


def _consumer_batcher(consumer: Any) -> Batcher:
    """One Batcher per worker consumer, shared by both ingest tasks, ticked by its timer."""
    batcher: Batcher | None = getattr(consumer, "_ai_usage_batcher", None)
    if batcher is None:
        s = get_settings()
        batcher = Batcher(
            _store,
            prepare=_prepare,
            executor=ThreadPoolExecutor(1, thread_name_prefix="ai-usage-writer"),
            max_events=s.batch_max_events,
            max_bytes=s.batch_max_bytes,
            max_wait_s=s.batch_max_wait_ms / 1000,
            retry_max_s=s.db_retry_max_s,
            acknowledge=ack_messages,
        )
        consumer._ai_usage_batcher = batcher
    _arm_timers(consumer, batcher)
    return batcher


def _arm_timers(consumer: Any, batcher: Batcher) -> None:
    """(Re)register the batcher's timers on every (re)start of the consumer: on a broker
    connection loss Celery clears the hub's timer (celery.worker.loops.asynloop calls
    hub.timer.clear()), then rebuilds the task strategies once reconnected."""
    s = get_settings()
    for entry in getattr(consumer, "_ai_usage_timers", ()):
        entry.cancel()
    consumer._ai_usage_timers = [
        consumer.timer.call_repeatedly(max(0.01, s.batch_max_wait_ms / 4000), batcher.tick),
        # kombu sweeps for messages whose visibility timeout passed (a crashed worker's) only
        # every 100 s, whatever the timeout; sweep every half timeout (at most 30 s) instead.
        consumer.timer.call_repeatedly(
            min(30.0, s.visibility_timeout / 2), _restore_expired, (consumer,)
        ),
    ]


def _consumer_receiver(consumer: Any, batcher: Batcher) -> BulkReceiver:
    receiver: BulkReceiver | None = getattr(consumer, "_ai_usage_receiver", None)
    if receiver is None:
        receiver = BulkReceiver(QUEUE, lambda: batcher.max_events - batcher.pending_events)
        consumer._ai_usage_receiver = receiver
    return receiver


def _restore_expired(consumer: Any) -> None:
    try:
        qos = consumer.task_consumer.channel.qos
        if hasattr(qos, "restore_visible"):  # the Redis transport
            qos.restore_visible(num=None, interval=1)
    except Exception:  # a broker outage: the next sweep tries again
        log.debug("unacked-message sweep failed", exc_info=True)


def events_of(task_name: str, args: Any, kwargs: Any) -> list[Any]:
    """The events a message carries. A malformed message becomes a MalformedMessage, so that it
    is dead-lettered with its reason rather than dropped."""
    if task_name == RECORD:
        if args:
            return [
                MalformedMessage(
                    "message: ai_usage.record takes the event as keyword arguments, got positional"
                    " arguments",
                    {"args": args, "kwargs": kwargs},
                )
            ]
        return [kwargs]
    if (
        isinstance(args, list | tuple)
        and len(args) == 1
        and isinstance(args[0], list)
        and (not kwargs)
    ):
        return list(args[0])
    return [
        MalformedMessage(
            "message: ai_usage.record_batch takes one positional list of events",
            {"args": args, "kwargs": kwargs},
        )
    ]


def _message_events(task_name: str, message: Any) -> list[Any]:
    """The events of a JSON message; a body that is not a Celery task body (which Celery would
    log and drop, or which would raise out of the consumer) is dead-lettered instead."""
    try:
        decoded = message.decode()
    except DecodeError as exc:
        body = message.body
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return [MalformedMessage(f"message: the body is not valid JSON ({exc})", {"body": text})]
    if isinstance(decoded, dict) and "args" in decoded:  # protocol 1
        return events_of(task_name, decoded.get("args", ()), decoded.get("kwargs", {}))
    if isinstance(decoded, list | tuple) and len(decoded) == 3:  # protocol 2
        return events_of(task_name, decoded[0], decoded[1])
    return [
        MalformedMessage(
            "message: the body is not a Celery task body ([args, kwargs, embed])",
            {"body": decoded},
        )
    ]


def batching_strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Any:
    """Celery strategy: buffer the message in the Batcher instead of running the task."""
    batcher = _consumer_batcher(consumer)
    receiver = _consumer_receiver(consumer, batcher)
    name = task.name

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **__: Any) -> None:
        if message.content_type != "application/json":
            # Checked before decoding: a pickle body is never deserialised.
            raise ContentDisallowed(f"refusing content type {message.content_type!r}")
        batcher.add(_message_events(name, message), len(message.body), message)
        receiver.after_message(message)

    return handler


class BatchedTask(app.Task):  # type: ignore[misc]
    Strategy = "worker.consumer.tasks:batching_strategy"


@app.task(name=RECORD, base=BatchedTask, bind=True)
def record(self: Any, **event: Any) -> dict[str, int]:
    """Store one usage event (kwargs). Run directly (not via the worker), it writes at once."""
    return _summary(_write([event]))


@app.task(name=RECORD_BATCH, base=BatchedTask, bind=True)
def record_batch(self: Any, events: list[Any]) -> dict[str, int]:
    """Store a list of usage events. Run directly (not via the worker), it writes at once."""
    return _summary(_write(list(events)))


@app.task(name="ai_usage.rollup_monthly", acks_late=True)
def rollup_monthly() -> dict[str, Any]:
    """Recompute the current month and every month with changed rows (Beat, every 5 min)."""
    from worker.ledger.rollups import run_rollup

    return run_rollup(get_engine()).as_dict()


def _summary(result: WriteResult) -> dict[str, int]:
    return {
        "received": result.received,
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "dead_lettered": result.dead_lettered,
        "unpriced": result.unpriced,
    }
