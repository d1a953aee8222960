"""The client's background mode: a bounded queue of events and the thread that publishes it.

`record()` appends one event, its JSON already escaped as the inside of a JSON string (done in
the caller, so that the thread only joins strings and holds the GIL as little as possible). The
thread sends full batches at once and a partial one every `flush_interval`. Under load it
pauses PUSH_EVERY_S between bursts of rounds, each round one LPUSH of up to PUSH_EVENTS
events: a round costs the application's threads GIL hand-offs whatever it carries
(worker.client.push), and the join of a round holds the GIL in one stretch. While the broker
is down it retries the same events with backoff; past `max_queue` new events are dropped,
counted and logged as one line per burst.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The client logs under one name, the one it had before the buffer had a module of its own.
log = logging.getLogger("worker.client.publisher")

#: A burst of drops (past max_queue) is logged as one line with its count per this interval.
DROP_LOG_EVERY_S = 10.0
#: While full batches keep coming, the thread pushes at most this often. A buffer half full
#: cuts the pause short.
PUSH_EVERY_S = 0.1
#: The most events one round pushes (in messages of `batch_size`; one message at least). The
#: thread holds the GIL while it joins a round (about 1 ms for 3,000 events, here): measured in
#: the bench's application loop, rounds of 1,000 events kept its longest stalls near those of
#: one message a round (1.2-2.3 ms against 0.8-2.4) at nearly the throughput of rounds of up
#: to 8,000 (29-32k requests/s against 31-35k; 26-31k for one message).
PUSH_EVENTS = 1000
_FULL = "client buffer full"

#: Sends one round: a message for each batch of events.
Send = Callable[[list[list[str]]], None]


@dataclass
class Tally:
    """What a client's buffers did: the public counts, kept across a fork's new buffer."""

    dropped: int = 0
    published: int = 0
    publish_failures: int = 0
    metric: Any = None  # a prometheus_client Counter of drops, if the client has a registry
    _unlogged: int = 0
    _logged_at: float = -DROP_LOG_EVERY_S

    def drop(self, n: int, why: str, max_queue: int) -> None:
        """Count `n` dropped events; log a summary at most once per DROP_LOG_EVERY_S (a burst
        past max_queue is one line with its count, not one line per event)."""
        if not n:
            return
        self.dropped += n
        if self.metric is not None:
            self.metric.inc(n)
        if why != _FULL:
            self.log_full_buffer_drops(max_queue)  # their own line first, with their reason
            log.warning("%d usage events dropped (%s); %d dropped in all", n, why, self.dropped)
            return
        self._unlogged += n
        if time.monotonic() - self._logged_at >= DROP_LOG_EVERY_S:
            self.log_full_buffer_drops(max_queue)

    def log_full_buffer_drops(self, max_queue: int) -> None:
        if self._unlogged:
            log.warning(
                "%d usage events dropped (%s, max_queue=%d) since the last such line;"
                " %d dropped in all",
                self._unlogged,
                _FULL,
                max_queue,
                self.dropped,
            )
        self._unlogged = 0
        self._logged_at = time.monotonic()


class Buffer:
    """The queue and its publishing thread (started here). `send` publishes one round and
    raises if it could not; `one_per_round`: one message a round (a `publisher` callable
    sends each alone, and a retry of the round then repeats no message that went)."""

    def __init__(
        self,
        send: Send,
        tally: Tally,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        retry_max_s: float,
        one_per_round: bool = False,
    ) -> None:
        self._send = send
        self.tally = tally
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.retry_max_s = retry_max_s
        self._one_per_round = one_per_round
        self._queue: deque[str] = deque()
        self._in_flight = 0
        self._wake = threading.Event()  # a full batch is ready (set by put())
        # Cuts a retry backoff short: set by flush() and close() only. put() must not, or
        # while the broker is down every call would make the thread retry at once, and each
        # retry holds the GIL the application's threads are waiting for.
        self._retry_now = threading.Event()
        # Cuts the pause between two rounds short: flush(), close(), put() once half full.
        self._hurry = threading.Event()
        self._hurry_at = max(batch_size, max_queue // 2)
        self._idle = threading.Condition()
        self._stop = False
        self._drain = False  # set by flush(): publish partial batches too
        self._deadline = 0.0
        # Set by close() at its deadline: from then on the counts are final, and nothing the
        # thread (perhaps stuck in a socket call to a hung Redis) does changes them.
        self._finalized = False
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ai-usage-client", daemon=True)
        self._thread.start()

    def put(self, escaped: str) -> None:
        """Append one event (its JSON escaped as the inside of a JSON string), or count it
        dropped if the queue is full."""
        if len(self._queue) >= self.max_queue or self._finalized:
            self.tally.drop(1, _FULL, self.max_queue)
            return
        self._queue.append(escaped)
        waiting = len(self._queue)
        # is_set() first: set() takes a lock, and while the thread pauses between rounds
        # every call finds a full batch waiting.
        if waiting >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        if waiting >= self._hurry_at and not self._hurry.is_set():
            self._hurry.set()

    def pending(self) -> int:
        """Events put but not yet published."""
        return len(self._queue) + self._in_flight

    def flush(self, timeout: float) -> bool:
        """Publish everything buffered; True if the buffer emptied within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending():
            self._drain = True
            self._wake.set()
            self._retry_now.set()
            self._hurry.set()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._idle:
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float) -> None:
        """Flush with a deadline, then stop the thread; whatever was not confirmed published
        by the deadline is counted dropped (see UsageClient.close)."""
        self._deadline = time.monotonic() + timeout
        self._stop = True
        self._wake.set()
        self._retry_now.set()
        self._hurry.set()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._count_lock:
            if not self._finalized:
                self._finalized = True
                left = len(self._queue) + self._in_flight
                self._queue.clear()
                self._in_flight = 0
                self.tally.drop(left, "not published before the close deadline", self.max_queue)

    def _run(self) -> None:
        failures = 0
        while True:
            if self._stop:
                timed_out = True  # closing: no more waiting, publish what is left
            else:
                timed_out = not self._wake.wait(self.flush_interval)
                self._wake.clear()
            # Full batches go at once; a partial one waits for the interval (or a flush), so
            # that a steady trickle is sent as few, large messages.
            drain = timed_out or self._stop or self._drain
            pushed = False
            while self._queue and (drain or len(self._queue) >= self.batch_size):
                with self._count_lock:  # close() counts queue + in flight: never neither
                    if self._finalized:
                        return
                    batch, batches = self._take(drain)
                    self._in_flight = len(batch)
                while True:
                    try:
                        self._send(batches)
                        failures = 0
                        pushed = True
                        with self._count_lock:
                            if not self._finalized:
                                self.tally.published += len(batch)
                        break
                    except Exception as exc:
                        if self._finalized:
                            return  # close() counted this batch as dropped
                        failures += 1
                        self.tally.publish_failures += 1
                        delay = min(self.retry_max_s, 0.1 * 2 ** min(failures, 16))
                        log.warning(
                            "could not publish %d usage events (%s); retrying in %.1fs",
                            len(batch),
                            exc,
                            delay,
                        )
                        if self._stop and time.monotonic() >= self._deadline:
                            self._give_up(batch)
                            break
                        self._retry_now.wait(delay)
                        self._retry_now.clear()
                with self._count_lock:
                    if not self._finalized:
                        self._in_flight = 0
                if self._stop and time.monotonic() >= self._deadline:
                    self._give_up(list(self._queue))
                    self._queue.clear()
            if self._finalized:
                return  # close() gave up waiting and counted what was left
            if not self._queue:
                self._drain = False
            with self._idle:
                self._idle.notify_all()
            # close() may have come while a partial batch was held back: go round once more.
            if self._stop and not self._queue:
                return
            if pushed and not drain:
                self._hurry.wait(PUSH_EVERY_S)  # let full batches gather for one round
                self._hurry.clear()

    def _take(self, drain: bool) -> tuple[list[str], list[list[str]]]:
        """The events of one round, and its batches: full ones (a partial one too if `drain`),
        at most one round's worth."""
        taken: list[str] = []
        batches: list[list[str]] = []
        queue = self._queue
        while queue and (drain or len(queue) >= self.batch_size):
            size = min(self.batch_size, len(queue))
            if batches and (self._one_per_round or len(taken) + size > PUSH_EVENTS):
                break
            batch = [queue.popleft() for _ in range(size)]
            batches.append(batch)
            taken.extend(batch)
        return taken, batches

    def _give_up(self, events: list[str]) -> None:
        with self._count_lock:
            if self._finalized:
                return  # close() has already counted them
            self.tally.drop(len(events), "not published before the close deadline", self.max_queue)
