"""Storing dead letters: the write side, used in the batch's own transaction by the writer
(`ingest`). Listing and replaying them (`deadletters`) sits above the writer, so this piece lives
apart: the writer imports it, and nothing here imports the writer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import msgspec

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
