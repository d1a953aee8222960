"""Figure 7: the worker's memory under steady traffic through the client.

A fresh worker; its process tree's RSS (main process + pool process, psutil) is sampled every
second while the client records `rate` events per second for `seconds` seconds. Reported: RSS
when ready (before traffic), after the first minute (or a fifth of a shorter run), at the end,
and the peak; every event must have landed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import data, procs
from bench.latency import record_calls
from bench.servers import Stack
from worker.client import UsageClient

_MB = 2**20
#: Events are recorded in bursts of rate/TICKS_PER_S, TICKS_PER_S times a second.
TICKS_PER_S = 50


def soak(
    stack: Stack, workdir: Path, tenants: Sequence[str], seconds: float, rate: int
) -> dict[str, Any]:
    stack.truncate()
    worker = procs.ours(stack, workdir).start()
    first_at = min(60.0, seconds / 5)
    per_tick = max(1, rate // TICKS_PER_S)
    calls = record_calls(tenants, 1000)
    client = UsageClient(broker_url=stack.redis_url, max_queue=max(100_000, rate * 10))
    samples: list[tuple[float, int]] = []
    recorded = 0
    last = None
    try:
        time.sleep(1)  # settle after "ready."
        start_rss = worker.tree_rss()
        samples.append((0.0, start_rss))
        started = time.monotonic()
        tick = 0
        next_sample = 1.0
        while True:
            now = time.monotonic() - started
            if now >= seconds:
                break
            for _ in range(per_tick):
                last = client.record(**calls[recorded % len(calls)])
                recorded += 1
            if now >= next_sample:
                samples.append((round(now, 2), worker.tree_rss()))
                next_sample += 1.0
            tick += 1
            time.sleep(max(0.0, started + tick / TICKS_PER_S - time.monotonic()))
        end_rss = worker.tree_rss()
        samples.append((round(time.monotonic() - started, 2), end_rss))
        client.flush(60)
        data.wait_rows(stack, recorded, str(last), 120, worker.log_tail)
        dropped = client.dropped
    finally:
        client.close(30)
        worker.stop()
    stack.truncate()
    after_first = min(samples, key=lambda s: abs(s[0] - first_at))
    return {
        "seconds": seconds,
        "rate_events_per_s": rate,
        "events": recorded,
        "dropped": dropped,
        "rss_start_mb": round(start_rss / _MB, 2),
        "rss_after_first_minute_mb": round(after_first[1] / _MB, 2),
        "first_minute_sample_at_s": after_first[0],
        "rss_end_mb": round(end_rss / _MB, 2),
        "rss_peak_mb": round(max(s[1] for s in samples) / _MB, 2),
        "samples_mb": [(t, round(r / _MB, 2)) for t, r in samples],
    }
