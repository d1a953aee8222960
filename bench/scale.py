"""Figure 8 (issue 27): the worker's write path, and `report --by user`, as the month grows.

The current month of ai_usage_logs is filled to each of `sizes` in turn (by default 10M, then
30M rows; 50 tenants, one with 1/15 of the rows and one with 1/3, the rest spread; each row's
id a UUIDv7 of its created_at, the month's rows in time order, as the client's ids make a
month). The rows are made by PostgreSQL itself (`INSERT ... SELECT` over generate_series, 2M a
statement) with the table's indexes dropped and built again after, and FK checks and
triggers off for the loading session (`session_replication_role = replica`): one pass over the
heap and one sorted build per index, instead of a COPY stream made in Python and indexes
maintained row by row, which would take an hour here for 30M rows.

At 0 rows and at each size, the worker's own write path (worker.ledger.ingest.store_batch of
batches prepared before, 2,000 events each) stores `events` new events dated now, with ids
made by the client's `new_id` (UUIDv7) and with random UUIDv4 ids; at each size the same runs
go to an empty table in a second throwaway database too (emptied before each of its runs), and
each round's ratio to it is taken in the same minutes (`rounds` rounds, the order of the four
runs rotated each round; medians). Before each run: a CHECKPOINT (each run then writes the
same full-page images after one) and, where the harness may, the operating system's page cache
dropped (`echo 1 > /proc/sys/vm/drop_caches`: as for a table larger than memory;
shared_buffers stays warm). Per run: rows/s, batch p50/p99/max, WAL bytes
(pg_current_wal_lsn), bytes read from disk (/proc/diskstats, the whole machine, other
processes' reads included; only when the server is on this machine) and blocks PostgreSQL read
from outside its buffers (pg_statio).

At the largest size, our own additions to the table are each left out, in the same seconds:
the fingerprint column (NULL instead of filled, as the worker writes it), batch by batch
against the full write, and the rollup-delta trigger, disabled for blocks of batches between
blocks of the other two. Then the month's rollups are recomputed from the log (timed; the
loaded rows left no deltas) and `report --by user` runs over the month for the 1/15 and the
1/3 tenant: the plan and time of load_breakdown (the per-user rollups) and of the log query it
ran before, warm (median of 3) and with the page cache dropped (once each)
(bench/scalereport.py). Last, the retention of a closed month of
`prune_rows` rows beside a writer, in the default layout and in the partitioned one
(bench/scaleprune.py), after the write path of the two layouts compared, both empty
(bench/scalelayout.py). Data: bench/scaledata.py."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench import data
from bench.scaledata import (
    BATCH,
    SIZE,
    STATIO,
    TENANTS,
    Loader,
    Machine,
    autocommit,
    new_batches,
    say,
    scalar,
    twin_database,
)
from bench.scalelayout import layout_ingest
from bench.scaleprune import prune_month, prune_month_partitioned
from bench.scalereport import rollup_month, user_report
from bench.servers import Stack
from worker.ledger.ingest import store_batch
from worker.ledger.rows import PreparedBatch, WriteResult

DELTA_TRIGGER = "ai_usage_logs_delta_insert"
T = TypeVar("T")


def parse_sizes(value: str) -> list[int]:
    """`10M,30M` (or 1M, 500k, 250000) as row counts, increasing; ValueError names the flag."""
    out = []
    for part in value.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        try:
            n = int(float(part[:-1] if mult > 1 else part) * mult)
        except ValueError:
            raise ValueError(f"--scale-rows: {part!r} is not a row count (e.g. 10M)") from None
        if n < 1000:
            raise ValueError(f"--scale-rows: {part!r} is under 1000 rows")
        out.append(n)
    if not out or out != sorted(set(out)):
        raise ValueError("--scale-rows: give increasing sizes, e.g. 1M,3M")
    return out


def _null_fingerprints(batches: Sequence[PreparedBatch]) -> None:
    for batch in batches:
        for row in batch.rows:
            head, _, _ = row.line.rpartition("\t")
            row.line = head + "\t\\N\n"


@dataclass
class _Acc:
    """One target's sums over a run."""

    blks: int
    seconds: list[float] = field(default_factory=list)
    wal: float = 0.0
    disk: int = 0


def _store_each(
    targets: Sequence[Stack],
    machine: Machine,
    probe: Stack,
    batches: Sequence[PreparedBatch],
    acc: Sequence[_Acc],
) -> None:
    for batch in batches:
        for t, a in zip(targets, acc, strict=True):
            wal0 = scalar(probe, "SELECT pg_current_wal_lsn()")
            disk0 = machine.read_bytes() or 0
            batch.result = WriteResult(received=len(batch.rows))
            t0 = time.perf_counter()
            store_batch(t.engine, batch)
            a.seconds.append(time.perf_counter() - t0)
            a.disk += (machine.read_bytes() or 0) - disk0
            a.wal += float(
                scalar(probe, "SELECT pg_current_wal_lsn() - CAST(:w AS pg_lsn)", {"w": wal0})
            )


def _run(
    targets: Sequence[Stack], machine: Machine, batches: Sequence[PreparedBatch]
) -> list[dict[str, Any]]:
    """Store the batches into each target, batch by batch in turn (the same rows: each target
    sees the same load in the same seconds), after a checkpoint and a dropped page cache; per
    target its rate (rows / seconds spent in its stores), batch times, WAL and reads."""
    for t in targets:
        autocommit(t, "CHECKPOINT")
    machine.drop()
    probe = targets[0]
    acc = [_Acc(blks=int(scalar(t, STATIO) or 0)) for t in targets]
    disk_known = machine.read_bytes() is not None
    with _no_gc():
        _store_each(targets, machine, probe, batches, acc)
    n = sum(len(b.rows) for b in batches)
    out = []
    for t, a in zip(targets, acc, strict=True):
        ms = sorted(x * 1000 for x in a.seconds)
        out.append(
            {
                "events": n,
                "rows_per_s": n / sum(a.seconds),
                "batch_p50_ms": round(statistics.median(ms), 2),
                "batch_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
                "batch_max_ms": round(ms[-1], 2),
                "wal_mb": round(a.wal / 1e6, 1),
                "disk_read_mb": round(a.disk / 1e6, 1) if disk_known else None,
                "pg_blocks_read_mb": round((int(scalar(t, STATIO) or 0) - a.blks) * 8192 / 1e6, 1),
            }
        )
    return out


def _pairs(
    stack: Stack,
    empty: Stack | None,
    machine: Machine,
    tenants: Sequence[str],
    n: int,
    rounds: int,
) -> dict[str, Any]:
    """`rounds` runs of v7 and of v4 ids (alternating which goes first), each into the table
    and, with `empty`, into an empty table of another database (emptied before each run),
    batch by batch in turn: on this shared 2-core box the rate of the same run moves by half
    from one minute to the next, so each run's ratio to the empty table is taken in the same
    seconds; medians."""
    keys = ["v7", "v4"] + (["v7_empty", "v4_empty"] if empty is not None else [])
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for r in range(rounds):
        for ids in ("v7", "v4") if r % 2 == 0 else ("v4", "v7"):
            if empty is not None:
                empty.truncate()
            targets = [stack] if empty is None else [stack, empty]
            got = _run(targets, machine, new_batches(tenants, n, ids))
            runs[ids].append(got[0])
            if empty is not None:
                runs[f"{ids}_empty"].append(got[1])
                ratio = got[0]["rows_per_s"] / got[1]["rows_per_s"]
                say(f"  {ids}: {got[0]['rows_per_s']:,.0f} rows/s, {ratio:.2f} x empty")
            else:
                say(f"  {ids}: {got[0]['rows_per_s']:,.0f} rows/s")
    out: dict[str, Any] = {"runs": runs}
    for key, rs in runs.items():
        for name in ("rows_per_s", "wal_mb", "disk_read_mb", "batch_p99_ms"):
            values = [x[name] for x in rs if x[name] is not None]
            out[f"{key}_{name}"] = statistics.median(values) if values else None
        if key.endswith("_empty"):
            ids = key[:2]
            out[f"{ids}_over_empty_by_run"] = [
                round(a["rows_per_s"] / b["rows_per_s"], 3)
                for a, b in zip(runs[ids], rs, strict=True)
            ]
            out[f"{ids}_over_empty"] = statistics.median(out[f"{ids}_over_empty_by_run"])
    out["v4_over_v7"] = out["v4_rows_per_s"] / out["v7_rows_per_s"]
    return out


@contextmanager
def _no_gc() -> Iterator[None]:
    """The harness's garbage collector off while stores are timed: it holds hundreds of
    thousands of prepared events, and a full collection (about 100 ms) would land on whichever
    store was running."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _fingerprint_plan(batches: Sequence[T]) -> list[tuple[str, T]]:
    """Full writes and writes with the fingerprint left NULL, batch by batch in turn, the one
    that leads swapping every pair, so that neither is always the first store after the
    other."""
    plan: list[tuple[str, T]] = []
    for i, batch in enumerate(batches):
        first, second = (
            ("full", "no_fingerprint") if (i // 2) % 2 == 0 else ("no_fingerprint", "full")
        )
        plan.append((first if i % 2 == 0 else second, batch))
    return plan


def _trigger_plan(batches: Sequence[T], block: int = 5) -> list[tuple[str, T]]:
    """Blocks of `block` full writes and blocks of `block` writes with the delta trigger
    disabled, in turn. The trigger is switched only between blocks: each switch (an ALTER
    TABLE) invalidates every session's cached plans, and that cost then lands on the first
    store of every block, of either kind alike."""
    plan: list[tuple[str, T]] = []
    for i, batch in enumerate(batches):
        plan.append(("full" if (i // block) % 2 == 0 else "no_delta_trigger", batch))
    return plan


def _timed(stack: Stack, plan: Sequence[tuple[str, PreparedBatch]]) -> dict[str, float]:
    """Each variant's rate (rows over the seconds spent in its stores); the delta trigger is
    disabled for the stores of `no_delta_trigger` and enabled again after."""
    spent: dict[str, float] = {}
    stored: dict[str, int] = {}
    enabled = True

    def switch(on: bool) -> None:
        state = "ENABLE" if on else "DISABLE"
        autocommit(stack, f"ALTER TABLE ai_usage_logs {state} TRIGGER {DELTA_TRIGGER}")

    try:
        with _no_gc():
            for v, batch in plan:
                if (v == "no_delta_trigger") == enabled:
                    enabled = not enabled
                    switch(enabled)
                batch.result = WriteResult(received=len(batch.rows))
                t0 = time.perf_counter()
                store_batch(stack.engine, batch)
                spent[v] = spent.get(v, 0.0) + time.perf_counter() - t0
                stored[v] = stored.get(v, 0) + len(batch.rows)
    finally:
        if not enabled:
            switch(True)
    return {v: stored[v] / spent[v] for v in spent}


def _ours(stack: Stack, tenants: Sequence[str], n: int, rounds: int) -> dict[str, Any]:
    """Our additions to the write path, each left out (v7 ids, about `n` events a variant a
    round), in two experiments of their own: the fingerprint (NULL), alternating with the full
    write batch by batch with the trigger on throughout; then the rollup-delta trigger,
    disabled for blocks of batches between blocks of full writes (see _trigger_plan). (An
    earlier design mixed the two in one sequence: the writes without a fingerprint then came
    out 20-26% slower than the full ones, in every round of every run, which a direct
    comparison of the two alone did not show: it was the design, not the fingerprint.) The ids
    come from one stream in the order of the stores, so every store goes to the right edge of
    the primary key. Per round each variant's rate over the full write's; medians."""
    by_round: dict[str, list[float]] = {"no_fingerprint": [], "no_delta_trigger": []}
    rates: dict[str, list[int]] = {}
    for _ in range(rounds):
        plan = _fingerprint_plan(new_batches(tenants, 2 * n, "v7"))
        _null_fingerprints([b for v, b in plan if v == "no_fingerprint"])
        got = _timed(stack, plan)
        by_round["no_fingerprint"].append(round(got["no_fingerprint"] / got["full"], 3))
        got2 = _timed(stack, _trigger_plan(new_batches(tenants, 2 * n, "v7")))
        by_round["no_delta_trigger"].append(round(got2["no_delta_trigger"] / got2["full"], 3))
        for name, value in (
            ("full", got["full"]),
            ("no_fingerprint", got["no_fingerprint"]),
            ("full_trigger_pass", got2["full"]),
            ("no_delta_trigger", got2["no_delta_trigger"]),
        ):
            rates.setdefault(name, []).append(round(value))
        say("  " + ", ".join(f"{v}: {r[-1]:,} rows/s" for v, r in rates.items()))
    return {
        "events_per_variant": n,
        "rows_per_s": rates,
        "over_full_by_round": by_round,
        "fingerprint_cost": statistics.median(by_round["no_fingerprint"]),
        "delta_trigger_cost": statistics.median(by_round["no_delta_trigger"]),
    }


def scale(
    stack: Stack,
    sizes: Sequence[int],
    events: int = 200_000,
    rounds: int = 3,
    prune_rows: int = 10_000_000,
) -> dict[str, Any]:
    """The whole section; the table is emptied before and after."""
    machine = Machine(stack.database_url)
    stack.truncate()
    tenants = data.make_tenants(stack, TENANTS)
    loader = Loader(stack, tenants, sizes[-1])
    out: dict[str, Any] = {
        "events_per_run": events,
        "batch": BATCH,
        "rounds": rounds,
        "page_cache_dropped": machine.can_drop,
        "disk_reads_measured": machine.local,
        "sizes": {},
    }
    try:
        say("0 rows")
        out["sizes"]["0"] = _pairs(stack, None, machine, tenants, events, rounds)
        stack.truncate()
        with twin_database(stack, tenants) as empty:
            for size in sizes:
                say(f"loading to {size:,} rows")
                load_s = loader.grow(size)
                at = _pairs(stack, empty, machine, tenants, events, rounds)
                at["load_s"] = round(load_s, 1)
                at["table_mb"] = round(int(scalar(stack, SIZE)) / 1e6)
                out["sizes"][str(size)] = at
        largest = out["sizes"][str(sizes[-1])]
        out["largest"] = sizes[-1]
        out["v7_largest_over_empty"] = largest["v7_over_empty"]
        out["v4_largest_over_empty"] = largest["v4_over_empty"]
        say("our additions: fingerprint, delta trigger")
        out["ours"] = _ours(stack, tenants, events // 2, rounds)
        say("report --by user (the month's rollups recomputed from the log first)")
        out["report_user"] = {
            "rollup_month_s": rollup_month(stack),
            "tenant_1_of_15": user_report(stack, machine, tenants[0]),
            "tenant_1_of_3": user_report(stack, machine, tenants[1]),
        }
        say("the write path, partitioned layout over the default, both empty")
        out["layout_ingest"] = layout_ingest(stack, tenants, events // 2, rounds)
        if prune_rows:
            say(f"retention of a {prune_rows:,}-row month")
            out["prune"] = prune_month(stack, loader, tenants, prune_rows)
            say(f"retention of a {prune_rows:,}-row month, partitioned layout")
            out["prune_partitioned"] = prune_month_partitioned(stack, prune_rows)
    finally:
        stack.truncate()
    return out
