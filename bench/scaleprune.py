"""Figure 8: retention of a closed month (issue 27).

A month 14 months back is filled with `rows` rows (as history: no rollup deltas), beside the
current month already in the table; then `ai-usage prune --older-than 13m` (the worker's
retention.prune, batches of 5,000) removes it while a writer stores a worker batch of new
events every WRITE_EVERY_S. Measured: the prune's wall time and WAL, the table's size (heap,
indexes, TOAST) before the month's rows came, with them, after the prune and after a plain
VACUUM (its time and WAL too), what the month left behind (the size after, less the size
before and the writer's rows), and the writer's batch p99 and longest write, alone for
ALONE_S and beside the prune (for at least as long).

Then the same month in the partitioned layout (`prune_month_partitioned`): a database of its
own, migrated by `ai-usage migrate` with AI_USAGE_LOG_LAYOUT=partitioned, holding a current
month of as many rows as the closed one (not the default layout's largest size: loading that
again would add minutes and says nothing more about a DROP), the month's partition made and
filled with the same rows, pruned the same way beside the same writer: the prune is then a
DETACH PARTITION ... CONCURRENTLY and a DROP."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import create_engine

from bench import data
from bench.scaledata import BATCH, SIZE, TENANTS, Loader, autocommit, new_batches, say, scalar
from bench.servers import Stack, throwaway_database
from worker.ledger.ingest import store_batch
from worker.ledger.months import add_months, month_start, next_month
from worker.ledger.partitions import create_partition
from worker.ledger.retention import prune
from worker.settings import normalise_database_url

OLDER_THAN = 13
WRITE_EVERY_S = 0.5
ALONE_S = 15.0
#: Row numbers of the old month start here, so that none repeats a current row's id.
FIRST_ROW = 10**10


class _Writer(threading.Thread):
    """A worker batch of new events every WRITE_EVERY_S, each prepared just before it is
    stored; the store's milliseconds."""

    def __init__(self, stack: Stack, tenants: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.stack, self.tenants = stack, tenants
        self.stopping = threading.Event()
        self.ms: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                (batch,) = new_batches(self.tenants, BATCH, "v7")
                t0 = time.perf_counter()
                store_batch(self.stack.engine, batch)
                self.ms.append((time.perf_counter() - t0) * 1000)
                self.stopping.wait(WRITE_EVERY_S)
        except BaseException as exc:  # reported by stop(), in the harness's thread
            self.error = exc

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.join()
        if self.error is not None:
            raise self.error
        ms = sorted(self.ms)
        return {
            "batches": len(ms),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
            "max_ms": round(ms[-1], 1) if ms else None,
        }


def _mb(stack: Stack) -> float:
    return round(int(scalar(stack, SIZE)) / 1e6, 1)


def _wal(stack: Stack) -> str:
    return str(scalar(stack, "SELECT pg_current_wal_lsn()"))


def _wal_mb(stack: Stack, since: str) -> float:
    wal = scalar(stack, "SELECT pg_current_wal_lsn() - CAST(:w AS pg_lsn)", {"w": since})
    return round(float(wal) / 1e6, 1)


def _old_month() -> dt.date:
    return add_months(month_start(dt.datetime.now(dt.UTC).date()), -(OLDER_THAN + 1))


def prune_month_partitioned(stack: Stack, rows: int) -> dict[str, Any]:
    """prune_month in a database of its own migrated with the partitioned layout."""
    with throwaway_database(stack.database_url, layout="partitioned") as url:
        engine = create_engine(normalise_database_url(url), pool_size=4)
        try:
            part = Stack(url, stack.redis_url, engine, stack.embedded)
            tenants = data.make_tenants(part, TENANTS)
            create_partition(engine, _old_month())
            loader = Loader(part, tenants, rows)
            say(f"partitioned layout: this month's {rows:,} rows")
            loader.insert(0, rows, loader.start, loader.step)
            return {"layout": "partitioned", **prune_month(part, loader, tenants, rows)}
        finally:
            engine.dispose()


def prune_month(stack: Stack, loader: Loader, tenants: Sequence[str], rows: int) -> dict[str, Any]:
    """Load a closed month of `rows` rows, prune it beside a writer, VACUUM; the figures."""
    out: dict[str, Any] = {"rows": rows, "older_than_months": OLDER_THAN}
    autocommit(stack, "VACUUM ANALYZE ai_usage_logs")
    out["table_mb_before_month"] = _mb(stack)
    old = _old_month()
    start = dt.datetime.combine(old, dt.time(), dt.UTC)
    step = (dt.datetime.combine(next_month(old), dt.time(), dt.UTC) - start) / rows
    t0 = time.perf_counter()
    loader.insert(FIRST_ROW, FIRST_ROW + rows, start, step)
    autocommit(stack, "VACUUM ANALYZE ai_usage_logs")
    out["load_s"] = round(time.perf_counter() - t0, 1)
    out["month"] = old.isoformat()
    out["table_mb_with_month"] = _mb(stack)

    writer = _Writer(stack, tenants)
    writer.start()
    time.sleep(ALONE_S)
    out["write_alone"] = writer.stop()

    autocommit(stack, "CHECKPOINT")
    wal0 = _wal(stack)
    writer = _Writer(stack, tenants)
    writer.start()
    say(f"pruning a {rows:,}-row month beside a writer")
    t0 = time.perf_counter()
    try:
        result = prune(stack.engine, OLDER_THAN)
        out["prune_s"] = round(time.perf_counter() - t0, 1)
        out["prune_wal_mb"] = _wal_mb(stack, wal0)  # the writer's beside it included
        # A prune shorter than the writer's window alone (a DROP takes a second) is watched
        # for as long, so that both p99s are taken over as many writes.
        time.sleep(max(0.0, ALONE_S - (time.perf_counter() - t0)))
    finally:
        out["write_beside_prune"] = writer.stop()
    out["rows_deleted"] = result.rows_deleted.total()
    out["prune_rows_per_s"] = round(out["rows_deleted"] / out["prune_s"]) if out["prune_s"] else 0
    out["table_mb_after_prune"] = _mb(stack)

    wal0 = _wal(stack)
    t0 = time.perf_counter()
    autocommit(stack, "VACUUM ai_usage_logs")
    out["vacuum_s"] = round(time.perf_counter() - t0, 1)
    out["vacuum_wal_mb"] = _wal_mb(stack, wal0)
    out["table_mb_after_vacuum"] = _mb(stack)
    alone, beside = out["write_alone"]["p99_ms"], out["write_beside_prune"]["p99_ms"]
    out["write_p99_beside_over_alone"] = beside / alone if alone and beside else None
    # What the month left behind: the table after it, less its size before the month came and
    # less the writer's rows meanwhile (at the month's bytes per row).
    per_row = (out["table_mb_with_month"] - out["table_mb_before_month"]) / rows
    written = (out["write_alone"]["batches"] + out["write_beside_prune"]["batches"]) * BATCH
    out["writer_rows"] = written
    out["left_behind_mb"] = round(
        out["table_mb_after_vacuum"] - out["table_mb_before_month"] - written * per_row, 1
    )
    before = out["table_mb_before_month"]
    out["after_vacuum_over_before_month"] = (
        out["table_mb_after_vacuum"] / before if before else None
    )
    return out
