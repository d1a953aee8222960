"""The batch writer: validate, price and store a batch of usage events in one transaction.

Every event of a batch ends in exactly one of: inserted, duplicate (its id is already stored),
dead-lettered (invalid, or refused by the database). Rows the database refuses are isolated by
bisecting the batch under savepoints, so one bad row never fails its neighbours. A database
outage raises TransientError and nothing is written; the caller retries the whole batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
from sqlalchemy import Engine

from worker import metrics
from worker.client.errors import InvalidEvent, TransientError
from worker.client.events import UsageEvent, parse_event
from worker.ledger.pricing import Pricer

log = logging.getLogger(__name__)

#: Dead-letter payloads above this size are stored truncated (the error says so).
MAX_DEAD_LETTER_PAYLOAD = 1024 * 1024

_COLUMNS = (
    "id",
    "tenant_id",
    "user_id",
    "operation",
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "assessment_id",
    "lead_id",
    "duration_ms",
    "success",
    "created_at",
)
_STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ai_usage_staging ("
    "id uuid, tenant_id uuid, user_id uuid, operation text, model text, input_tokens integer,"
    " output_tokens integer, total_tokens integer, cost_usd double precision,"
    " assessment_id uuid, lead_id uuid, duration_ms integer, success text,"
    " created_at timestamptz) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY ai_usage_staging ({', '.join(_COLUMNS)}) FROM STDIN"
_MOVE = (
    f"INSERT INTO ai_usage_logs ({', '.join(_COLUMNS)})"
    f" SELECT {', '.join(_COLUMNS)} FROM ai_usage_staging"
    " ON CONFLICT (id) DO NOTHING"
)
_DEAD_LETTER = (
    "INSERT INTO ai_usage_dead_letters (dedupe_key, event_id, payload, error, field)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (dedupe_key) DO UPDATE SET error = EXCLUDED.error, field = EXCLUDED.field,"
    " attempts = ai_usage_dead_letters.attempts + 1, last_attempt_at = now()"
)
# Which column a foreign-key violation is about, by constraint name.
_FK_FIELDS = {
    "fk_ai_usage_logs_tenant_id_tenants": "tenant_id",
    "fk_ai_usage_logs_user_id_users": "user_id",
    "fk_ai_usage_logs_assessment_id_assessments": "assessment_id",
    "fk_ai_usage_logs_lead_id_leads": "lead_id",
}
_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)
_ROW_ERRORS = (psycopg2.IntegrityError, psycopg2.DataError)


@dataclass
class DeadLetter:
    """An event that could not be stored, and why."""

    payload: Any
    error: str
    field: str | None = None
    event_id: uuid.UUID | None = None


@dataclass
class MalformedMessage:
    """Stands in a batch for a message whose shape is wrong (not for one bad event): it is
    dead-lettered with `error`, its arguments kept as the payload."""

    error: str
    payload: Any


@dataclass
class WriteResult:
    """What became of each event of a batch."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    unpriced: int = 0
    seconds: float = 0.0
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class _Row:
    event: UsageEvent
    cost: float | None
    payload: Any
    line: str = ""  # the row as a line of COPY text


@dataclass
class PreparedBatch:
    """A batch validated, priced and rendered to COPY text, ready for `store_batch`."""

    rows: list[_Row]
    result: WriteResult
    started: float


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(value: str) -> str:
    # Most labels need no escaping: one regex scan instead of four replaces.
    if _COPY_SPECIAL.search(value) is None:
        return value
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


_NULL = "\\N"


def _uid(v: uuid.UUID | None) -> str:
    # 32 hex digits are valid uuid input, and cheaper to make than the dashed form.
    return _NULL if v is None else v.hex


def _copy_line(row: _Row) -> str:
    e = row.event
    # Profiled: this runs once per event on the consumer thread, so it is one f-string.
    return (
        f"{e.id.hex}\t{e.tenant_id.hex}\t{_uid(e.user_id)}\t{_escape(e.operation)}\t"
        f"{_escape(e.model)}\t{e.input_tokens}\t{e.output_tokens}\t{e.total_tokens}\t"
        f"{_NULL if row.cost is None else repr(row.cost)}\t{_uid(e.assessment_id)}\t"
        f"{_uid(e.lead_id)}\t{_NULL if e.duration_ms is None else e.duration_ms}\t"
        f"{e.success}\t{e.created_at.isoformat()}\n"
    )


def _event_id(payload: Any) -> uuid.UUID | None:
    """The event's id if it is one the contract accepts (a UUID string or object), else None:
    a dead letter is keyed by it, so that a redelivery updates its entry. Anything else, an
    integer of 32 digits say (which `uuid.UUID(str(...))` would take), is not an id, and
    distinct events carrying it must not share one dead letter."""
    value = payload.get("id") if isinstance(payload, dict) else None
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


def encode_payload(payload: Any) -> str:
    """JSON with ASCII escapes: NUL bytes and lone surrogates survive into a text column."""
    return json.dumps(payload, ensure_ascii=True, default=str, sort_keys=True)


def _prepare_rows(payloads: Iterable[Any], pricer: Pricer, result: WriteResult) -> list[_Row]:
    """Validate and price; invalid events become dead letters, in-batch repeats duplicates."""
    rows: list[_Row] = []
    seen: set[uuid.UUID] = set()
    unknown_models: set[str] = set()
    now = dt.datetime.now(dt.UTC)
    for payload in payloads:
        result.received += 1
        if isinstance(payload, MalformedMessage):
            result.dead_letters.append(DeadLetter(payload.payload, payload.error, "message"))
            continue
        try:
            event = parse_event(payload, now)
        except InvalidEvent as exc:
            result.dead_letters.append(DeadLetter(payload, str(exc), exc.field, _event_id(payload)))
            continue
        if event.id in seen:
            result.duplicates += 1
            continue
        seen.add(event.id)
        cost = event.cost_usd
        if cost is None:
            cost = pricer.price(
                event.model,
                event.provider,
                event.input_tokens,
                event.output_tokens,
                event.created_at,
            )
            if cost is None:
                unknown_models.add(event.model)
        row = _Row(event, None if cost is None else float(cost), payload)
        row.line = _copy_line(row)
        rows.append(row)
    for model in sorted(unknown_models):
        log.warning("no price known for model %r: its rows are stored with cost_usd NULL", model)
    return rows


def prepare_batch(payloads: Sequence[Any], pricer: Pricer) -> PreparedBatch:
    """The CPU half of a write: validate, price and render. Touches no database."""
    started = time.perf_counter()
    result = WriteResult()
    rows = _prepare_rows(payloads, pricer, result)
    return PreparedBatch(rows, result, started)


def store_batch(engine: Engine, batch: PreparedBatch) -> WriteResult:
    """The database half: store the rows and dead letters in one transaction. Idempotent by
    event id. Raises TransientError if the database is unavailable; then nothing was written."""
    result = batch.result
    try:
        raw = engine.raw_connection()
    except Exception as exc:
        raise TransientError(f"database unavailable: {type(exc).__name__}") from exc
    try:
        with raw.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute(_STAGING_DDL)
            if batch.rows:
                _insert_isolating(cur, batch.rows, result)
            _store_dead_letters(cur, result.dead_letters)
        raw.commit()
    except _TRANSIENT as exc:
        raw.invalidate()
        raise TransientError(f"database unavailable: {type(exc).__name__}") from exc
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
    result.dead_lettered = len(result.dead_letters)
    result.seconds = time.perf_counter() - batch.started
    metrics.record_write(result)
    return result


def write_batch(engine: Engine, payloads: Sequence[Any], pricer: Pricer) -> WriteResult:
    """Validate, price and store `payloads` in one transaction (both halves at once)."""
    return store_batch(engine, prepare_batch(payloads, pricer))


def _attempt(cur: Any, rows: Sequence[_Row]) -> tuple[int, int]:
    """COPY `rows` to staging and move them; returns (inserted, of which unpriced)."""
    cur.copy_expert(_COPY, io.StringIO("".join(r.line for r in rows)))
    cur.execute(
        f"WITH moved AS ({_MOVE} RETURNING cost_usd IS NULL AS unpriced)"
        " SELECT count(*), count(*) FILTER (WHERE unpriced) FROM moved"
    )
    inserted, unpriced = cur.fetchone()
    cur.execute("TRUNCATE ai_usage_staging")
    return int(inserted), int(unpriced)


def _insert_isolating(cur: Any, rows: Sequence[_Row], result: WriteResult) -> None:
    cur.execute("SAVEPOINT batch")
    try:
        count, unpriced = _attempt(cur, rows)
    except _ROW_ERRORS as exc:
        # Only errors about the rows themselves are isolated. Anything else (a missing table,
        # no permission, the server going away) fails the whole batch, which is kept and retried.
        cur.execute("ROLLBACK TO SAVEPOINT batch")
        if len(rows) == 1:
            row = rows[0]
            error, column = _describe_db_error(exc)
            log.warning("event %s refused by the database: %s", row.event.id, error)
            result.dead_letters.append(DeadLetter(row.payload, error, column, row.event.id))
            return
        mid = len(rows) // 2
        _insert_isolating(cur, rows[:mid], result)
        _insert_isolating(cur, rows[mid:], result)
        return
    cur.execute("RELEASE SAVEPOINT batch")
    result.inserted += count
    result.duplicates += len(rows) - count
    result.unpriced += unpriced


def _describe_db_error(exc: psycopg2.Error) -> tuple[str, str | None]:
    diag = exc.diag
    column = _FK_FIELDS.get(diag.constraint_name or "") or diag.column_name
    message = (diag.message_primary or str(exc)).strip()
    if diag.message_detail:
        message = f"{message} ({diag.message_detail.strip()})"
    if column:
        message = f"{column}: {message}"
    return message, column


def _db_text(value: str) -> str:
    """`value` as a PostgreSQL text column can hold it: NUL bytes and lone surrogates (which a
    reason may quote from the input) escaped."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _store_dead_letters(cur: Any, letters: Sequence[DeadLetter]) -> None:
    for letter in letters:
        payload = encode_payload(letter.payload)
        error = _db_text(letter.error)
        field = _db_text(letter.field)[:100] if letter.field else None
        if len(payload) > MAX_DEAD_LETTER_PAYLOAD:
            error = f"{error} [payload truncated from {len(payload)} characters]"
            payload = payload[:MAX_DEAD_LETTER_PAYLOAD]
        key = (
            f"event:{letter.event_id}"
            if letter.event_id is not None
            else "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
        )
        cur.execute(
            _DEAD_LETTER,
            (key, str(letter.event_id) if letter.event_id else None, payload, error, field),
        )
        log.warning("dead-lettered event %s: %s", letter.event_id or "(no id)", error)
