"""Figures 1 to 4: the write limit, the naive baseline, and our pipeline (producer-batched and
single-event messages), with Celery's own drain rate for a no-op task as the reference."""

from __future__ import annotations

import inspect
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from bench import data, procs
from bench.servers import Stack
from worker.client import UsageClient

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS bench_staging (LIKE ai_usage_logs) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY bench_staging ({data.ROW_COLUMNS}) FROM STDIN"
_MOVE = (
    f"INSERT INTO ai_usage_logs ({data.ROW_COLUMNS}) SELECT {data.ROW_COLUMNS} FROM bench_staging"
    " ON CONFLICT (id) DO NOTHING"
)
# What the worker tries first for a batch of new events (worker.ledger.ingest): not
# idempotent alone (a stored id fails it, and the worker then takes the staged way), so not
# the limit, but the rate of the database's cheapest write, shown beside it.
_COPY_DIRECT = f"COPY ai_usage_logs ({data.ROW_COLUMNS}) FROM STDIN"
#: The fields an application passes to record(); the client sets id and created_at (now).
_RECORD_FIELDS = ("tenant_id", "operation", "model", "input_tokens", "output_tokens", "duration_ms")


def client_defaults() -> dict[str, Any]:
    """UsageClient's default batching parameters, as they are in this checkout."""
    params = inspect.signature(UsageClient).parameters
    return {k: params[k].default for k in ("batch_size", "flush_interval_ms", "max_queue")}


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _bulk_write(stack: Stack, chunks: Sequence[str], direct: bool = False) -> float:
    """Seconds to COPY each chunk to a staging table and move it (`direct`: to COPY it into
    the table), one transaction per chunk."""
    conn = stack.pg_connect()
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(_STAGING)
            conn.commit()
            started = time.perf_counter()
            for chunk in chunks:
                if direct:
                    cur.copy_expert(_COPY_DIRECT, io.StringIO(chunk))
                else:
                    cur.copy_expert(_COPY, io.StringIO(chunk))
                    cur.execute(_MOVE)
                conn.commit()
            return time.perf_counter() - started
    finally:
        conn.close()


def _variants(priced: Sequence[dict[str, Any]], batch_rows: int) -> dict[str, list[str]]:
    """The limit's rows as COPY text: in one chunk, and in chunks of the worker's batch size."""
    text = data.row_text(priced)
    lines = text.splitlines(keepends=True)
    return {
        "one_transaction": [text],
        f"transactions_of_{batch_rows}_rows": [
            "".join(lines[i : i + batch_rows]) for i in range(0, len(lines), batch_rows)
        ],
    }


def _limit_runs(
    stack: Stack, variants: dict[str, list[str]], n: int, runs: dict[str, list[float]]
) -> None:
    """One run of each variant (`n` rows) on an emptied table, its seconds appended to `runs`."""
    for name, chunks in variants.items():
        stack.truncate()
        runs.setdefault(name, []).append(_bulk_write(stack, chunks))
        if data.count_rows(stack) != n:
            raise procs.BenchError("the bulk write did not store every row")
    stack.truncate()


def limit_once(
    stack: Stack, priced: Sequence[dict[str, Any]], batch_rows: int
) -> Callable[[], float]:
    """The limit measured again, as one run of each variant (the better one), rows/s: for
    the figures that take their ratio to a limit measured beside them (scale-out)."""
    variants = _variants(priced, batch_rows)

    def once() -> float:
        runs: dict[str, list[float]] = {}
        _limit_runs(stack, variants, len(priced), runs)
        return _rate(len(priced), min(min(t) for t in runs.values()))

    return once


def limit(stack: Stack, priced: Sequence[dict[str, Any]], batch_rows: int) -> dict[str, Any]:
    """(1) N pre-built rows: COPY to staging, INSERT ... ON CONFLICT (id) DO NOTHING, commit; in
    one transaction and in transactions of the worker's batch size, each twice, alternating,
    on an emptied table. The limit is the best of the four runs."""
    n = len(priced)
    variants = _variants(priced, batch_rows)
    runs: dict[str, list[float]] = {}
    direct: list[float] = []
    for _ in range(2):
        _limit_runs(stack, variants, n, runs)
        direct.append(_bulk_write(stack, variants[f"transactions_of_{batch_rows}_rows"], True))
        if data.count_rows(stack) != n:
            raise procs.BenchError("the direct COPY did not store every row")
        stack.truncate()
    best = {name: _rate(n, min(times)) for name, times in runs.items()}
    return {
        "rows": n,
        "rows_per_s": max(best.values()),
        "best_variant": max(best, key=lambda k: best[k]),
        "variants_rows_per_s": best,
        "runs_seconds": {name: [round(t, 4) for t in times] for name, times in runs.items()},
        "batched": {
            "batch_rows": batch_rows,
            "rows_per_s": best[f"transactions_of_{batch_rows}_rows"],
        },
        "direct": {
            "batch_rows": batch_rows,
            "rows_per_s": _rate(n, min(direct)),
            "runs_seconds": [round(t, 4) for t in direct],
        },
    }


def naive(
    stack: Stack, workdir: Path, priced: Sequence[dict[str, Any]], tenants: Sequence[str]
) -> dict[str, Any]:
    """(2) One naive.record task per event, default worker; first publish to last commit."""
    from bench import naive_app

    naive_app.app.conf.broker_url = stack.redis_url
    stack.truncate()
    worker = procs.naive(stack, workdir).start()
    try:
        warm = data.priced(data.events(8, tenants, seed=101))
        for e in warm:  # connections, ORM compilation, the producer's broker connection
            naive_app.record.delay(**e)
        data.wait_rows(stack, len(warm), warm[-1]["id"], 60, worker.log_tail)
        n = len(priced)
        started = time.perf_counter()
        for e in priced:
            naive_app.record.delay(**e)
        published = time.perf_counter()
        done, _ = data.wait_rows(
            stack, n + len(warm), priced[-1]["id"], 120 + n / 20, worker.log_tail
        )
    finally:
        worker.stop()
    stack.truncate()
    return {
        "events": n,
        "seconds": round(done - started, 4),
        "events_per_s": _rate(n, done - started),
        "publish_seconds": round(published - started, 4),
        "worker": "celery -A bench.naive_app worker -Q naive"
        " (defaults: prefork, concurrency = CPUs, prefetch multiplier 4)",
    }


def ours_batched(
    stack: Stack, worker: procs.Worker, evs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """(3) UsageClient background mode into a running worker; first record() to last commit."""
    stack.truncate()
    n = len(evs)
    client = UsageClient(broker_url=stack.redis_url, max_queue=n + 10_000)
    try:
        warm = [client.record(**{k: e[k] for k in _RECORD_FIELDS}) for e in evs[: len(data.MODELS)]]
        client.flush(30)
        data.wait_rows(stack, len(warm), str(warm[-1]), 60, worker.log_tail)
        calls = [{k: e[k] for k in _RECORD_FIELDS} for e in evs]  # built outside the clock
        started = time.perf_counter()
        last = None
        for fields in calls:
            last = client.record(**fields)
        recorded = time.perf_counter()
        done, _ = data.wait_rows(stack, n + len(warm), str(last), 120 + n / 200, worker.log_tail)
        dropped = client.dropped
    finally:
        client.close(30)
    stack.truncate()
    if dropped:
        raise procs.BenchError(f"the client dropped {dropped} events")
    return {
        "events": n,
        "seconds": round(done - started, 4),
        "events_per_s": _rate(n, done - started),
        "record_loop_seconds": round(recorded - started, 4),
        "client": f"UsageClient(mode='background'), defaults {client_defaults()},"
        " max_queue raised so nothing drops",
    }


def _producer(stack: Stack) -> Celery:
    app = Celery("bench_producer", broker=stack.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], task_create_missing_queues=True
    )
    return app


def _drain(
    stack: Stack, worker: procs.Worker, queue: str, n: int, finished: Callable[[], float]
) -> dict[str, float]:
    """Spawn `worker` on a queue holding `n` messages; times of ready, first consumption and
    the end (when `finished()` returns a perf_counter time)."""
    client = stack.redis()
    try:
        worker.spawn()
        deadline = time.monotonic() + 120
        while data.backlog(client, queue)[0] >= n:
            worker.is_ready()  # raises if it died
            if time.monotonic() > deadline:
                raise procs.BenchError(f"{worker.name} never consumed:\n{worker.log_tail()}")
            time.sleep(0.002)
        consuming = time.perf_counter()
        end = finished()
        worker.wait_ready(5)
    finally:
        client.close()
        worker.stop()
    assert worker.ready_at is not None
    return {
        "spawn_to_ready_s": round(worker.ready_at - worker.started_at, 3),
        "consuming_at": consuming,
        "ready_at": worker.ready_at,
        "end": end,
        "from_spawn_s": round(end - worker.started_at, 4),
    }


def ours_single(stack: Stack, workdir: Path, evs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """(4) N ai_usage.record messages queued in advance, drained by a worker started after."""
    stack.truncate()
    stack.flush_redis()
    n = len(evs)
    producer = _producer(stack)
    started = time.perf_counter()
    for e in evs:
        producer.send_task("ai_usage.record", kwargs=e, queue="ai_usage", routing_key="ai_usage")
    queued = time.perf_counter() - started
    producer.close()
    worker = procs.ours(stack, workdir)
    seen: dict[str, float] = {}

    def finished() -> float:
        end, info = data.wait_rows(stack, n, evs[-1]["id"], 120 + n / 100, worker.log_tail)
        seen.update(info)
        return end

    t = _drain(stack, worker, "ai_usage", n, finished)
    stack.truncate()
    seconds = t["end"] - t["consuming_at"]
    return {
        "events": n,
        "seconds": round(seconds, 4),
        "events_per_s": _rate(n, seconds),
        "first_row_after_s": round(seen["first_row"] - t["consuming_at"], 4),
        "from_first_row_events_per_s": _rate(n, t["end"] - seen["first_row"]),
        "queue_seconds": round(queued, 4),
        "spawn_to_ready_s": t["spawn_to_ready_s"],
        "from_ready_events_per_s": _rate(n, t["end"] - t["ready_at"]),
        "spawn_to_last_row_s": t["from_spawn_s"],
        "clock": "first consumption (queue length drops) to the last row committed",
    }


def noop_drain(stack: Stack, workdir: Path, n: int) -> dict[str, Any]:
    """Celery's drain rate: N naive.noop messages queued in advance, a default worker started
    after; done when the queue is empty and no message is unacknowledged (the default early
    ack happens as a pool process takes the task, so at most `concurrency` no-ops run on)."""
    stack.flush_redis()
    producer = _producer(stack)
    started = time.perf_counter()
    for _ in range(n):
        producer.send_task("naive.noop", queue=procs.NAIVE_QUEUE, routing_key=procs.NAIVE_QUEUE)
    queued = time.perf_counter() - started
    producer.close()
    client = stack.redis()

    def finished() -> float:
        deadline = time.monotonic() + 120 + n / 50
        while True:
            at = time.perf_counter()
            if data.backlog(client, procs.NAIVE_QUEUE) == (0, 0):
                return at
            if time.monotonic() > deadline:
                raise procs.BenchError("the no-op queue never drained")
            time.sleep(0.005)

    try:
        t = _drain(stack, procs.naive(stack, workdir), procs.NAIVE_QUEUE, n, finished)
    finally:
        client.close()
    stack.flush_redis()
    seconds = t["end"] - t["consuming_at"]
    return {
        "tasks": n,
        "seconds": round(seconds, 4),
        "tasks_per_s": _rate(n, seconds),
        "queue_seconds": round(queued, 4),
        "spawn_to_ready_s": t["spawn_to_ready_s"],
        "from_ready_tasks_per_s": _rate(n, t["end"] - t["ready_at"]),
        "clock": "first consumption to queue empty and kombu's unacked hash empty",
    }
