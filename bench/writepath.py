"""What telling a conflicting duplicate from a redelivery costs the write path (issue 13): the
database half of a write (`store_batch`: COPY, INSERT ... ON CONFLICT, the conflict check when
an id was already stored) of the same prepared batches,

- with the fingerprint column filled, as the worker writes;
- with it left NULL (what the write was before fingerprints);
- again, all of them redeliveries (every id stored: the conflict query runs, finds none);

and the fingerprint's own cost in the preparation (blake2b of the row, per event). Variants
alternate over `reps` rounds on an emptied table; medians."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.servers import Stack
from worker.ledger.ingest import store_batch
from worker.ledger.pricing import Pricer
from worker.ledger.rows import PreparedBatch, WriteResult, prepare_batch


def _batches(evs: Sequence[dict[str, Any]], size: int, fingerprints: bool) -> list[PreparedBatch]:
    out = []
    pricer = Pricer()
    for i in range(0, len(evs), size):
        batch = prepare_batch(list(evs[i : i + size]), pricer)
        if not fingerprints:
            for row in batch.rows:
                head, _, _ = row.line.rpartition("\t")
                row.line = head + "\t\\N\n"
        out.append(batch)
    return out


def _store(stack: Stack, batches: Sequence[PreparedBatch]) -> float:
    started = time.perf_counter()
    for batch in batches:
        batch.result = WriteResult(received=len(batch.rows))  # each store counts afresh
        store_batch(stack.engine, batch)
    return time.perf_counter() - started


def write_path(
    stack: Stack, evs: Sequence[dict[str, Any]], size: int, reps: int = 5
) -> dict[str, Any]:
    n = len(evs)
    with_fp = _batches(evs, size, fingerprints=True)
    without_fp = _batches(evs, size, fingerprints=False)
    times: dict[str, list[float]] = {"fingerprint": [], "no_fingerprint": [], "redelivery": []}
    for _ in range(reps):
        stack.truncate()
        times["no_fingerprint"].append(_store(stack, without_fp))
        stack.truncate()
        times["fingerprint"].append(_store(stack, with_fp))
        times["redelivery"].append(_store(stack, with_fp))  # every id is stored now
    stack.truncate()
    line = with_fp[0].rows[0].line
    started = time.perf_counter()
    for _ in range(20_000):
        hashlib.blake2b(line.encode(), digest_size=16).digest()
    hash_us = (time.perf_counter() - started) / 20_000 * 1e6
    per_event = {k: statistics.median(v) / n * 1e6 for k, v in times.items()}
    return {
        "events": n,
        "batch": size,
        "reps": reps,
        "store_us_per_event": {k: round(v, 3) for k, v in per_event.items()},
        "runs_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "fingerprint_over_none": per_event["fingerprint"] / per_event["no_fingerprint"],
        "redelivery_over_fresh": per_event["redelivery"] / per_event["fingerprint"],
        "fingerprint_hash_us_per_event": round(hash_us, 3),
    }
