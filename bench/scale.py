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
made by the client's `new_id` (UUIDv7) and with random UUIDv4 ids, in alternating runs
(`rounds` of each, the order swapped each round). Before each run: a CHECKPOINT (each run
then writes the same full-page images after one) and, where the harness may, the operating
system's page cache dropped (`echo 1 > /proc/sys/vm/drop_caches`: as for a table larger than
memory; shared_buffers stays warm). Per run: rows/s, batch p50/p99/max, WAL bytes
(pg_current_wal_lsn), bytes read from disk (/proc/diskstats, the whole machine; only when the
server is on this machine) and blocks PostgreSQL read from outside its buffers (pg_statio).

At the largest size, our own additions to the table are measured in alternating runs: the
fingerprint column (filled, as the worker writes, against NULL) and the rollup-delta trigger
(enabled against disabled). Then `report --by user` over the month for the 1/15 and the 1/3
tenant: the plan and time of the log query with the planner's defaults (what it was before
issue 27) and of load_breakdown (what it is now), warm (median of 3) and with the page cache
dropped (once each)."""

from __future__ import annotations

import datetime as dt
import statistics
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text

from bench import data
from bench.servers import Stack
from worker.client.envelope import new_id
from worker.ledger import breakdown
from worker.ledger.ingest import store_batch
from worker.ledger.months import day_bounds, month_start
from worker.ledger.pricing import Pricer
from worker.ledger.rows import PreparedBatch, WriteResult, prepare_batch

TENANTS = 50
BATCH = 2000
CHUNK = 2_000_000  # rows a loading statement
USERS = 100  # of each of the two measured tenants
DELTA_TRIGGER = "ai_usage_logs_delta_insert"

# Row g's tenant: 1/15 of the rows to tenant 1 (2M of 30M), 1/3 to tenant 2 (10M of 30M), the
# rest round-robin over the other 48. Its id: a UUIDv7 of its created_at (md5 of g for the
# random bits); its fingerprint: 16 bytes, as the worker's.
_GENERATE = """
INSERT INTO ai_usage_logs (id, tenant_id, user_id, operation, model, input_tokens,
    output_tokens, total_tokens, cost_usd, duration_ms, success, created_at,
    cache_read_tokens, cache_write_tokens, fingerprint)
SELECT CAST(lpad(to_hex(CAST(floor(extract(epoch FROM ts) * 1000) AS bigint)), 12, '0')
            || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15) AS uuid),
       CASE WHEN g % 15 = 0 THEN t[1] WHEN g % 3 = 1 THEN t[2] ELSE t[3 + g % (nt - 2)] END,
       CASE WHEN g % 15 = 0 THEN u1[1 + (g / 15) % :nu]
            WHEN g % 3 = 1 THEN u2[1 + (g / 3) % :nu] END,
       (CAST(:operations AS text[]))[1 + g % 3], (CAST(:models AS text[]))[1 + (g / 3) % 4],
       100 + g % 5000, 10 + g % 700, 110 + g % 5000 + g % 700,
       CASE WHEN g % 50 = 0 THEN NULL ELSE 0.00001 * (g % 997) END, 300 + g % 9000,
       CASE WHEN g % 40 = 0 THEN 'failure' ELSE 'success' END, ts, 0, 0, decode(h, 'hex')
FROM (
    SELECT g, md5(g::text) AS h, CAST(:start AS timestamptz) + g * CAST(:step AS interval) AS ts,
           CAST(:tenants AS uuid[]) AS t, CAST(:users1 AS uuid[]) AS u1,
           CAST(:users2 AS uuid[]) AS u2, CAST(:nt AS int) AS nt
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
) AS s
"""
_SIZE = "SELECT pg_total_relation_size('ai_usage_logs')"
_STATIO = """
SELECT COALESCE(heap_blks_read, 0) + COALESCE(idx_blks_read, 0)
       + COALESCE(toast_blks_read, 0) + COALESCE(tidx_blks_read, 0)
FROM pg_statio_user_tables WHERE relname = 'ai_usage_logs'
"""


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] scale: {msg}", flush=True)


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


class _Machine:
    """What the harness can see and do on the database's machine: drop the page cache, read
    the disks' counters. Only when the server is on this machine."""

    def __init__(self, database_url: str) -> None:
        host = urlsplit(database_url).hostname or "localhost"
        self.local = host in ("localhost", "127.0.0.1", "::1") or host.startswith("/")
        self.can_drop = self.local and self._drop()

    @staticmethod
    def _drop() -> bool:
        try:
            subprocess.run(["sync"], check=True, timeout=120)
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        except (OSError, subprocess.SubprocessError):
            return False
        return True

    def drop(self) -> None:
        if self.can_drop:
            self._drop()

    def read_bytes(self) -> int | None:
        """Bytes read from the machine's whole disks so far (partitions left out)."""
        if not self.local:
            return None
        try:
            lines = Path("/proc/diskstats").read_text().splitlines()
        except OSError:
            return None
        total = 0
        for line in lines:
            f = line.split()
            # Whole disks only (a partition's reads are its disk's too); no device-mapper
            # volume over them, nor loop or RAM devices.
            if f[2].startswith(("loop", "ram", "dm-", "sr", "zram")):
                continue
            if Path(f"/sys/block/{f[2]}").exists():
                total += int(f[5]) * 512
        return total


def _scalar(stack: Stack, sql: str, params: dict[str, Any] | None = None) -> Any:
    with stack.engine.connect() as conn:
        return conn.execute(text(sql), params or {}).scalar()


def _autocommit(stack: Stack, *statements: str) -> None:
    with stack.engine.connect() as conn:
        c = conn.execution_options(isolation_level="AUTOCOMMIT")
        for sql in statements:
            c.execute(text(sql))


def _make_users(stack: Stack, tenant: str) -> list[str]:
    with stack.engine.begin() as conn:
        return [
            str(u)
            for u in conn.execute(
                text(
                    "INSERT INTO users (tenant_id, name) SELECT :t, 'bench-user-' || i"
                    " FROM generate_series(1, :n) AS i RETURNING id"
                ),
                {"t": tenant, "n": USERS},
            ).scalars()
        ]


def _indexes(stack: Stack) -> tuple[str, list[str]]:
    """The primary key's name and the CREATE INDEX statements of the other indexes."""
    with stack.engine.connect() as conn:
        pk = conn.execute(
            text(
                "SELECT conname FROM pg_constraint"
                " WHERE conrelid = 'ai_usage_logs'::regclass AND contype = 'p'"
            )
        ).scalar_one()
        others = conn.execute(
            text(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'ai_usage_logs'"
                " AND indexname <> :pk ORDER BY indexname"
            ),
            {"pk": pk},
        ).scalars()
        return str(pk), [str(x) for x in others]


class _Loader:
    """Grows the month to each size; row numbers are global, so a larger size extends the
    smaller one in time order."""

    def __init__(self, stack: Stack, tenants: Sequence[str], largest: int) -> None:
        self.stack = stack
        self.tenants = list(tenants)
        self.users = (_make_users(stack, tenants[0]), _make_users(stack, tenants[1]))
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        self.start = dt.datetime.combine(month_start(now.date()), dt.time(), dt.UTC)
        if now - self.start < dt.timedelta(hours=1):  # the month began minutes ago
            self.start = now - dt.timedelta(hours=1)
        self.step = (now - self.start) / largest
        self.rows = 0

    def grow(self, to: int) -> float:
        """Rows self.rows..to-1; seconds, index builds included."""
        started = time.perf_counter()
        pk, indexes = _indexes(self.stack)
        with self.stack.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE ai_usage_logs DROP CONSTRAINT {pk}"))
            for ddl in indexes:
                conn.execute(text("DROP INDEX " + ddl.split()[2]))
        for lo in range(self.rows, to, CHUNK):
            hi = min(to, lo + CHUNK) - 1
            with self.stack.engine.begin() as conn:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(
                    text(_GENERATE),
                    {
                        "tenants": self.tenants,
                        "nt": len(self.tenants),
                        "users1": self.users[0],
                        "users2": self.users[1],
                        "nu": USERS,
                        "operations": list(data.OPERATIONS),
                        "models": list(data.MODELS),
                        "start": self.start,
                        "step": self.step,
                        "lo": lo,
                        "hi": hi,
                    },
                )
            _say(f"loaded {hi + 1:,} rows")
        with self.stack.engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            conn.execute(text(f"ALTER TABLE ai_usage_logs ADD CONSTRAINT {pk} PRIMARY KEY (id)"))
            for ddl in indexes:
                conn.execute(text(ddl))
        _autocommit(self.stack, "VACUUM ANALYZE ai_usage_logs")
        self.rows = to
        return time.perf_counter() - started


def _events(tenants: Sequence[str], n: int, ids: str) -> list[PreparedBatch]:
    """`n` new events dated now in prepared batches, with the client's ids or random v4."""
    evs = data.events(n, tenants, seed=int(time.time_ns() % 1_000_003))
    if ids == "v7":
        for e in evs:
            e["id"] = str(new_id())
    pricer = Pricer()
    return [prepare_batch(evs[i : i + BATCH], pricer) for i in range(0, n, BATCH)]


def _null_fingerprints(batches: Sequence[PreparedBatch]) -> None:
    for batch in batches:
        for row in batch.rows:
            head, _, _ = row.line.rpartition("\t")
            row.line = head + "\t\\N\n"


def _run(stack: Stack, machine: _Machine, batches: Sequence[PreparedBatch]) -> dict[str, Any]:
    """Store the batches after a checkpoint and a dropped page cache; rates and costs."""
    _autocommit(stack, "CHECKPOINT")
    machine.drop()
    wal0 = _scalar(stack, "SELECT pg_current_wal_lsn()")
    disk0, blks0 = machine.read_bytes(), int(_scalar(stack, _STATIO) or 0)
    times = []
    started = time.perf_counter()
    for batch in batches:
        batch.result = WriteResult(received=len(batch.rows))
        t0 = time.perf_counter()
        store_batch(stack.engine, batch)
        times.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    disk1 = machine.read_bytes()
    wal = _scalar(stack, "SELECT pg_current_wal_lsn() - CAST(:w AS pg_lsn)", {"w": wal0})
    blks = int(_scalar(stack, _STATIO) or 0) - blks0
    n = sum(len(b.rows) for b in batches)
    ms = sorted(t * 1000 for t in times)
    return {
        "events": n,
        "rows_per_s": n / seconds,
        "batch_p50_ms": round(statistics.median(ms), 2),
        "batch_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "batch_max_ms": round(ms[-1], 2),
        "wal_mb": round(float(wal) / 1e6, 1),
        "disk_read_mb": None if disk0 is None or disk1 is None else round((disk1 - disk0) / 1e6, 1),
        "pg_blocks_read_mb": round(blks * 8192 / 1e6, 1),
    }


def _pairs(
    stack: Stack, machine: _Machine, tenants: Sequence[str], n: int, rounds: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"v4": [], "v7": []}
    for r in range(rounds):
        for ids in ("v7", "v4") if r % 2 == 0 else ("v4", "v7"):
            runs[ids].append(_run(stack, machine, _events(tenants, n, ids)))
            _say(f"  {ids}: {runs[ids][-1]['rows_per_s']:,.0f} rows/s")
    out: dict[str, Any] = {"runs": runs}
    for ids, rs in runs.items():
        for key in ("rows_per_s", "wal_mb", "disk_read_mb", "batch_p99_ms"):
            values = [x[key] for x in rs if x[key] is not None]
            out[f"{ids}_{key}"] = statistics.median(values) if values else None
    out["v4_over_v7"] = out["v4_rows_per_s"] / out["v7_rows_per_s"]
    return out


def _ours(
    stack: Stack, machine: _Machine, tenants: Sequence[str], n: int, rounds: int
) -> dict[str, Any]:
    """Fingerprint and delta trigger, each with and without, alternating (v7 ids)."""
    variants = ("full", "no_fingerprint", "no_delta_trigger")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            batches = _events(tenants, n, "v7")
            if variant == "no_fingerprint":
                _null_fingerprints(batches)
            if variant == "no_delta_trigger":
                _autocommit(stack, f"ALTER TABLE ai_usage_logs DISABLE TRIGGER {DELTA_TRIGGER}")
            try:
                runs[variant].append(_run(stack, machine, batches))
            finally:
                _autocommit(stack, f"ALTER TABLE ai_usage_logs ENABLE TRIGGER {DELTA_TRIGGER}")
            _say(f"  {variant}: {runs[variant][-1]['rows_per_s']:,.0f} rows/s")
    rate = {v: statistics.median(x["rows_per_s"] for x in runs[v]) for v in variants}
    return {
        "runs": runs,
        "rows_per_s": rate,
        "fingerprint_cost": rate["no_fingerprint"] / rate["full"],
        "delta_trigger_cost": rate["no_delta_trigger"] / rate["full"],
    }


def _scans(plan: Any) -> list[str]:
    """The plan's scan nodes, e.g. "Parallel Seq Scan on ai_usage_logs", "Bitmap Index Scan
    on idx_ai_usage_logs_tenant_created", from EXPLAIN (FORMAT JSON)."""
    out: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        kind = str(node.get("Node Type", ""))
        if "Scan" in kind:
            where = node.get("Index Name") or node.get("Relation Name") or ""
            out.append(f"{'Parallel ' if node.get('Parallel Aware') else ''}{kind} on {where}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return out


def _report(stack: Stack, machine: _Machine, tenant: str, reps: int = 3) -> dict[str, Any]:
    """`report --by user` for `tenant` over this month: the log query with the planner's
    defaults (before) and load_breakdown (now)."""
    first, last = breakdown.default_range()
    start, end = day_bounds(first, last)
    params = {"tenant": tenant, "start": start, "end": end}

    def before() -> Any:
        with stack.engine.connect() as conn:
            return conn.execute(text(breakdown.USER_SQL), params).all()

    def after() -> Any:
        return breakdown.load_breakdown(stack.engine, "user", first, last, uuid.UUID(tenant))

    with stack.engine.connect() as conn:
        plan_before = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), params
        ).scalar()
    with stack.engine.begin() as conn:
        breakdown.plan_user_query(conn)
        plan_after = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + breakdown.USER_SQL), params
        ).scalar()
    out: dict[str, Any] = {
        "rows": int(
            _scalar(
                stack,
                "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = :tenant"
                " AND created_at >= :start AND created_at < :end",
                params,
            )
        ),
        "before_scans": _scans(plan_before),
        "after_scans": _scans(plan_after),
    }
    for name, fn in (("before", before), ("after", after)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_warm_s"] = round(statistics.median(times), 3)
    for name, fn in (("before", before), ("after", after)):
        machine.drop()
        t0 = time.perf_counter()
        fn()
        out[f"{name}_cold_s"] = round(time.perf_counter() - t0, 3)
    return out


def scale(
    stack: Stack, sizes: Sequence[int], events: int = 200_000, rounds: int = 2
) -> dict[str, Any]:
    """The whole section; the table is emptied before and after."""
    machine = _Machine(stack.database_url)
    stack.truncate()
    tenants = data.make_tenants(stack, TENANTS)
    loader = _Loader(stack, tenants, sizes[-1])
    out: dict[str, Any] = {
        "events_per_run": events,
        "batch": BATCH,
        "rounds": rounds,
        "page_cache_dropped": machine.can_drop,
        "disk_reads_measured": machine.local,
        "sizes": {},
    }
    try:
        _say("0 rows")
        out["sizes"]["0"] = _pairs(stack, machine, tenants, events, rounds)
        stack.truncate()
        for size in sizes:
            _say(f"loading to {size:,} rows")
            load_s = loader.grow(size)
            at = _pairs(stack, machine, tenants, events, rounds)
            at["load_s"] = round(load_s, 1)
            at["table_mb"] = round(int(_scalar(stack, _SIZE)) / 1e6)
            for ids in ("v4", "v7"):
                at[f"{ids}_over_empty"] = (
                    at[f"{ids}_rows_per_s"] / out["sizes"]["0"][f"{ids}_rows_per_s"]
                )
            out["sizes"][str(size)] = at
        largest = out["sizes"][str(sizes[-1])]
        out["largest"] = sizes[-1]
        out["v7_largest_over_empty"] = largest["v7_over_empty"]
        out["v4_largest_over_empty"] = largest["v4_over_empty"]
        _say("our additions: fingerprint, delta trigger")
        out["ours"] = _ours(stack, machine, tenants, events, rounds)
        _say("report --by user")
        out["report_user"] = {
            "tenant_1_of_15": _report(stack, machine, tenants[0]),
            "tenant_1_of_3": _report(stack, machine, tenants[1]),
        }
    finally:
        stack.truncate()
    return out
