"""The Python client: record one usage event per AI call, from the request path, in microseconds.

    from worker.client import UsageClient
    usage = UsageClient(broker_url="redis://localhost:6379/0")   # background mode
    usage.record(tenant_id=t, operation="generate_assessment", model="claude-3-5-sonnet-20241022",
                 input_tokens=1000, output_tokens=2000)

Background mode (the default) validates the event, appends it to a bounded in-memory queue and
returns; a daemon thread publishes `ai_usage.record_batch` messages of up to `batch_size`
events every `flush_interval_ms`, full batches sooner (several to one LPUSH: see
worker.client.buffer). The caller is never blocked by the broker and never sees a broker
error: while the broker is down the thread retries with backoff (the same event ids, so a
retry cannot double count); past `max_queue` events are dropped, counted and logged.
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
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from worker.client import fast
from worker.client.buffer import Buffer, Tally
from worker.client.envelope import (
    EMBED,
    QUEUE,
    RECORD,
    RECORD_BATCH,
    batch_body,
    batch_envelope,
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
        self._tally = Tally()
        self._closed = False
        self._start_buffer()
        if registry is not None:
            from prometheus_client import Counter, Gauge

            self._tally.metric = Counter(
                "ai_usage_client_events_dropped_total",
                "Usage events dropped by the client because its buffer was full.",
                registry=registry,
            )
            depth = Gauge(
                "ai_usage_client_buffer_depth",
                "Usage events waiting in the client's buffer.",
                registry=registry,
            )
            depth.set_function(self.pending)
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
        assert self._buffer is not None  # background mode
        self._buffer.put(escaped)

    # -- background publishing ---------------------------------------------------------------

    def _start_buffer(self) -> None:
        self._pid = os.getpid()
        self._app = None  # after a fork, never share the parent's broker socket
        self._buffer: Buffer | None = None
        if self.mode == "background":
            self._buffer = Buffer(
                self._push_batches,
                self._tally,
                batch_size=self.batch_size,
                flush_interval=self.flush_interval,
                max_queue=self.max_queue,
                retry_max_s=self.retry_max_s,
                one_per_round=self._publisher is not None,
            )

    @property
    def dropped(self) -> int:
        """Events dropped: past `max_queue`, or not published by close()'s deadline."""
        return self._tally.dropped

    @property
    def published(self) -> int:
        """Events the background thread has published (Redis confirmed the LPUSH)."""
        return self._tally.published

    @property
    def publish_failures(self) -> int:
        """Failed publishing attempts of the background thread (each retried)."""
        return self._tally.publish_failures

    def pending(self) -> int:
        """Events recorded but not yet published."""
        return 0 if self._buffer is None else self._buffer.pending()

    def flush(self, timeout: float = 5.0) -> bool:
        """Publish everything buffered; True if the buffer emptied within `timeout` seconds."""
        return self._buffer is None or self._buffer.flush(timeout)

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
        if self._buffer is not None and self._pid == os.getpid():
            self._buffer.close(timeout)
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

    def _publish_raw(self, task: str, body: str) -> None:
        """LPUSH one Celery protocol-2 message, in kombu's Redis envelope, to the queue.
        `body` is the message body already escaped as the inside of a JSON string.

        kombu's own publish spends ~10x the Python time per message, and the GIL it holds is
        time stolen from the application's threads (see worker.client.envelope).
        """
        if self._publisher is not None:
            self._call_publisher(task, body)
            return
        self._push_envelopes([[redis_envelope(task, body)]])

    def _push_batches(self, batches: list[list[str]]) -> None:
        """One round of the background thread: a record_batch message for each batch, all in
        one LPUSH (worker.client.push)."""
        if self._publisher is not None:
            for batch in batches:
                self._call_publisher(RECORD_BATCH, batch_body(batch))
            return
        self._push_envelopes([batch_envelope(batch) for batch in batches])

    def _call_publisher(self, task: str, body: str) -> None:
        assert self._publisher is not None
        args, kwargs, _embed = json.loads(json.loads(f'"{body}"'))
        self._publisher(task, args, kwargs)

    def _push_envelopes(self, envelopes: list[list[str]]) -> None:
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
