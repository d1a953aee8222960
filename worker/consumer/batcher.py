"""Coalesces incoming messages into database batches, acknowledging each message only after
every event it carries is committed or dead-lettered.

This is the broker-free half of the worker's batching; the ingest bootstep
(worker.consumer.step) feeds it. It is driven from one thread (the worker's consumer loop):
`add()` for each message and `tick()` from a timer. With an executor, the database half of a
batch runs on a writer thread while the consumer thread receives and prepares the next batch
(psycopg2 releases the GIL while it waits on the server), at most one batch in the database at
a time; acknowledgements are always sent from the consumer thread. A failed write keeps every
message pending (unacknowledged) and is retried with exponential backoff, so a database outage
loses nothing and needs no restart.

One transaction writes at most `max_events` events: a message carrying more is split into
parts written by several transactions (each idempotent by event id) and acknowledged once the
last part is in, so whatever a message carries, a transaction and its memory stay bounded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from worker import metrics
from worker.ledger.rows import WriteResult

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Receipt:
    """What acknowledges one message (a callable by default, or whatever the Batcher's
    `acknowledge` takes), once all of its parts are written."""

    ack: Any
    parts: int = 1


@dataclass(eq=False)
class Pending:
    """One message, or one part of a large one: its events, its size, its receipt."""

    events: Sequence[Any]
    size: int
    receipt: Receipt


def _call_each(acks: list[Any]) -> None:
    for ack in acks:
        ack()


def _same(payloads: list[Any]) -> Any:
    return payloads


class Batcher:
    """Buffers messages and writes them when a batch is full or its oldest message is due.

    `prepare(payloads)` runs on the calling thread; `store(prepared)` on `executor` if given."""

    def __init__(
        self,
        store: Callable[[Any], WriteResult],
        *,
        max_events: int,
        max_bytes: int,
        max_wait_s: float,
        retry_max_s: float = 10.0,
        prepare: Callable[[list[Any]], Any] = _same,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        acknowledge: Callable[[list[Any]], None] = _call_each,
    ) -> None:
        self._store = store
        self._prepare = prepare
        self._executor = executor
        self._acknowledge = acknowledge
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        self._pending: deque[Pending] = deque()
        self._events = 0
        self._bytes = 0
        self._oldest: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._in_flight: tuple[Future[WriteResult], list[Pending]] | None = None
        self._in_flight_events = 0

    @property
    def pending_events(self) -> int:
        """Events received and not yet handed to the database."""
        return self._events

    @property
    def held_events(self) -> int:
        """Events received and not yet acknowledged: pending, and in the database now."""
        return self._events + self._in_flight_events

    def add(self, events: Sequence[Any], size: int, ack: Any) -> None:
        """Take one message; writes at once if that fills the batch (unless backing off)."""
        if not self._pending:
            self._oldest = self._clock()
        step = self.max_events
        if len(events) <= step:
            self._pending.append(Pending(events, size, Receipt(ack)))
        else:
            parts = [events[i : i + step] for i in range(0, len(events), step)]
            receipt = Receipt(ack, len(parts))
            share = size // len(parts) + 1
            self._pending.extend(Pending(part, share, receipt) for part in parts)
            size = share * len(parts)
        self._events += len(events)
        self._bytes += size
        if self._full() and self._clock() >= self._retry_at:
            self.flush()

    def tick(self) -> None:
        """Called from a timer: settles a finished write, and writes the batch once its oldest
        message has waited enough."""
        if self._in_flight is not None and self._in_flight[0].done():
            self._settle()
        if not self._pending or self._clock() < self._retry_at:
            return
        assert self._oldest is not None
        if self._full() or self._clock() - self._oldest >= self.max_wait_s:
            self.flush()

    def _full(self) -> bool:
        return self._events >= self.max_events or self._bytes >= self.max_bytes

    def flush(self) -> bool:
        """Write everything pending, in batches within the caps. True if nothing failed."""
        while self._pending:
            taken = self._take()
            try:
                prepared = self._prepare([event for p in taken for event in p.events])
            except Exception as exc:  # a bug, not bad input: keep the messages, retry later
                self._failed(taken, exc)
                return False
            # The previous batch's database work overlapped the preparation of this one.
            if not self._settle():
                self._put_back(taken)
                return False
            if self._executor is None:
                try:
                    result = self._store(prepared)
                except Exception as exc:
                    self._failed(taken, exc)
                    return False
                self._succeeded(taken, result)
            else:
                self._in_flight = (self._executor.submit(self._store, prepared), taken)
                self._in_flight_events = sum(len(p.events) for p in taken)
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Write everything and wait for it (worker shutdown, tests), for at most `timeout`
        seconds for the batch in the database. True if all succeeded."""
        ok = self.flush()
        return self._settle(timeout) and ok

    def unwritten(self) -> list[Any]:
        """The acknowledgements of every message not (wholly) written: what a stopping worker
        must hand back to the broker. Forgets them."""
        acks: dict[int, Any] = {}
        pending = list(self._pending)
        if self._in_flight is not None:
            pending += self._in_flight[1]
            self._in_flight = None
            self._in_flight_events = 0
        for p in pending:
            acks.setdefault(id(p.receipt), p.receipt.ack)
        self._pending.clear()
        self._events = self._bytes = 0
        self._oldest = None
        return list(acks.values())

    def _settle(self, timeout: float | None = None) -> bool:
        """Wait for the batch in the database, if any: ack it, or put it back on failure."""
        if self._in_flight is None:
            return True
        future, taken = self._in_flight
        try:
            result = future.result(timeout)
        except FutureTimeout:
            return False  # still in the database: kept in flight
        except Exception as exc:
            self._in_flight = None
            self._in_flight_events = 0
            self._failed(taken, exc)
            return False
        self._in_flight = None
        self._in_flight_events = 0
        self._succeeded(taken, result)
        return True

    def _succeeded(self, taken: list[Pending], result: WriteResult) -> None:
        self._failures = 0
        self._retry_at = 0.0
        done: list[Any] = []
        for p in taken:
            p.receipt.parts -= 1
            if p.receipt.parts == 0:
                done.append(p.receipt.ack)
        try:
            self._acknowledge(done)
        except Exception as exc:
            # Committed but not acknowledged: the broker will redeliver, and the idempotent
            # write will count those events as duplicates, not twice.
            log.warning("could not acknowledge %d messages: %s", len(done), exc)
        counts = result.counts()
        log.info(
            "batch written: %s messages=%d seconds=%.3f",
            " ".join(f"{k}={v}" for k, v in counts.items()),
            len(done),
            result.seconds,
            extra={"batch": {**counts, "messages": len(done), "seconds": round(result.seconds, 4)}},
        )

    def _failed(self, taken: list[Pending], exc: Exception) -> None:
        self._put_back(taken)
        self._failures += 1
        delay = min(self.retry_max_s, 0.5 * 2 ** (self._failures - 1))
        self._retry_at = self._clock() + delay
        metrics.WRITE_FAILURES.inc()
        log.warning(
            "batch of %d events not written (%s); %d events kept unacknowledged, retry in %.1fs",
            sum(len(p.events) for p in taken),
            exc,
            self._events,
            delay,
        )

    def _put_back(self, taken: list[Pending]) -> None:
        """Return messages to the front, in order; none of them is acknowledged."""
        self._pending.extendleft(reversed(taken))
        self._events += sum(len(p.events) for p in taken)
        self._bytes += sum(p.size for p in taken)
        self._oldest = self._clock()

    def _take(self) -> list[Pending]:
        """Remove whole messages (or parts) from the front, up to the caps (at least one)."""
        taken: list[Pending] = []
        events = size = 0
        while self._pending:
            nxt = self._pending[0]
            if taken and (
                events + len(nxt.events) > self.max_events or size + nxt.size > self.max_bytes
            ):
                break
            taken.append(self._pending.popleft())
            events += len(nxt.events)
            size += nxt.size
        self._events -= events
        self._bytes -= size
        self._oldest = self._clock() if self._pending else None
        return taken
