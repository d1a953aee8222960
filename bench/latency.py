"""Figure 5: what recording costs the request path. record() in background mode and in sync
mode, and apply_async of a no-op task, each timed call by call with perf_counter_ns.

The headline figures are calls made back to back (the usual micro-benchmark: warm caches, and
the client's publishing thread competes for the GIL as it would in a busy process). The same
calls paced (a sleep of PACE_S between calls) are reported beside them as "paced"; on a loaded
machine they mostly measure the cost of waking up cold."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import data
from bench.servers import Stack
from worker.client import UsageClient

#: Pause between two paced calls.
PACE_S = 0.0005
#: Turns taken by the three kinds of call.
ROUNDS = 5


def summary(ns: Sequence[int]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max / mean of durations in ns, as microseconds."""
    s = sorted(ns)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] / 1000, 2)

    return {
        "samples": len(s),
        "p50_us": q(0.50),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": round(s[-1] / 1000, 2),
        "mean_us": round(statistics.fmean(s) / 1000, 2),
    }


def timed(call: Callable[[], Any], n: int, pace_s: float) -> list[int]:
    clock = time.perf_counter_ns
    out: list[int] = []
    for _ in range(n):
        started = clock()
        call()
        out.append(clock() - started)
        if pace_s:
            time.sleep(pace_s)
    return out


def record_calls(tenants: Sequence[str], n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [
        {
            "tenant_id": rng.choice(tenants),
            "operation": data.OPERATIONS[i % len(data.OPERATIONS)],
            "model": data.MODELS[i % len(data.MODELS)],
            "input_tokens": rng.randint(200, 4000),
            "output_tokens": rng.randint(50, 2000),
            "duration_ms": rng.randint(300, 9000),
        }
        for i in range(n)
    ]


def request_path(
    stack: Stack, tenants: Sequence[str], n: int, rounds: int = ROUNDS
) -> dict[str, Any]:
    """With the broker reachable and no worker running: in production the worker does not
    share the web process's CPUs, and here a worker would take one of the two. The three
    kinds of call take turns, `rounds` times (n / rounds calls each turn, back to back, then
    as many paced), so that a change of load on the machine hits them alike. The messages
    published are deleted afterwards."""
    from bench import naive_app

    naive_app.app.conf.broker_url = stack.redis_url
    per_round = max(1, n // rounds)
    background = UsageClient(broker_url=stack.redis_url, max_queue=10 * n + 10_000)
    sync = UsageClient(broker_url=stack.redis_url, mode="sync")
    calls = iter(record_calls(tenants, 4 * rounds * per_round + 400))
    kinds: dict[str, Callable[[], Any]] = {
        "record_background": lambda: background.record(**next(calls)),
        "record_sync": lambda: sync.record(**next(calls)),
        "apply_async_noop": lambda: naive_app.noop.apply_async(),
    }
    burst: dict[str, list[int]] = {k: [] for k in kinds}
    paced: dict[str, list[int]] = {k: [] for k in kinds}
    try:
        for call in kinds.values():
            timed(call, 100, 0)  # connections, first-use imports
        for _ in range(rounds):
            for kind, call in kinds.items():
                burst[kind] += timed(call, per_round, 0)
                paced[kind] += timed(call, per_round, PACE_S)
        background.flush(60)
        dropped = background.dropped
    finally:
        background.close(30)
        sync.close()
        stack.flush_redis()
    out: dict[str, Any] = {"pace_s": PACE_S, "rounds": rounds}
    for kind in kinds:
        out[kind] = {**summary(burst[kind]), "paced": summary(paced[kind])}
    out["record_background"]["dropped"] = dropped
    return out


def dropping(tenants: Sequence[str], n: int) -> dict[str, Any]:
    """record() on the drop path: the buffer full (max_queue 1) and the broker unreachable, so
    every call after the first is a drop. Drops are counted and logged as one summary line per
    10 s: this is the p99 a burst past max_queue costs the application."""
    import logging

    client = UsageClient(broker_url="redis://127.0.0.1:1/0", max_queue=1, retry_max_s=60)
    calls = iter(record_calls(tenants, n + 200))
    logger = logging.getLogger("worker.client.publisher")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        timed(lambda: client.record(**next(calls)), 100, 0)
        ns = timed(lambda: client.record(**next(calls)), n, 0)
    finally:
        logger.removeHandler(handler)
        client.close(0.1)
    return {**summary(ns), "dropped": client.dropped, "log_lines": len(lines)}


def _work(payload: dict[str, Any]) -> int:
    """A request's own CPU work, for the application-throughput figure: a JSON round trip and
    a hash of a few kilobytes."""
    import hashlib
    import json

    text = json.dumps(payload)
    return len(hashlib.sha256(text.encode() * 4).digest()) + len(json.loads(text))


def app_throughput(stack: Stack, tenants: Sequence[str], seconds: float = 3.0) -> dict[str, Any]:
    """The application's own throughput (requests of CPU work a second) without the client and
    with one record() per request (the publishing thread sending meanwhile), and the longest
    stall between two requests in each: the publisher must not take the GIL in long
    stretches. Alternated over 3 rounds; medians."""
    payload = {f"k{i}": "x" * 40 for i in range(40)}
    client = UsageClient(broker_url=stack.redis_url, max_queue=10_000_000)
    calls = record_calls(tenants, 1000)

    def run(record: bool) -> tuple[float, float]:
        done, gap = 0, 0.0
        last = started = time.perf_counter()
        while last - started < seconds:
            _work(payload)
            if record:
                client.record(**calls[done % len(calls)])
            now = time.perf_counter()
            gap = max(gap, now - last)
            last = now
            done += 1
        return done / (last - started), gap

    runs: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    try:
        for _ in range(3):
            runs["without"].append(run(False))
            runs["with"].append(run(True))
        client.flush(60)
    finally:
        client.close(30)
        stack.flush_redis()
    out: dict[str, Any] = {"seconds_per_run": seconds}
    for kind, results in runs.items():
        out[f"{kind}_client"] = {
            "requests_per_s": statistics.median(r for r, _ in results),
            "longest_stall_ms": round(max(g for _, g in results) * 1000, 3),
        }
    out["with_over_without"] = (
        out["with_client"]["requests_per_s"] / out["without_client"]["requests_per_s"]
    )
    return out
