"""Retention in the partitioned layout: a closed month's partition is detached concurrently and
dropped, its exact row count recorded, no rollup delta left, writers of other months never
waiting; a detach an interrupted run left pending is finalized, a table it left detached is
dropped."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg2
import pytest
from sqlalchemy import Engine, create_engine, text

from tests.conftest import wait_for
from tests.partitions.conftest import (
    THIS_MONTH,
    at,
    ev,
    months_held,
    old_month,
    this_month,
)
from tests.test_rollup_deltas import monthly_calls
from worker.ledger.ingest import write_batch
from worker.ledger.layout import partition_name
from worker.ledger.partitions import RETENTION_MARK, create_partition, list_partitions
from worker.ledger.pricing import Pricer
from worker.ledger.retention import prune
from worker.ledger.rollups import run_rollup

DETACHING = (
    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE ai_usage_logs DETACH%'"
    " AND wait_event_type = 'Lock' AND datname = current_database()"
)


def fill(engine: Engine, tenant: uuid.UUID, n_old: int, months_back: int) -> Any:
    """`n_old` rows in a month `months_back` before this one (its partition made) and three in
    this month, rolled up."""
    old = old_month(months_back)
    create_partition(engine, old)
    events = [ev(tenant, at(old, 1 + i % 27)) for i in range(n_old)]
    write_batch(engine, events + [ev(tenant, this_month(k)) for k in range(3)], Pricer())
    run_rollup(engine, wait=True)
    return old


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def blocker(engine: Engine) -> Any:
    """A transaction holding a lock on ai_usage_logs (a long report, a slow writer): the second
    step of DETACH ... CONCURRENTLY waits for it."""
    raw = engine.raw_connection()
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("SELECT count(*) FROM ai_usage_logs")
    return raw


def test_prune_drops_the_partition_and_writers_do_not_wait(pdb: Engine, ptenant: uuid.UUID) -> None:
    old = fill(pdb, ptenant, 7, 14)
    held = blocker(pdb)
    done: dict[str, Any] = {}
    pruning = threading.Thread(target=lambda: done.update(result=prune(pdb, 13)), daemon=True)
    pruning.start()
    try:
        wait_for(lambda: scalar(pdb, DETACHING), 60, what="the detach waiting")
        # A writer of this month meanwhile, with a lock timeout: it would fail, not hang, if
        # the detach made it wait.
        writer = create_engine(pdb.url, connect_args={"options": "-c lock_timeout=20000"})
        assert write_batch(writer, [ev(ptenant, this_month(5))], Pricer()).inserted == 1
        writer.dispose()
    finally:
        held.rollback()
        held.close()
        pruning.join(120)
    result = done["result"]
    assert dict(result.rows_deleted) == {old: 7} and result.newly_closed == [old]
    assert partition_name(old) not in months_held(pdb)
    assert scalar(pdb, f"SELECT to_regclass('{partition_name(old)}')") is None
    assert (
        scalar(pdb, "SELECT rows_pruned FROM ai_usage_closed_months WHERE month = :m", m=old) == 7
    )
    assert scalar(pdb, "SELECT count(*) FROM ai_usage_logs") == 4  # this month's, untouched
    # The DROP fired no trigger: the deltas left are the writer's one row, nothing of the 7.
    run_rollup(pdb, wait=True)
    assert monthly_calls(pdb, ptenant, old) == 7 and monthly_calls(pdb, ptenant, THIS_MONTH) == 4
    again = prune(pdb, 13)
    assert sum(again.rows_deleted.values()) == 0 and again.newly_closed == []


def test_a_detach_left_pending_is_finalized_by_the_next_prune(
    pdb: Engine, ptenant: uuid.UUID
) -> None:
    old = fill(pdb, ptenant, 5, 15)
    name = partition_name(old)
    held = blocker(pdb)
    errors: list[BaseException] = []

    def detach() -> None:
        raw = psycopg2.connect(
            pdb.url.render_as_string(hide_password=False).replace("+psycopg2", "")
        )
        raw.autocommit = True  # DETACH ... CONCURRENTLY runs outside a transaction block
        try:
            with raw.cursor() as cur:
                cur.execute(f"ALTER TABLE ai_usage_logs DETACH PARTITION {name} CONCURRENTLY")
        except psycopg2.errors.QueryCanceled as exc:
            errors.append(exc)
        finally:
            raw.close()

    interrupted = threading.Thread(target=detach, daemon=True)
    interrupted.start()
    pid = wait_for(lambda: scalar(pdb, DETACHING), 60, what="the detach waiting")
    assert scalar(pdb, "SELECT pg_cancel_backend(:p)", p=pid)
    interrupted.join(60)
    held.rollback()
    held.close()
    assert len(errors) == 1  # cancelled in its second step: the partition is left pending
    assert [p.detach_pending for p in list_partitions(pdb) if p.name == name] == [True]

    result = prune(pdb, 13)
    assert dict(result.rows_deleted) == {old: 5}
    assert scalar(pdb, f"SELECT to_regclass('{name}')") is None
    assert (
        scalar(pdb, "SELECT rows_pruned FROM ai_usage_closed_months WHERE month = :m", m=old) == 5
    )


def test_a_table_left_detached_is_counted_and_dropped(pdb: Engine, ptenant: uuid.UUID) -> None:
    old = fill(pdb, ptenant, 4, 16)
    name = partition_name(old)
    # A run that closed the month, marked and detached its partition, then stopped before
    # its DROP.
    with pdb.begin() as conn:
        conn.execute(text("INSERT INTO ai_usage_closed_months (month) VALUES (:m)"), {"m": old})
    with pdb.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"COMMENT ON TABLE {name} IS '{RETENTION_MARK}'"))
        conn.execute(text(f"ALTER TABLE ai_usage_logs DETACH PARTITION {name} CONCURRENTLY"))
    assert name not in months_held(pdb)
    result = prune(pdb, 13)
    assert dict(result.rows_deleted) == {old: 4}
    assert scalar(pdb, f"SELECT to_regclass('{name}')") is None


def test_a_partition_detached_by_hand_is_left_alone(pdb: Engine, ptenant: uuid.UUID) -> None:
    old = fill(pdb, ptenant, 2, 17)
    name = partition_name(old)
    # Detached by the operator (an archive, say): not retention's to drop. Its month is
    # closed all the same (it has rollups), and its rows not counted as pruned.
    with pdb.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ALTER TABLE ai_usage_logs DETACH PARTITION {name}"))
    result = prune(pdb, 13)
    assert sum(result.rows_deleted.values()) == 0
    assert scalar(pdb, f"SELECT count(*) FROM {name}") == 2


@pytest.mark.parametrize("months_back", [20])
def test_an_empty_old_partition_goes_without_closing_its_month(
    pdb: Engine, months_back: int
) -> None:
    old = old_month(months_back)
    create_partition(pdb, old)
    result = prune(pdb, 13)
    assert result.months == [] and partition_name(old) not in months_held(pdb)
    assert scalar(pdb, "SELECT count(*) FROM ai_usage_closed_months") == 0
