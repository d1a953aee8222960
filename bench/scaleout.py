"""Figure 3b at 1 and 2 worker processes: the worker alone on a backlog, and each worker's share.

The backlog is what the client publishes: `ai_usage.record_batch` messages of its default batch
size, in its own envelope (with the `ai_usage_events` header), queued before any worker starts.
`processes` workers are started together; the clock runs from the first consumption (the queue
shrinks) to the last row committed. Each worker's share is what its batch log lines (JSON
logs) say it inserted. Each round measures the limit (1) again first, and the best count's
ratio is taken to that round's limit. Runs alternate between the process counts, so that a
change of load on the machine hits both alike; the figure is the median of the runs.

Each drain is also metered (bench.cpu): the CPU each process group spent per event, and the
share of the machine's cores left idle. They say what limits a second worker on this box."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import cpu, data, procs
from bench.servers import Stack
from worker.client.envelope import RECORD_BATCH, escape_json, redis_envelope


def _queue(stack: Stack, evs: Sequence[dict[str, Any]], per_message: int) -> int:
    client = stack.redis()
    try:
        pipe = client.pipeline(transaction=False)
        messages = 0
        for i in range(0, len(evs), per_message):
            batch = list(evs[i : i + per_message])
            body = escape_json(json.dumps([[batch], {}, {}]))
            pipe.lpush("ai_usage", redis_envelope(RECORD_BATCH, body, len(batch)))
            messages += 1
        pipe.execute()
        return messages
    finally:
        client.close()


def _inserted(worker: procs.Worker) -> int:
    total = 0
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"batch"' in line:
            total += int(json.loads(line)["batch"]["inserted"])
    return total


def drain(
    stack: Stack, workdir: Path, evs: Sequence[dict[str, Any]], processes: int, per_message: int
) -> dict[str, Any]:
    """One drain of `evs` by `processes` workers started together."""
    stack.truncate()
    stack.flush_redis()
    n = len(evs)
    messages = _queue(stack, evs, per_message)
    workers = [procs.ours(stack, workdir, AI_USAGE_LOG_FORMAT="json") for _ in range(processes)]
    client = stack.redis()
    try:
        for worker in workers:
            worker.spawn()
        deadline = time.monotonic() + 120
        while data.backlog(client, "ai_usage")[0] >= messages:
            for worker in workers:
                worker.is_ready()  # raises if it died
            if time.monotonic() > deadline:
                raise procs.BenchError("no worker consumed:\n" + workers[0].log_tail())
            time.sleep(0.002)
        consuming = time.perf_counter()
        meter = cpu.Meter().start()
        end, _ = data.wait_rows(stack, n, evs[-1]["id"], 120 + n / 100, workers[0].log_tail)
        spent = meter.stop(n, [w.proc.pid for w in workers if w.proc is not None])
    finally:
        client.close()
        for worker in workers:
            worker.stop()
    shares = [_inserted(w) for w in workers]
    stack.truncate()
    seconds = end - consuming
    return {
        "events": n,
        "messages": messages,
        "seconds": round(seconds, 4),
        "events_per_s": n / seconds,
        "shares": [round(s / n, 4) for s in shares],
        "cpu": spent,
    }


def worker_alone(
    stack: Stack,
    workdir: Path,
    evs: Sequence[dict[str, Any]],
    per_message: int,
    limit_once: Callable[[], float],
    runs: int = 3,
) -> dict[str, Any]:
    """`runs` rounds, each measuring the limit again (`limit_once`, rows/s) and then a drain
    at 1 and at 2 processes; medians, each run kept. On a shared 2-core box the limit itself
    moves by a third from minute to minute (CPU steal here reached 17%): the ratio to the
    limit of the same round compares a drain with the database as it was then."""
    by: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    limits: list[float] = []
    for _ in range(runs):
        limits.append(limit_once())
        for processes in (1, 2):
            by[processes].append(drain(stack, workdir, evs, processes, per_message))
    out: dict[str, Any] = {"runs": runs, "per_message": per_message}
    for processes, done in by.items():
        rates = [r["events_per_s"] for r in done]
        spent = [r["cpu"] for r in done]
        per_event = {
            g: statistics.median(c["cpu_us_per_event"][g] for c in spent) for g in cpu.GROUPS
        }
        per_event["total"] = statistics.median(sum(c["cpu_us_per_event"].values()) for c in spent)
        out[f"processes_{processes}"] = {
            "events_per_s": statistics.median(rates),
            "runs_events_per_s": [round(r) for r in rates],
            "shares": [r["shares"] for r in done],
            "cpu_us_per_event": per_event,
            "idle_share": statistics.median(c["idle_share"] for c in spent),
            "cpu_runs": spent,
        }
    one, two = out["processes_1"]["events_per_s"], out["processes_2"]["events_per_s"]
    out["best_processes"] = 2 if two > one else 1
    out["best_events_per_s"] = max(one, two)
    out["two_over_one"] = two / one
    best = [r["events_per_s"] for r in by[out["best_processes"]]]
    out["limits_rows_per_s"] = [round(x) for x in limits]
    out["limit_rows_per_s"] = statistics.median(limits)
    out["best_over_round_limit"] = [round(b / x, 3) for b, x in zip(best, limits, strict=True)]
    out["best_over_limit"] = statistics.median(b / x for b, x in zip(best, limits, strict=True))
    # 2/1 = (cores busy at 2 / at 1) x (CPU per event at 1 / at 2): bench.results' ratios. The
    # first factor is at most 1 / (busy share at 1): what a second worker could add if it
    # turned every idle core-second into events at one worker's cost per event.
    busy_1 = 1 - out["processes_1"]["idle_share"]
    out["two_over_one_ceiling"] = 1 / busy_1 if busy_1 > 0 else None
    out["share_min"] = min(min(s) for s in out["processes_2"]["shares"])
    out["share_max"] = max(max(s) for s in out["processes_2"]["shares"])
    return out
