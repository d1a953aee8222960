"""Listing and replaying dead letters."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Engine, text

from worker.ledger.pricing import Pricer
from worker.ledger.rows import DeadLetter

#: A dead letter keeps its whole payload up to this many characters (of ASCII-escaped JSON),
#: so that it can be replayed; past it, a prefix is kept and the reason says it cannot be.
MAX_PAYLOAD = 16 * 1024 * 1024
#: What the reason of a dead letter stored cut short ends with.
TRUNCATED = "cannot be replayed: payload cut to"

_INSERT = (
    "INSERT INTO ai_usage_dead_letters (dedupe_key, event_id, payload, error, field) VALUES %s"
    " ON CONFLICT (dedupe_key) DO UPDATE SET error = EXCLUDED.error, field = EXCLUDED.field,"
    " payload = EXCLUDED.payload, attempts = ai_usage_dead_letters.attempts + 1,"
    " last_attempt_at = now()"
)


def encode_payload(payload: Any) -> str:
    """JSON with ASCII escapes: NUL bytes and lone surrogates survive into a text column. A
    payload still in its raw JSON (msgspec.Raw) is decoded first."""
    if isinstance(payload, msgspec.Raw):
        payload = msgspec.json.decode(payload)
    return json.dumps(payload, ensure_ascii=True, default=str, sort_keys=True)


def _db_text(value: str) -> str:
    """`value` as a PostgreSQL text column can hold it: NUL bytes and lone surrogates (which a
    reason may quote from the input) escaped."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _key(letter: DeadLetter, payload: str) -> str:
    if letter.fingerprint is not None and letter.event_id is not None:
        # Each distinct content sent under one id is kept; the same one sent again is not.
        return f"conflict:{letter.event_id}:{letter.fingerprint.hex()}"
    if letter.event_id is not None:
        return f"event:{letter.event_id}"
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def store_dead_letters(cur: Any, letters: Sequence[DeadLetter]) -> None:
    """Insert (or update: attempts + 1) `letters` in one statement, on a psycopg2 cursor of
    the batch's transaction. A redelivered event updates its entry instead of adding one."""
    if not letters:
        return
    from psycopg2.extras import execute_values

    values: dict[str, tuple[str, str | None, str, str, str | None]] = {}
    for letter in letters:
        payload = encode_payload(letter.payload)
        error = _db_text(letter.error)
        field = _db_text(letter.field)[:100] if letter.field else None
        key = _key(letter, payload)
        if len(payload) > MAX_PAYLOAD:
            error = f"{error} [{TRUNCATED} {MAX_PAYLOAD} of {len(payload)} characters]"
            payload = payload[:MAX_PAYLOAD]
        event = str(letter.event_id) if letter.event_id else None
        # One row per key in a statement: ON CONFLICT cannot touch a row twice.
        values[key] = (key, event, payload, error, field)
    execute_values(cur, _INSERT, list(values.values()), page_size=500)


@dataclass
class DeadLetterRow:
    id: int
    event_id: str | None
    payload: str
    error: str
    field: str | None
    attempts: int
    created_at: dt.datetime
    last_attempt_at: dt.datetime


def list_dead_letters(engine: Engine, limit: int = 100) -> list[DeadLetterRow]:
    """Oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, event_id::text, payload, error, field, attempts, created_at,"
                " last_attempt_at FROM ai_usage_dead_letters ORDER BY id LIMIT :n"
            ),
            {"n": limit},
        )
        return [DeadLetterRow(*r) for r in rows]


@dataclass
class ReplayResult:
    landed: int = 0
    already_stored: int = 0
    still_failing: int = 0


def replay(engine: Engine, pricer: Pricer, ids: Sequence[int] | None = None) -> ReplayResult:
    """Retry dead letters (all, or `ids`). An entry that lands (or whose event is already stored)
    is removed; one that fails again stays, with its new reason and attempts + 1."""
    sql = "SELECT id, payload FROM ai_usage_dead_letters"
    params: dict[str, object] = {}
    if ids is not None:
        sql += " WHERE id = ANY(:ids)"
        params["ids"] = list(ids)
    with engine.connect() as conn:
        entries = conn.execute(text(sql + " ORDER BY id"), params).all()
    result = ReplayResult()
    for entry_id, raw in entries:
        try:
            payload = json.loads(raw)
        except ValueError:
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE ai_usage_dead_letters SET attempts = attempts + 1,"
                        " last_attempt_at = now(), error = :e WHERE id = :id"
                    ),
                    {"id": entry_id, "e": f"payload: {TRUNCATED} a prefix, or unreadable"},
                )
            result.still_failing += 1
            continue
        from worker.ledger.ingest import write_batch  # the writer imports this module

        written = write_batch(engine, [payload], pricer)
        if written.inserted or written.duplicates:
            with engine.begin() as conn:
                conn.execute(
                    text("DELETE FROM ai_usage_dead_letters WHERE id = :id"), {"id": entry_id}
                )
            if written.inserted:
                result.landed += 1
            else:
                result.already_stored += 1
        else:
            result.still_failing += 1
    return result


def missing_ids(engine: Engine, ids: Sequence[int]) -> list[int]:
    """Those of `ids` that name no dead letter."""
    with engine.connect() as conn:
        found = {
            int(r)
            for r in conn.execute(
                text("SELECT id FROM ai_usage_dead_letters WHERE id = ANY(:ids)"),
                {"ids": list(ids)},
            ).scalars()
        }
    return sorted(set(ids) - found)
