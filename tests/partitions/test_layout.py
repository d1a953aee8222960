"""The partitioned layout of ai_usage_logs (issue 27): the migration both ways, partitions made
ahead, and ingest's exactly-once by id in it: a redelivery a duplicate, the same id with another
created_at in the same month a conflicting duplicate, the same id in another month a second row
(the stated behaviour), a month without a partition a dead letter that a replay lands later."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.util import CommandError
from sqlalchemy import Engine, text

from alembic import command
from tests.conftest import PARTITIONED, alembic_config, make_tenant, new_database
from tests.partitions.conftest import (
    THIS_MONTH,
    at,
    ev,
    layout_setting,
    months_held,
    this_month,
)
from tests.test_migrations import schema_snapshot
from worker.cli import main as cli
from worker.client.errors import ConfigError
from worker.ledger.deadletters import list_dead_letters, replay
from worker.ledger.ingest import write_batch
from worker.ledger.layout import log_layout, partition_name
from worker.ledger.months import add_months
from worker.ledger.overrides import load_overrides
from worker.ledger.partitions import PartitionError, create_partition, ensure_partitions
from worker.ledger.pricing import Pricer
from worker.ledger.reprice import reprice as reprice_rows
from worker.ledger.rollups import run_rollup
from worker.settings import load_settings, normalise_database_url

BEFORE = "d0e1f2a3b4c5"  # the revision before the layout's
LAYOUT = "c9d0e1f2a3b4"  # the layout's
SPEC_INDEXES = {
    "pk_ai_usage_logs",
    "idx_ai_usage_logs_tenant_id",
    "idx_ai_usage_logs_operation",
    "idx_ai_usage_logs_created_at",
    "idx_ai_usage_logs_tenant_created",
}
plain_only = pytest.mark.skipif(PARTITIONED, reason="the run's own database is partitioned")


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM ai_usage_logs ORDER BY id"))]


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


CATALOG = {
    "pk": "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
    " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'ai_usage_logs'::regclass"
    " AND i.indisprimary",
    "indexes": "SELECT indexname FROM pg_indexes WHERE tablename = 'ai_usage_logs'",
    "fks": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid = 'ai_usage_logs'::regclass AND contype = 'f'",
    "triggers": "SELECT tgname FROM pg_trigger WHERE tgrelid = 'ai_usage_logs'::regclass"
    " AND NOT tgisinternal",
}


def catalog(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The parent's primary key columns, index names, foreign keys and triggers."""
    with engine.connect() as conn:
        return {k: sorted(tuple(r) for r in conn.execute(text(q))) for k, q in CATALOG.items()}


def test_a_bad_layout_setting_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_USAGE_LOG_LAYOUT", "sharded")
    with pytest.raises(ConfigError, match="^AI_USAGE_LOG_LAYOUT: "):
        load_settings()


def test_migration_plain_to_partitioned_and_back_keeps_rows_and_names(pg_server: str) -> None:
    from sqlalchemy import create_engine

    with new_database(pg_server, "aiu_layout") as url:
        cfg = alembic_config(url)
        engine = create_engine(normalise_database_url(url))
        with layout_setting("plain"):
            command.upgrade(cfg, BEFORE)
            spec = schema_snapshot(engine)
            command.upgrade(cfg, LAYOUT)  # plain: the revision changes nothing
            assert schema_snapshot(engine) == spec and log_layout_of(engine) == "plain"
            command.downgrade(cfg, BEFORE)
        plain = catalog(engine)
        tenant = make_tenant(engine)
        far = add_months(THIS_MONTH, -20)
        write_batch(
            engine, [ev(tenant, at(m)) for m in (far, far)] + [ev(tenant, this_month(1))], Pricer()
        )
        run_rollup(engine, wait=True)
        before = rows(engine)

        with layout_setting("partitioned"):
            command.upgrade(cfg, "head")
        assert log_layout_of(engine) == "partitioned"
        moved = catalog(engine)
        assert moved["pk"] == [("created_at",), ("id",)]
        assert {i for (i,) in moved["indexes"]} == SPEC_INDEXES
        assert (moved["fks"], moved["triggers"]) == (plain["fks"], plain["triggers"])
        expected = {far, *(add_months(THIS_MONTH, n) for n in range(-1, 4))}
        assert months_held(engine) == sorted(partition_name(m) for m in expected)
        assert rows(engine) == before
        assert scalar(engine, "SELECT count(*) FROM ai_usage_rollup_deltas") == 0  # none moved
        write_batch(engine, [ev(tenant, this_month(2))], Pricer())  # the triggers fire again
        assert scalar(engine, "SELECT count(*) FROM ai_usage_rollup_deltas") == 1

        # An id in two months cannot go back under the plain key: refused, naming it.
        twice = ev(tenant, at(far))
        write_batch(engine, [twice], Pricer())
        write_batch(engine, [{**twice, "created_at": this_month(3).isoformat()}], Pricer())
        with pytest.raises(CommandError, match=twice["id"]):
            command.downgrade(cfg, BEFORE)
        assert log_layout_of(engine) == "partitioned"
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM ai_usage_logs WHERE id = :i AND created_at >= :m"),
                {"i": twice["id"], "m": at(THIS_MONTH, 1, 0)},
            )
        kept = rows(engine)
        command.downgrade(cfg, BEFORE)
        assert log_layout_of(engine) == "plain"
        assert rows(engine) == kept
        assert catalog(engine) == plain and schema_snapshot(engine) == spec
        engine.dispose()


def log_layout_of(engine: Engine) -> str:
    with engine.connect() as conn:
        return log_layout(conn)


@plain_only
def test_in_the_plain_layout_the_primary_key_is_the_only_unique_index(engine: Engine) -> None:
    # Why the writer's `ON CONFLICT DO NOTHING` (no target) means there what `ON CONFLICT (id)`
    # did: the primary key on id is the one arbiter. A unique index added to the plain table
    # would change that, and must change the writer with it.
    unique = "SELECT indexrelid::regclass::text FROM pg_index WHERE indisunique AND indrelid ="
    with engine.connect() as conn:
        found = conn.execute(text(f"{unique} 'ai_usage_logs'::regclass")).scalars().all()
    assert found == ["pk_ai_usage_logs"]


def test_each_partition_has_the_key_and_a_unique_index_on_id(pdb: Engine) -> None:
    with pdb.connect() as conn:
        found = conn.execute(
            text(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_inherits h ON h.inhrelid = c.oid"
                " WHERE h.inhparent = 'ai_usage_logs'::regclass AND i.indisunique"
            )
        ).all()
    for name in months_held(pdb):
        defs = sorted(d.split(" USING ")[1] for n, d in found if n == name)
        assert defs == ["btree (id)", "btree (id, created_at)"], name


def test_ensure_is_idempotent_and_skips_closed_months(pdb: Engine) -> None:
    made = sorted(partition_name(add_months(THIS_MONTH, n)) for n in range(-1, 4))
    assert months_held(pdb) == made
    assert ensure_partitions(pdb) == []
    later = add_months(THIS_MONTH, 5)
    with pdb.begin() as conn:
        conn.execute(text("INSERT INTO ai_usage_closed_months (month) VALUES (:m)"), {"m": later})
    assert ensure_partitions(pdb, ahead=6) == [add_months(THIS_MONTH, 4), add_months(THIS_MONTH, 6)]
    assert ensure_partitions(pdb, ahead=6) == []
    with pytest.raises(PartitionError, match="closed by retention"):
        create_partition(pdb, later)
    assert create_partition(pdb, later.replace(year=later.year + 3)) is True
    assert create_partition(pdb, later.replace(year=later.year + 3)) is False


@plain_only
def test_the_plain_layout_has_no_partitions_to_make(db: Engine) -> None:
    assert ensure_partitions(db) == []
    with pytest.raises(PartitionError, match="not partitioned"):
        create_partition(db, THIS_MONTH)
    assert log_layout_of(db) == "plain"


def test_a_redelivery_is_a_duplicate_and_same_month_other_created_at_a_conflict(
    pdb: Engine, ptenant: uuid.UUID
) -> None:
    first = ev(ptenant, this_month(3))
    assert write_batch(pdb, [first], Pricer()).inserted == 1
    again = write_batch(pdb, [first], Pricer())
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 1, 0)
    moved = {**first, "created_at": this_month(4).isoformat()}
    result = write_batch(pdb, [moved, ev(ptenant, this_month(5))], Pricer())
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 0, 1)
    (letter,) = list_dead_letters(pdb)
    assert letter.field == "id" and "differs in: created_at" in letter.error
    assert scalar(pdb, f"SELECT count(*) FROM ai_usage_logs WHERE id = '{first['id']}'") == 1


def test_the_same_id_in_another_month_is_stored_as_a_second_row(
    pdb: Engine, ptenant: uuid.UUID
) -> None:
    # The stated behaviour (docs/ledger/scale.md): no look-up across partitions on the write
    # path. The rows compared for a conflict are then those of the event's own month.
    x = ev(ptenant, at(add_months(THIS_MONTH, -1)))
    z = ev(ptenant, at(add_months(THIS_MONTH, -1)))
    write_batch(pdb, [x, z], Pricer())
    x_now = {**x, "created_at": this_month(1).isoformat()}
    assert write_batch(pdb, [x_now], Pricer()).inserted == 1
    # x_now again (a redelivery of the second row) beside z sent for this month too: a
    # duplicate and a new row, not two conflicts with the rows of the previous month.
    z_other = {**z, "created_at": this_month(2).isoformat()}
    result = write_batch(pdb, [x_now, z_other], Pricer())
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 1, 0)
    assert scalar(pdb, f"SELECT count(*) FROM ai_usage_logs WHERE id = '{x['id']}'") == 2
    assert list_dead_letters(pdb) == []


@plain_only
def test_in_the_plain_layout_the_same_id_in_another_month_is_a_conflict(
    db: Engine, tenant: uuid.UUID
) -> None:
    x = ev(tenant, at(add_months(THIS_MONTH, -1)))
    write_batch(db, [x], Pricer())
    result = write_batch(db, [{**x, "created_at": this_month(1).isoformat()}], Pricer())
    assert (result.inserted, result.conflicts) == (0, 1)
    assert "differs in: created_at" in list_dead_letters(db)[0].error


def test_a_month_without_a_partition_is_a_dead_letter_until_made_and_replayed(
    pdb: Engine, ptenant: uuid.UUID, on_partitioned: None, capsys: pytest.CaptureFixture[str]
) -> None:
    far = add_months(THIS_MONTH, -9)  # pdb holds the previous month on
    lost = [ev(ptenant, at(far, d, 23)) for d in (1, 15, 28)]
    batch = [ev(ptenant, this_month(1)), *lost, ev(ptenant, this_month(2))]
    result = write_batch(pdb, batch, Pricer())
    assert (result.inserted, result.dead_lettered) == (2, 3)
    letters = list_dead_letters(pdb)
    assert {x.event_id for x in letters} == {e["id"] for e in lost}
    for letter in letters:
        assert letter.field == "created_at" and f"falls in {far:%Y-%m}" in letter.error
        assert f"run `ai-usage partitions create {far:%Y-%m}`" in letter.error
    assert replay(pdb, Pricer()).still_failing == 3  # still no partition: kept

    assert cli(["partitions", "create", f"{far:%Y-%m}"]) == 0
    assert f"made {partition_name(far)}" in capsys.readouterr().out
    assert cli(["dead-letters", "replay", "--all"]) == 0
    assert "3 landed" in capsys.readouterr().out
    assert scalar(pdb, "SELECT count(*) FROM ai_usage_logs") == 5
    assert list_dead_letters(pdb) == []


def test_cli_lists_ensures_and_refuses_a_closed_month(
    pdb: Engine, on_partitioned: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["partitions", "list", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["layout"] == "partitioned"
    assert [p["name"] for p in listed["partitions"]] == months_held(pdb)
    assert cli(["partitions", "ensure", "--ahead", "4"]) == 0
    assert capsys.readouterr().out.strip() == f"made {add_months(THIS_MONTH, 4):%Y-%m}"
    assert cli(["partitions", "ensure", "--ahead", "4"]) == 0
    assert "there already" in capsys.readouterr().out
    old = add_months(THIS_MONTH, -30)
    with pdb.begin() as conn:
        conn.execute(text("INSERT INTO ai_usage_closed_months (month) VALUES (:m)"), {"m": old})
    assert cli(["partitions", "create", f"{old:%Y-%m}"]) == 2
    assert f"{old:%Y-%m} is closed by retention" in capsys.readouterr().err
    assert partition_name(old) not in months_held(pdb)


def test_beat_keeps_the_months_ahead(pdb: Engine, on_partitioned: None) -> None:
    from worker.celery_app import app
    from worker.consumer.tasks import partitions
    from worker.settings import PARTITIONS_TASK

    entry = app.conf.beat_schedule["ai-usage-partitions"]
    assert entry["task"] == PARTITIONS_TASK and PARTITIONS_TASK in app.tasks
    with pdb.begin() as conn:
        conn.execute(text(f"DROP TABLE {partition_name(add_months(THIS_MONTH, 2))}"))
    made = partitions.apply().get()
    assert made == {"made": [f"{add_months(THIS_MONTH, 2):%Y-%m}"]}


def test_reprice_prices_each_month_s_row_of_an_id_at_its_own_usage(
    pdb: Engine, ptenant: uuid.UUID, tmp_path: Path
) -> None:
    x = ev(
        ptenant,
        at(add_months(THIS_MONTH, -1)),
        model="in-house-llm-v1",
        input_tokens=10**6,
        output_tokens=0,
    )
    later = {**x, "created_at": this_month(1).isoformat(), "input_tokens": 2 * 10**6}
    write_batch(pdb, [x], Pricer())
    write_batch(pdb, [later], Pricer())
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            [
                {
                    "model": "in-house-llm-v1",
                    "effective_from": "2020-01-01",
                    "input_per_mtok": 2,
                    "output_per_mtok": 4,
                }
            ]
        )
    )
    result = reprice_rows(pdb, Pricer(load_overrides(str(prices))))
    assert result.priced == 2
    with pdb.connect() as conn:
        costs = conn.execute(
            text("SELECT cost_usd FROM ai_usage_logs WHERE id = :i ORDER BY created_at"),
            {"i": x["id"]},
        ).scalars()
        assert list(costs) == [2.0, 4.0]
