"""The batch writer on real PostgreSQL: idempotent, priced, poison rows isolated."""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from typing import Any

import psycopg2.errors
import pytest
from sqlalchemy import Engine, text

from tests.conftest import count_rows, make_tenant
from tests.factories import event as factory
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer

event = functools.partial(factory, created_at="2025-06-01T12:00:00Z")


def test_batch_lands_once_and_repeats_are_duplicates(db: Engine, tenant: uuid.UUID) -> None:
    events = [event(tenant) for _ in range(500)]
    r1 = write_batch(db, events + events[:10], Pricer())
    assert (r1.received, r1.inserted, r1.duplicates, r1.dead_lettered) == (510, 500, 10, 0)
    r2 = write_batch(db, events, Pricer())
    assert (r2.inserted, r2.duplicates) == (0, 500)
    assert count_rows(db) == 500


def test_costs_are_priced_at_event_time_and_given_costs_kept(db: Engine, tenant: uuid.UUID) -> None:
    before = event(tenant, model="o3", created_at="2025-06-09T23:59:00Z")
    after = event(tenant, model="o3", created_at="2025-06-10T00:01:00Z")
    given = event(tenant, cost_usd=0.123456789)
    unknown = event(tenant, model="in-house-llm-v1")
    r = write_batch(db, [before, after, given, unknown], Pricer())
    assert r.inserted == 4 and r.unpriced == 1
    with db.connect() as conn:
        costs: dict[str, Any] = dict(
            conn.execute(text("SELECT id::text, cost_usd FROM ai_usage_logs")).all()
        )
    assert costs[before["id"]] == 0.09 and costs[after["id"]] == 0.018
    assert costs[given["id"]] == 0.123456789
    assert costs[unknown["id"]] is None


def test_poison_rows_are_isolated_and_neighbours_land(db: Engine, tenant: uuid.UUID) -> None:
    other = make_tenant(db, "other")
    good = [event(tenant) for _ in range(300)] + [event(other)]
    missing_tenant = event(uuid.uuid4())
    missing_user = event(tenant, user_id=str(uuid.uuid4()))
    invalid = event(tenant, input_tokens=-5)
    nul = event(tenant, operation="bad\x00op")
    batch = (
        good[:100] + [missing_tenant] + good[100:200] + [invalid, nul, missing_user] + good[200:]
    )
    r = write_batch(db, batch, Pricer())
    assert r.inserted == 301 and r.dead_lettered == 4 and r.duplicates == 0
    assert count_rows(db) == 301
    with db.connect() as conn:
        dead = {
            row[0]: (row[1], row[2])
            for row in conn.execute(
                text("SELECT event_id::text, field, error FROM ai_usage_dead_letters")
            )
        }
    assert dead[missing_tenant["id"]][0] == "tenant_id"
    assert 'not present in table "tenants"' in dead[missing_tenant["id"]][1]
    assert dead[missing_user["id"]][0] == "user_id"
    assert dead[invalid["id"]][0] == "input_tokens"
    assert dead[nul["id"]] == ("operation", "operation: must not contain NUL characters")


def test_dead_letters_are_not_duplicated_by_redelivery(db: Engine, tenant: uuid.UUID) -> None:
    bad = event(uuid.uuid4())
    no_id = {"tenant_id": str(tenant), "operation": "x"}
    for _ in range(3):
        write_batch(db, [bad, no_id], Pricer())
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT attempts, payload FROM ai_usage_dead_letters ORDER BY event_id NULLS LAST")
        ).all()
    assert [r[0] for r in rows] == [3, 3]
    assert json.loads(rows[0][1]) == bad and json.loads(rows[1][1]) == no_id


def test_distinct_events_with_the_same_invalid_id_get_their_own_dead_letters(
    db: Engine, tenant: uuid.UUID
) -> None:
    # Found by the fuzz suite: a 32-digit integer id reads as a UUID through str(), so two
    # different events carrying it shared one dead letter (attempts 2) and one was not counted.
    same = 12345678901234567890123456789012
    bad = [event(tenant, id=same, operation=f"op-{i}") for i in range(2)]
    assert write_batch(db, bad, Pricer()).dead_lettered == 2
    assert count_rows(db, "ai_usage_dead_letters") == 2
    with db.connect() as conn:
        assert conn.execute(text("SELECT max(attempts) FROM ai_usage_dead_letters")).scalar() == 1


def test_sql_looking_and_odd_strings_are_stored_verbatim(db: Engine, tenant: uuid.UUID) -> None:
    odd = [
        "'); DROP TABLE ai_usage_logs; --",
        "back\\slash\ttab\nnewline\rcr",
        "\\N",
        "日本語 🚀",
        "quote \" and ' both",
    ]
    events = [event(tenant, operation=s, model=s[::-1]) for s in odd]
    assert write_batch(db, events, Pricer()).inserted == len(odd)
    with db.connect() as conn:
        stored: dict[str, str] = dict(
            conn.execute(text("SELECT operation, model FROM ai_usage_logs")).all()
        )
    assert stored == {s: s[::-1] for s in odd}


def test_created_at_is_stored_in_utc(db: Engine, tenant: uuid.UUID) -> None:
    e = event(tenant, created_at="2025-01-31T23:30:00-05:00")
    write_batch(db, [e], Pricer())
    with db.connect() as conn:
        conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        stored = conn.execute(text("SELECT created_at FROM ai_usage_logs")).scalar_one()
        utc_text = conn.execute(
            text(
                "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM ai_usage_logs"
            )
        ).scalar_one()
    assert stored == dt.datetime(2025, 2, 1, 4, 30, tzinfo=dt.UTC)
    assert utc_text == "2025-02-01 04:30"


def test_a_schema_problem_fails_the_batch_instead_of_dead_lettering_it(
    db: Engine, tenant: uuid.UUID
) -> None:
    events = [event(tenant) for _ in range(5)]
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE ai_usage_logs RENAME TO ai_usage_logs_moved"))
    try:
        with pytest.raises(psycopg2.errors.UndefinedTable):
            write_batch(db, events, Pricer())
        assert count_rows(db, "ai_usage_dead_letters") == 0
    finally:
        with db.begin() as conn:
            conn.execute(text("ALTER TABLE ai_usage_logs_moved RENAME TO ai_usage_logs"))
    assert write_batch(db, events, Pricer()).inserted == 5


def test_a_batch_partly_stored_counts_only_its_new_rows(db: Engine, tenant: uuid.UUID) -> None:
    """A batch of new events is copied straight into the table; one holding stored ids (a
    redelivery) fails that copy and takes the staged way: only its new rows are inserted and
    counted (unpriced included), stored ones are duplicates or conflicts, nothing twice."""
    unknown = [event(tenant, model="in-house-llm-v1") for _ in range(6)]
    priced = [event(tenant) for _ in range(6)]
    first = write_batch(db, unknown[:3] + priced[:3], Pricer())
    assert (first.inserted, first.unpriced, first.duplicates) == (6, 3, 0)
    changed = {**priced[0], "output_tokens": priced[0]["output_tokens"] + 1}
    again = write_batch(db, unknown + [changed] + priced[1:], Pricer())
    assert (again.inserted, again.unpriced, again.duplicates) == (6, 3, 5)
    assert again.conflicts == 1 and again.dead_lettered == 1
    assert count_rows(db) == 12
    assert count_rows(db, where="cost_usd IS NULL") == 6
