"""Figure 6: rollups and reports as the month grows (issue 14).

The current month is loaded to three sizes in turn (big / 100, big / 10, big rows; 50
tenants), with generate_series in SQL (FKs, indexes and the delta trigger apply), then one
rollup settles it. At each size:
- a rollup with nothing new, and one after 2,000 new rows written by the worker's own
  store_batch (4 batches of 500), medians of 3;
- the report latency, median of `reps`: the monthly report and each `--by`, in-process (the
  query and the rendering), for all tenants and, for `--by user`, one tenant;
At the largest size, a writer stores 500 events every 50 ms (the worker's store_batch, of
batches prepared before, with the harness's garbage collector off) for 10 s without any
rollup; then while rollups fold every 250 ms in another process (as the worker's pool runs
Beat's task); then the same with the first run recomputing the whole month
from the log (`ai-usage rollup --month`, the heaviest run there is): the write p99 and the
longest write in each period."""

from __future__ import annotations

import datetime as dt
import gc
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text

from bench import data
from bench.servers import Stack
from worker.ledger.breakdown import load_breakdown, render_breakdown
from worker.ledger.ingest import store_batch
from worker.ledger.pricing import Pricer
from worker.ledger.report import load_report, render
from worker.ledger.rollups import month_start, run_rollup
from worker.ledger.rows import PreparedBatch, prepare_batch

TENANTS = 50
NEW_ROWS = 2000
WRITE_EVERY_S = 0.05
WRITE_SECONDS = 10.0
ROLLUP_EVERY_S = 0.25

_GENERATE = """
INSERT INTO ai_usage_logs (id, tenant_id, operation, model, input_tokens, output_tokens,
    total_tokens, cost_usd, duration_ms, success, created_at)
SELECT gen_random_uuid(), (CAST(:tenants AS uuid[]))[1 + g % :nt],
       (CAST(:operations AS text[]))[1 + g % 3], (CAST(:models AS text[]))[1 + (g / 3) % 4],
       100 + g % 5000, 10 + g % 700, 110 + g % 5000 + g % 700,
       CASE WHEN g % 50 = 0 THEN NULL ELSE 0.00001 * (g % 997) END, 300 + g % 9000,
       CASE WHEN g % 40 = 0 THEN 'failure' ELSE 'success' END,
       CAST(:start AS timestamptz) + random() * CAST(:span AS interval)
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
"""


def _median_s(fn: Callable[[], Any], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _load(stack: Stack, tenants: Sequence[str], lo: int, hi: int) -> float:
    """Rows lo..hi-1 of the month so far, a million a statement; seconds."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    start = dt.datetime.combine(month_start(now), dt.time(), dt.UTC)
    span = max(now - start, dt.timedelta(hours=1))
    started = time.perf_counter()
    for a in range(lo, hi, 1_000_000):
        with stack.engine.begin() as conn:
            conn.execute(
                text(_GENERATE),
                {
                    "tenants": list(tenants),
                    "nt": len(tenants),
                    "operations": list(data.OPERATIONS),
                    "models": list(data.MODELS),
                    "start": start,
                    "span": span,
                    "lo": a,
                    "hi": min(hi, a + 1_000_000) - 1,
                },
            )
    return time.perf_counter() - started


def _writes(tenants: Sequence[str], n: int, seed: int) -> list[list[dict[str, Any]]]:
    evs = data.events(n, tenants, seed=seed)
    now = dt.datetime.now(dt.UTC).isoformat()
    for e in evs:
        e["id"] = str(uuid.uuid4())
        e["created_at"] = now
    return [evs[i : i + 500] for i in range(0, n, 500)]


def _store(stack: Stack, batch: list[dict[str, Any]], pricer: Pricer) -> float:
    started = time.perf_counter()
    store_batch(stack.engine, prepare_batch(batch, pricer))
    return time.perf_counter() - started


def _timed_writes(stack: Stack, batches: Sequence[PreparedBatch]) -> list[float]:
    """store_batch of each batch, one every WRITE_EVERY_S: the seconds of each. The batches are
    prepared before (in the worker, the consumer thread prepares and the writer thread only
    stores), and the harness's collector is off meanwhile: this process holds the run's
    events, and one full collection of them paused it for 70-90 ms every 10 s, a pause of the
    harness and not of the database (the worker freezes its start-up objects for that
    reason, see worker.consumer.runtime)."""
    latencies = []
    gc.collect()
    gc.disable()
    try:
        for batch in batches:
            due = time.perf_counter() + WRITE_EVERY_S
            started = time.perf_counter()
            store_batch(stack.engine, batch)
            latencies.append(time.perf_counter() - started)
            time.sleep(max(0.0, due - time.perf_counter()))
    finally:
        gc.enable()
    return latencies


def _report_ms(fn: Callable[[], str], reps: int) -> float:
    fn()  # warm the pool and the plan cache
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def _reports(stack: Stack, tenant: uuid.UUID, reps: int) -> dict[str, float]:
    month = month_start(dt.datetime.now(dt.UTC))
    last = dt.datetime.now(dt.UTC).date()
    out = {"monthly": _report_ms(lambda: render(load_report(stack.engine, month), "table"), reps)}
    for by in ("model", "operation", "day", "user"):
        who = tenant if by == "user" else None
        first = max(month, last - dt.timedelta(days=6)) if by == "user" else month

        def one(by: str = by, who: uuid.UUID | None = who, first: dt.date = first) -> str:
            return render_breakdown(load_breakdown(stack.engine, by, first, last, who), "table")

        out[by] = _report_ms(one, reps)
    return out


def _at_size(stack: Stack, tenants: Sequence[str], reps: int, seed: int) -> dict[str, Any]:
    pricer = Pricer()
    run_rollup(stack.engine, wait=True)
    idle = _median_s(lambda: run_rollup(stack.engine, wait=True))
    new: list[float] = []
    for k in range(3):
        for batch in _writes(tenants, NEW_ROWS, seed * 10 + k):
            _store(stack, batch, pricer)
        started = time.perf_counter()
        result = run_rollup(stack.engine, wait=True)
        new.append(time.perf_counter() - started)
    return {
        "rows": data.count_rows(stack),
        "rollup_nothing_new_s": round(idle, 4),
        "rollup_2k_new_s": round(statistics.median(new), 4),
        "rollup_2k_new_runs_s": [round(s, 4) for s in new],
        "buckets_folded_2k": result.buckets,
        "report_ms": _reports(stack, uuid.UUID(tenants[0]), reps),
    }


def _rollup_loop(url: str, stop: Any, runs: Any, recompute: bool) -> None:
    """In a process of its own, as the worker's pool child runs the rollup task: rollups every
    ROLLUP_EVERY_S until `stop`, the first recomputing the month from the log if `recompute`."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    month = month_start(dt.datetime.now(dt.UTC))
    first = recompute
    while not stop.is_set():
        started = time.perf_counter()
        run_rollup(engine, [month] if first else None, wait=True)
        runs.append(time.perf_counter() - started)
        first = False
        stop.wait(ROLLUP_EVERY_S)
    engine.dispose()


def _write_latency(stack: Stack, tenants: Sequence[str], mode: str) -> dict[str, Any]:
    """A writer every 50 ms for WRITE_SECONDS: `alone`; beside Beat's rollups folding every
    ROLLUP_EVERY_S in another process (`beat`); or beside those with the first recomputing the
    whole month from the log (`recompute`, what `ai-usage rollup --month` does)."""
    pricer = Pricer()
    during = mode != "alone"
    seed = {"alone": 77, "beat": 78, "recompute": 79}[mode]
    batches = [
        prepare_batch(b, pricer)
        for b in _writes(tenants, int(WRITE_SECONDS / WRITE_EVERY_S) * 500, seed=seed)
    ]
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    stop, runs = manager.Event(), manager.list()
    url = stack.engine.url.render_as_string(hide_password=False)
    child = ctx.Process(
        target=_rollup_loop, args=(url, stop, runs, mode == "recompute"), daemon=True
    )
    if during:
        child.start()
        time.sleep(1.0)  # the child is up (and its month recompute under way)
    try:
        latencies = _timed_writes(stack, batches)
    finally:
        stop.set()
        if during:
            child.join(300)
        done = list(runs)
        manager.shutdown()
    latencies.sort()
    return {
        "writes": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "rollups_during": len(done),
        "longest_rollup_s": round(max(done), 3) if done else None,
    }


def rollups(stack: Stack, tenants: Sequence[str], big: int, reps: int) -> dict[str, Any]:
    """The figures at big / 100, big / 10 and big rows this month; write latency at big."""
    stack.truncate()
    tenants = list(tenants[:TENANTS])
    sizes: dict[str, Any] = {}
    loaded = 0
    load_s = 0.0
    for label, size in (("small", big // 100), ("mid", big // 10), ("big", big)):
        load_s += _load(stack, tenants, loaded, size)
        loaded = size
        stack.analyze()
        sizes[label] = _at_size(stack, tenants, reps, seed=len(sizes))
    write_alone = _write_latency(stack, tenants, "alone")
    write_during = _write_latency(stack, tenants, "beat")
    write_recompute = _write_latency(stack, tenants, "recompute")
    stack.truncate()
    small, top = sizes["small"], sizes["big"]
    return {
        "tenants": len(tenants),
        "load_seconds": round(load_s, 1),
        "sizes": sizes,
        "write_without_rollup": write_alone,
        "write_during_rollups": write_during,
        "write_during_month_recompute": write_recompute,
        "rollup_2k_big_over_small": top["rollup_2k_new_s"] / small["rollup_2k_new_s"],
        "stall_over_p99": write_during["max_ms"] / write_alone["p99_ms"],
        "recompute_stall_over_p99": write_recompute["max_ms"] / write_alone["p99_ms"],
    }
