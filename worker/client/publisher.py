"""The Python client: record one usage event per AI call, from the request path, in microseconds.

    from worker.client import UsageClient
    usage = UsageClient(broker_url="redis://localhost:6379/0")   # background mode
    usage.record(tenant_id=t, operation="generate_assessment", model="claude-3-5-sonnet-20241022",
                 input_tokens=1000, output_tokens=2000)

Background mode (the default) validates the event, appends it to a bounded in-memory queue and
returns; a daemon thread publishes `ai_usage.record_batch` messages of up to `batch_size`
events every `flush_interval_ms`, full batches sooner (several to one LPUSH, at most every
PUSH_EVERY_S). The caller is never blocked by the broker and never sees a
broker error: while the broker is down the thread retries with backoff (the same event ids, so
a retry cannot double count); past `max_queue` events are dropped, counted and logged.
Sync mode publishes one `ai_usage.record` message per call and returns once Redis holds it.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from worker.client import fast
from worker.client.envelope import (
    EMBED,
    EMBED_ESCAPED,
    QUEUE,
    RECORD,
    RECORD_BATCH,
    escape_json,
    new_id,
    redis_envelope,
)
from worker.client.errors import ConfigError
from worker.client.push import push
from worker.client.tracking import TrackingMixin, UsageTracker, extract_usage

__all__ = ["UsageClient", "UsageTracker", "extract_usage"]

log = logging.getLogger(__name__)

_live_clients: weakref.WeakSet[UsageClient] = weakref.WeakSet()

#: A burst of drops (past max_queue) is logged as one line with its count per this interval.
DROP_LOG_EVERY_S = 10.0
#: While full batches keep coming, the publishing thread pushes at most this often, every full
#: batch waiting in one LPUSH (see worker.client.push: each round costs the application a few
#: GIL hand-offs, whatever it carries). A buffer half full cuts the pause short.
PUSH_EVERY_S = 0.1
#: The most messages (of `batch_size` events) one round pushes.
PUSH_MESSAGES = 16
#: Connect and read timeout of the client's Redis connection.
SOCKET_TIMEOUT_S = 2.0

#: The one environment variable the client reads (the broker, when `broker_url` is not given).
BROKER_URL_VARIABLE = "AI_USAGE_BROKER_URL"


class UsageClient(TrackingMixin):
    """Publishes usage events to the ai_usage queue. Thread-safe; safe across fork."""

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        mode: Literal["background", "sync"] = "background",
        batch_size: int = 500,
        flush_interval_ms: int = 500,
        max_queue: int = 10_000,
        retry_max_s: float = 30.0,
        exit_timeout_s: float = 5.0,
        registry: Any = None,
        redis_client: Any = None,
        publisher: Callable[[str, list[Any], dict[str, Any]], None] | None = None,
    ) -> None:
        """`broker_url` defaults to AI_USAGE_BROKER_URL. The client reads nothing else of the
        environment (never the application's REDIS_URL, DATABASE_URL or LOG_LEVEL); without
        either, and without `redis_client` or `publisher`, it raises ConfigError here.
        `registry`: a prometheus_client registry to expose drops and buffer depth in.
        `redis_client`: a redis-py client to publish with instead of one made from the URL.
        `publisher(task_name, args, kwargs)`: replaces Redis publishing altogether.
        """
        if mode not in ("background", "sync"):
            raise ValueError(f"mode: expected 'background' or 'sync', got {mode!r}")
        self.mode = mode
        self.batch_size = batch_size
        self.flush_interval = flush_interval_ms / 1000
        self.max_queue = max_queue
        self.retry_max_s = retry_max_s
        self.exit_timeout_s = exit_timeout_s
        self._broker_url = broker_url or os.environ.get(BROKER_URL_VARIABLE) or None
        if self._broker_url is None and redis_client is None and publisher is None:
            raise ConfigError(f"broker_url: not given, and {BROKER_URL_VARIABLE} is not set")
        self._given_redis = redis_client
        self._publisher = publisher
        self._app: Any = None
        self._app_lock = threading.Lock()
        self.dropped = 0
        self.published = 0
        self.publish_failures = 0
        self._closed = False
        self._start_buffer()
        self._dropped_metric: Any = None
        if registry is not None:
            from prometheus_client import Counter, Gauge

            self._dropped_metric = Counter(
                "ai_usage_client_events_dropped_total",
                "Usage events dropped by the client because its buffer was full.",
                registry=registry,
            )
            depth = Gauge(
                "ai_usage_client_buffer_depth",
                "Usage events waiting in the client's buffer.",
                registry=registry,
            )
            depth.set_function(lambda: len(self._queue) + self._in_flight)
        _live_clients.add(self)

    # -- recording ---------------------------------------------------------------------------

    def record(
        self,
        *,
        tenant_id: uuid.UUID | str,
        operation: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        usage_details: dict[str, int | float] | None = None,
        total_tokens: int | None = None,
        cost_usd: float | None = None,
        duration_ms: int | None = None,
        success: bool | Literal["success", "failure"] = "success",
        created_at: dt.datetime | str | None = None,
        user_id: uuid.UUID | str | None = None,
        assessment_id: uuid.UUID | str | None = None,
        lead_id: uuid.UUID | str | None = None,
        provider: str | None = None,
        id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Record one AI call; returns its event id.

        `input_tokens` counts every input token, cached or not (genai-prices' convention):
        `cache_read_tokens` and `cache_write_tokens` are parts of it. `usage_details` holds
        any other usage genai-prices prices, by its usage key (`cache_write_1h_tokens`,
        `input_audio_tokens`, `web_searches`, ...).

        Raises InvalidEvent (a ValueError naming the field) for bad input. In background mode
        nothing else is raised; in sync mode a broker error is raised after a few retries."""
        fields = {
            "id": id if id is not None else new_id(),
            "tenant_id": tenant_id,
            "user_id": user_id,
            "assessment_id": assessment_id,
            "lead_id": lead_id,
            "operation": operation,
            "model": model,
            "provider": provider,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "usage_details": usage_details,
            "total_tokens": total_tokens,
            "cost_usd": cost_usd,
            "duration_ms": duration_ms,
            "success": success,
            "created_at": created_at if created_at is not None else dt.datetime.now(dt.UTC),
        }
        now = dt.datetime.now(dt.UTC)
        event = fast.from_fields(fields, now)
        if event is not None:
            text = msgspec.json.encode(event)
            if self.mode == "sync":
                self._publish(RECORD, [], msgspec.json.decode(text), retry=True)
            else:
                self._enqueue(_escaped(text))
            return event.id
        # Not plainly valid: the schema decides, and names the field if it refuses.
        from worker.client.events import parse_event

        judged = parse_event(fields, now)
        if self.mode == "sync":
            self._publish(RECORD, [], judged.to_message(), retry=True)
        else:
            self._enqueue(escape_json(judged.model_dump_json(exclude_none=True)))
        return judged.id

    def _enqueue(self, escaped: str) -> None:
        """Append one event, its JSON already escaped as the inside of a JSON string: done in
        the caller, so that the publishing thread never escapes a whole batch holding the GIL
        (see _publish_raw)."""
        if self._pid != os.getpid():
            self._start_buffer()  # forked: the parent's thread does not exist here
        if len(self._queue) >= self.max_queue or self._finalized:
            self._count_dropped(1, "client buffer full")
            return
        self._queue.append(escaped)
        waiting = len(self._queue)
        # is_set() first: set() takes a lock, and while the thread pauses between rounds
        # every call finds a full batch waiting.
        if waiting >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        if waiting >= self._hurry_at and not self._hurry.is_set():
            self._hurry.set()

    # -- background publishing ---------------------------------------------------------------

    def _start_buffer(self) -> None:
        self._pid = os.getpid()
        self._app = None  # after a fork, never share the parent's broker socket
        # Each entry is one event already serialised to JSON (by pydantic-core, in the caller):
        # the publishing thread only joins strings, so it holds the GIL as little as possible.
        self._queue: deque[str] = deque()
        self._in_flight = 0
        self._wake = threading.Event()  # a full batch is ready (set by record())
        # Cuts a retry backoff short: set by flush() and close() only. record() must not, or
        # while the broker is down every call would make the thread retry at once, and each
        # retry holds the GIL the application's threads are waiting for.
        self._retry_now = threading.Event()
        # Cuts the pause between two rounds short: set by flush(), close(), and record() once
        # the buffer is half full.
        self._hurry = threading.Event()
        self._hurry_at = max(self.batch_size, self.max_queue // 2)
        self._idle = threading.Condition()
        self._stop = False
        self._drain = False  # set by flush(): publish partial batches too
        # Set by close() at its deadline: from then on the counts are final, and nothing the
        # thread (perhaps stuck in a socket call to a hung Redis) does changes them.
        self._finalized = False
        self._count_lock = threading.Lock()
        self._unlogged_drops = 0
        self._drops_logged_at = -DROP_LOG_EVERY_S
        self._thread: threading.Thread | None = None
        if self.mode == "background":
            self._thread = threading.Thread(target=self._run, name="ai-usage-client", daemon=True)
            self._thread.start()

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
                    batch, bodies = self._take(drain)
                    self._in_flight = len(batch)
                while True:
                    try:
                        self._push(RECORD_BATCH, bodies)
                        failures = 0
                        pushed = True
                        with self._count_lock:
                            if not self._finalized:
                                self.published += len(batch)
                        break
                    except Exception as exc:
                        if self._finalized:
                            return  # close() counted this batch as dropped
                        failures += 1
                        self.publish_failures += 1
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

    def _take(self, drain: bool) -> tuple[list[str], list[tuple[str, int]]]:
        """The events of one round, and its message bodies: full batches (a partial one too
        if `drain`), at most PUSH_MESSAGES; one for a `publisher` callable, which sends each
        alone (a retry of the round then repeats no message that went)."""
        taken: list[str] = []
        bodies: list[tuple[str, int]] = []
        queue = self._queue
        most = 1 if self._publisher is not None else PUSH_MESSAGES
        while queue and len(bodies) < most and (drain or len(queue) >= self.batch_size):
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            bodies.append(("[[[" + ",".join(batch) + "]],{}," + EMBED_ESCAPED + "]", len(batch)))
            taken.extend(batch)
        return taken, bodies

    def _give_up(self, events: list[str]) -> None:
        with self._count_lock:
            if self._finalized:
                return  # close() has already counted them
            self._count_dropped(len(events), "not published before the close deadline")

    def _count_dropped(self, n: int, why: str) -> None:
        """Count `n` dropped events; log a summary at most once per DROP_LOG_EVERY_S (a burst
        past max_queue is one line with its count, not one line per event)."""
        if not n:
            return
        self.dropped += n
        if self._dropped_metric is not None:
            self._dropped_metric.inc(n)
        if why != "client buffer full":
            self._log_full_buffer_drops()  # their own line first, with their own reason
            log.warning("%d usage events dropped (%s); %d dropped in all", n, why, self.dropped)
            return
        self._unlogged_drops += n
        if time.monotonic() - self._drops_logged_at >= DROP_LOG_EVERY_S:
            self._log_full_buffer_drops()

    def _log_full_buffer_drops(self) -> None:
        if self._unlogged_drops:
            log.warning(
                "%d usage events dropped (client buffer full, max_queue=%d) since the last"
                " such line; %d dropped in all",
                self._unlogged_drops,
                self.max_queue,
                self.dropped,
            )
        self._unlogged_drops = 0
        self._drops_logged_at = time.monotonic()

    def pending(self) -> int:
        """Events recorded but not yet published."""
        return len(self._queue) + self._in_flight

    def flush(self, timeout: float = 5.0) -> bool:
        """Publish everything buffered; True if the buffer emptied within `timeout` seconds."""
        if self.mode == "sync" or self._thread is None:
            return True
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

    def close(self, timeout: float = 5.0) -> bool:
        """Flush with a deadline, then stop the thread; returns within `timeout` (plus a few
        milliseconds) whatever Redis does: down, hung or slow. The counts are final at return:
        whatever was not confirmed published by then is counted in `dropped` and logged once
        with its count (a batch whose LPUSH was still in flight may yet reach Redis; the worker
        stores each event id once). Returns True if nothing was dropped."""
        if self._closed:
            return True
        self._closed = True
        dropped_before = self.dropped
        if self._thread is not None and self._pid == os.getpid():
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
                    self._count_dropped(left, "not published before the close deadline")
        return self.dropped == dropped_before and not self.pending()

    # -- transport ---------------------------------------------------------------------------

    def _publish(self, task: str, args: list[Any], kwargs: dict[str, Any], *, retry: bool) -> None:
        """Publish one task message (sync mode), retrying briefly if `retry`."""
        if self._publisher is not None:
            self._publisher(task, args, kwargs)
            return
        body = escape_json(json.dumps([args, kwargs, EMBED]))
        attempts = 4 if retry else 1
        for attempt in range(attempts):
            try:
                self._publish_raw(task, body)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * 2**attempt)

    def _publish_raw(self, task: str, body: str, events: int | None = None) -> None:
        """LPUSH one Celery protocol-2 message, in kombu's Redis envelope, to the queue.
        `body` is the message body already escaped as the inside of a JSON string.

        kombu's own publish spends ~10x the Python time per message, and the GIL it holds is
        time stolen from the application's threads (see worker.client.envelope).
        """
        self._push(task, [(body, events)])

    def _push(self, task: str, bodies: Sequence[tuple[str, int | None]]) -> None:
        """Publish one message per body, all in one LPUSH (worker.client.push)."""
        if self._publisher is not None:
            for body, _events in bodies:
                args, kwargs, _embed = json.loads(json.loads(f'"{body}"'))
                self._publisher(task, args, kwargs)
            return
        envelopes = [redis_envelope(task, body, events) for body, events in bodies]
        with self._app_lock:
            client = self._redis()
        push(client, QUEUE, envelopes)

    def _redis(self) -> Any:
        if self._given_redis is not None:
            return self._given_redis
        if self._app is None:
            import redis

            url = self._broker_url
            assert url is not None  # __init__ refuses a client with nothing to publish to
            # Short timeouts: a broker outage (or a hung Redis) is an error to retry, not a
            # thread stuck for long; close() does not wait for it anyway (see close()).
            self._app = redis.Redis.from_url(
                url,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                health_check_interval=30,
            )
        return self._app


def _escaped(text: bytes) -> str:
    """JSON text escaped as the inside of a JSON string (msgspec's encoder escapes in C)."""
    return msgspec.json.encode(text.decode())[1:-1].decode()


@atexit.register
def _flush_at_exit() -> None:
    for client in list(_live_clients):
        try:
            client.close(client.exit_timeout_s)
        except Exception:  # pragma: no cover - interpreter teardown
            log.exception("usage client flush at exit failed")
