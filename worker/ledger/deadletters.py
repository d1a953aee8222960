"""Listing and replaying dead letters."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, text

from worker.ledger.deadstore import (
    MAX_PAYLOAD,
    TRUNCATED,
    encode_payload,
    store_dead_letters,
)
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer

#: Storing lives in `deadstore` (the writer's side); its names stay importable from here.
__all__ = [
    "MAX_PAYLOAD",
    "TRUNCATED",
    "DeadLetterRow",
    "ReplayResult",
    "encode_payload",
    "list_dead_letters",
    "missing_ids",
    "replay",
    "store_dead_letters",
]


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
