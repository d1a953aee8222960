"""Figure 3b at 1 and 2 worker processes: the worker alone on a backlog, and each worker's share.

The backlog is what the client publishes: `ai_usage.record_batch` messages of its default batch
size, in its own envelope (with the `ai_usage_events` header), queued before any worker starts.
`processes` workers are started together; the clock runs from the first consumption (the queue
shrinks) to the last row committed. Each worker's share is what its batch log lines (JSON
logs) say it inserted. Runs alternate between the process counts, so that a change of load on
the machine hits both alike; the figure is the median of the runs."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import data, procs
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
        end, _ = data.wait_rows(stack, n, evs[-1]["id"], 120 + n / 100, workers[0].log_tail)
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
    }


def worker_alone(
    stack: Stack, workdir: Path, evs: Sequence[dict[str, Any]], per_message: int, runs: int = 3
) -> dict[str, Any]:
    """`runs` drains at 1 and at 2 processes, alternating; medians, each run kept."""
    by: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(runs):
        for processes in (1, 2):
            by[processes].append(drain(stack, workdir, evs, processes, per_message))
    out: dict[str, Any] = {"runs": runs, "per_message": per_message}
    for processes, done in by.items():
        rates = [r["events_per_s"] for r in done]
        out[f"processes_{processes}"] = {
            "events_per_s": statistics.median(rates),
            "runs_events_per_s": [round(r) for r in rates],
            "shares": [r["shares"] for r in done],
        }
    one, two = out["processes_1"]["events_per_s"], out["processes_2"]["events_per_s"]
    out["best_processes"] = 2 if two > one else 1
    out["best_events_per_s"] = max(one, two)
    out["two_over_one"] = two / one
    out["share_min"] = min(min(s) for s in out["processes_2"]["shares"])
    out["share_max"] = max(max(s) for s in out["processes_2"]["shares"])
    return out
