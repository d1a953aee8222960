"""The batch writer: store a prepared batch of usage events in one transaction.

Every event of a batch ends in exactly one of: inserted, duplicate (its id is already stored
with the same content), conflicting duplicate (stored with other content: dead-lettered, the
stored row unchanged), dead-lettered (invalid, or refused by the database). Rows whose
references the database refuses (a tenant deleted while its events were queued, say) are found
in one query and dead-lettered together; anything else a row does wrong is isolated by
bisecting under savepoints, so one bad row never fails its neighbours. A database outage raises
TransientError and nothing is written; the caller retries the whole batch.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
import psycopg2.errors
from sqlalchemy import Engine

from worker import metrics
from worker.client.errors import TransientError
from worker.ledger.deadstore import store_dead_letters
from worker.ledger.pricing import Pricer
from worker.ledger.refusals import (
    by_month,
    describe_db_error,
    log_dead_letters,
    no_partition,
    refuse_closed,
)
from worker.ledger.rows import (
    COLUMNS,
    DeadLetter,
    MalformedMessage,
    PreparedBatch,
    Row,
    WriteResult,
    conflict,
    prepare_batch,
)

__all__ = [
    "DeadLetter",
    "MalformedMessage",
    "PreparedBatch",
    "WriteResult",
    "prepare_batch",
    "store_batch",
    "write_batch",
]

log = logging.getLogger(__name__)

_STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ai_usage_staging ("
    "id uuid, tenant_id uuid, user_id uuid, operation text, model text, input_tokens integer,"
    " output_tokens integer, total_tokens integer, assessment_id uuid, lead_id uuid,"
    " duration_ms integer, success text, created_at timestamptz, cache_read_tokens integer,"
    " cache_write_tokens integer, usage_details jsonb, provider text,"
    " cost_usd double precision, fingerprint bytea) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY ai_usage_staging ({', '.join(COLUMNS)}) FROM STDIN"
# The common case, a batch of events none of which is stored yet, is copied straight into the
# table: PostgreSQL then writes each row once, not into the staging table and again by
# INSERT ... SELECT (measured on one connection: faster in 8 alternating pairs of 100k rows, by
# 1% to 56%, about a fifth in the median). A stored id makes it fail with a unique violation,
# and the batch goes the staged way, which skips what is stored.
_COPY_DIRECT = f"COPY ai_usage_logs ({', '.join(COLUMNS)}) FROM STDIN"
# No conflict target: PostgreSQL refuses `ON CONFLICT (id)` on a partitioned table (no unique
# index on id alone spans its partitions), and without a target every unique index arbitrates.
# In the plain layout that is the primary key alone (tests/partitions/test_layout.py checks),
# so the statement means what `ON CONFLICT (id)` did; in the partitioned one, both the primary
# key (id, created_at) and the partition's unique index on (id) (worker.ledger.layout).
_MOVE = (
    f"INSERT INTO ai_usage_logs ({', '.join(COLUMNS)})"
    f" SELECT {', '.join(COLUMNS)} FROM ai_usage_staging"
    " ON CONFLICT DO NOTHING"
)
# Staged rows whose id is stored with another fingerprint, and the fields that differ. Rows
# stored before fingerprints existed (NULL) cannot be compared, and are taken as duplicates.
# In the partitioned layout an id may be stored in two months (docs/ledger/scale.md): the row
# compared is then the one of the staged row's own month, which the row it conflicted with, or
# was just stored as, is (one per month: the partition's unique index on id). The layout is
# read in the statement itself (an InitPlan, run once): in the plain layout the condition is
# true at once and the join is the one it always was (a redelivered batch of 2,000: 19.1 ms
# against 18.8, in 16 alternating rounds; a LATERAL look-up, same month first, took 21.7).
_COMPARED = (
    "tenant_id",
    "user_id",
    "assessment_id",
    "lead_id",
    "operation",
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "usage_details",
    "provider",
    "duration_ms",
    "success",
    "created_at",
)
_PARTITIONED = (
    "EXISTS (SELECT FROM pg_class WHERE oid = 'ai_usage_logs'::regclass AND relkind = 'p')"
)
_CONFLICTS = (
    "SELECT s.id, array_remove(ARRAY["
    + ", ".join(f"CASE WHEN s.{c} IS DISTINCT FROM l.{c} THEN '{c}' END" for c in _COMPARED)
    + "], NULL) FROM ai_usage_staging s JOIN ai_usage_logs l ON l.id = s.id"
    f" AND (NOT {_PARTITIONED} OR date_trunc('month', l.created_at AT TIME ZONE 'UTC')"
    " = date_trunc('month', s.created_at AT TIME ZONE 'UTC'))"
    " WHERE l.fingerprint <> s.fingerprint"
)
# Staged rows that reference a parent row that does not exist, with the first such column.
_ORPHANS = (
    "SELECT s.id, CASE"
    " WHEN NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = s.tenant_id) THEN 'tenant_id'"
    " WHEN s.user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)"
    " THEN 'user_id'"
    " WHEN s.assessment_id IS NOT NULL AND NOT EXISTS"
    " (SELECT 1 FROM assessments a WHERE a.id = s.assessment_id) THEN 'assessment_id'"
    " WHEN s.lead_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM leads d WHERE d.id = s.lead_id)"
    " THEN 'lead_id' END FROM ai_usage_staging s"
)
_PARENTS = {
    "tenant_id": "tenants",
    "user_id": "users",
    "assessment_id": "assessments",
    "lead_id": "leads",
}
_PROLOGUE = "SAVEPOINT batch; SELECT ARRAY(SELECT month FROM ai_usage_closed_months)"
# Every way other than the direct COPY starts here; the staging table is made when first
# needed in a session (one made after the savepoint goes with it: made again to retry).
_ROLLBACK = f"ROLLBACK TO SAVEPOINT batch; {_STAGING_DDL}"
_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)
_ROW_ERRORS = (psycopg2.IntegrityError, psycopg2.DataError)


def store_batch(
    engine: Engine,
    batch: PreparedBatch,
    *,
    on_connection: Callable[[Any], None] | None = None,
) -> WriteResult:
    """The database half: store the rows and dead letters in one transaction. Idempotent by
    event id. Raises TransientError if the database is unavailable; then nothing was written.
    `on_connection` is given the psycopg2 connection used (a caller may `cancel()` its
    statement from another thread), then None when the write is over."""
    result = batch.result
    try:
        raw = engine.raw_connection()
    except Exception as exc:
        raise TransientError(f"database unavailable: {type(exc).__name__}") from exc
    if on_connection is not None:
        on_connection(raw.driver_connection)
    try:
        with raw.cursor() as cur:  # type: ignore[attr-defined]
            if batch.rows:
                _insert(cur, batch.rows, result)
            store_dead_letters(cur, result.dead_letters)
        raw.commit()
    except _TRANSIENT as exc:
        raw.invalidate()
        raise TransientError(f"database unavailable: {type(exc).__name__}") from exc
    except BaseException:
        raw.rollback()
        raise
    finally:
        if on_connection is not None:
            on_connection(None)
        raw.close()
    result.dead_lettered = len(result.dead_letters)
    result.conflicts = sum(1 for d in result.dead_letters if d.fingerprint is not None)
    result.seconds = time.perf_counter() - batch.started
    metrics.record_write(**result.counts(), seconds=result.seconds)
    log_dead_letters(result.dead_letters)
    return result


def write_batch(engine: Engine, payloads: Sequence[Any], pricer: Pricer) -> WriteResult:
    """Validate, price and store `payloads` in one transaction (both halves at once)."""
    return store_batch(engine, prepare_batch(payloads, pricer))


def _stage(cur: Any, rows: Sequence[Row], copy: str = _COPY) -> None:
    text = "".join(r.line for r in rows)
    # One read of the whole text: psycopg2 reads the file in `size` chunks (8 KiB by default)
    # and takes the GIL back for each, which the consumer thread holds while it prepares.
    cur.copy_expert(copy, io.StringIO(text), size=len(text) + 1)


def _copy_direct(cur: Any, rows: Sequence[Row], result: WriteResult) -> None:
    """Copy `rows` straight into the table; raises UniqueViolation if any id is stored."""
    _stage(cur, rows, _COPY_DIRECT)
    result.inserted += len(rows)
    result.unpriced += sum(1 for r in rows if r.cost is None)


def _attempt(cur: Any, rows: Sequence[Row], result: WriteResult, *, last: bool = False) -> None:
    """Stage `rows` and move them; conflicting duplicates become dead letters. The staging
    table is emptied after, unless this is the transaction's `last` use of it (ON COMMIT
    DELETE ROWS empties it then, and a TRUNCATE of it costs a new file and catalog rows)."""
    _stage(cur, rows)
    cur.execute(
        f"WITH moved AS ({_MOVE} RETURNING cost_usd IS NULL AS unpriced)"
        " SELECT count(*), count(*) FILTER (WHERE unpriced) FROM moved"
    )
    inserted, unpriced = cur.fetchone()
    repeated = len(rows) - int(inserted)
    if repeated:
        # Only when some ids were already stored: a batch of new events pays nothing here.
        cur.execute(_CONFLICTS)
        by_id = {r.event.id: r for r in rows}
        for event_id, differs in cur.fetchall():
            result.dead_letters.append(conflict(by_id[uuid.UUID(str(event_id))], differs))
            repeated -= 1
    if not last:
        cur.execute("TRUNCATE ai_usage_staging")
    result.inserted += int(inserted)
    result.unpriced += int(unpriced)
    result.duplicates += repeated


def _insert(cur: Any, rows: Sequence[Row], result: WriteResult) -> None:
    """Insert `rows`; rows with missing parents are found in one query and dead-lettered, then
    anything else the database refuses is isolated by bisection.

    A batch of new valid rows costs three round trips (this prologue, the COPY, the commit):
    profiled, the writer thread waits for the GIL after each one while the consumer thread
    prepares the next batch, so a statement saved is worth more than its own time."""
    # No RELEASE on success: the commit ends the savepoint.
    cur.execute(_PROLOGUE)
    (closed,) = cur.fetchone()
    rows = refuse_closed(closed, rows, result)
    if not rows:
        return
    try:
        try:
            _copy_direct(cur, rows, result)
        except psycopg2.errors.UniqueViolation:
            # Some ids are stored already (a redelivery, a retried write, an event sent twice):
            # the staged move skips them and tells duplicates from conflicting ones.
            cur.execute(_ROLLBACK)
            _attempt(cur, rows, result, last=True)
    except psycopg2.errors.ForeignKeyViolation:
        cur.execute(_ROLLBACK)
        orphans = _orphans(cur, rows)
        for row in rows:
            column = orphans.get(row.event.id)
            if column:
                result.dead_letters.append(
                    DeadLetter(
                        row.payload,
                        f"{column}: {getattr(row.event, column)} is not present in table"
                        f' "{_PARENTS[column]}"',
                        column,
                        row.event.id,
                    )
                )
        _isolate(cur, [r for r in rows if r.event.id not in orphans], result)
        return
    except _ROW_ERRORS as exc:
        cur.execute(_ROLLBACK)
        if no_partition(exc):
            # The partitioned layout, a month without a partition: each month's rows are tried
            # apart, so that a whole month refused is dead-lettered in one attempt (_isolate),
            # not bisected row by row.
            for group in by_month(rows):
                _isolate(cur, group, result)
            return
        _isolate(cur, rows, result)


def _orphans(cur: Any, rows: Sequence[Row]) -> dict[uuid.UUID, str]:
    """The staged rows whose tenant, user, assessment or lead does not exist."""
    _stage(cur, rows)
    cur.execute(_ORPHANS)
    found = {uuid.UUID(str(event_id)): column for event_id, column in cur.fetchall() if column}
    cur.execute("TRUNCATE ai_usage_staging")
    return found


def _isolate(cur: Any, rows: Sequence[Row], result: WriteResult) -> None:
    """Insert `rows`, bisecting under savepoints around the rows the database refuses."""
    if not rows:
        return
    cur.execute("SAVEPOINT part")
    try:
        _attempt(cur, rows, result)
    except _ROW_ERRORS as exc:
        # Only errors about the rows themselves are isolated. Anything else (a missing table,
        # no permission, the server going away) fails the whole batch, which is kept and retried.
        cur.execute("ROLLBACK TO SAVEPOINT part")
        if len(rows) == 1 or (no_partition(exc) and len(by_month(rows)) == 1):
            # One row; or rows of one month, which has no partition: none of them can land
            # (partitions are monthly; should one made by hand cover part of a month, its rows
            # land when the dead letters are replayed, one by one).
            for row in rows:
                error, column = describe_db_error(exc, row)
                result.dead_letters.append(DeadLetter(row.payload, error, column, row.event.id))
            return
        mid = len(rows) // 2
        _isolate(cur, rows[:mid], result)
        _isolate(cur, rows[mid:], result)
        return
    cur.execute("RELEASE SAVEPOINT part")
