"""The revision chain and the ai_usage_logs contract of the migration guide, on real PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from alembic import command
from tests.conftest import PARTITIONED, ROOT, alembic_config

GUIDE = ROOT.parent / "shared" / "spec" / "ai_usage_logs_migration_guide.ja.md"

# The guide's 動作確認 SQL, verbatim.
GUIDE_INSERT = """
INSERT INTO ai_usage_logs (
    id, tenant_id, operation, model,
    input_tokens, output_tokens, total_tokens, success
) VALUES (
    gen_random_uuid(),
    (SELECT id FROM tenants LIMIT 1),
    'generate_assessment',
    'claude-3-5-sonnet-20241022',
    1000, 2000, 3000, 'success'
);
"""
GUIDE_SELECT = "SELECT * FROM ai_usage_logs;"
GUIDE_DELETE = "DELETE FROM ai_usage_logs WHERE operation = 'generate_assessment';"
GUIDE_MONTHLY = """
SELECT
    tenant_id,
    COUNT(*) as api_calls,
    SUM(input_tokens) as total_input_tokens,
    SUM(output_tokens) as total_output_tokens,
    SUM(total_tokens) as total_tokens,
    SUM(cost_usd) as total_cost_usd
FROM ai_usage_logs
WHERE created_at >= date_trunc('month', CURRENT_DATE)
GROUP BY tenant_id
ORDER BY total_cost_usd DESC;
"""


def schema_snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about the public schema that a migration can change."""
    with engine.connect() as conn:
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for label, sql in {
            "columns": "SELECT table_name, column_name, data_type, character_maximum_length,"
            " is_nullable, column_default FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2",
            "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' ORDER BY 1, 2",
            "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            " ORDER BY 1, 2",
            "triggers": "SELECT event_object_table, trigger_name, event_manipulation, action_statement"
            " FROM information_schema.triggers ORDER BY 1, 2, 3",
            "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            " ORDER BY 1",
        }.items():
            rows[label] = [tuple(r) for r in conn.execute(text(sql))]
        return rows


def test_single_head_and_contract_revisions() -> None:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused/db"))
    assert len(script.get_heads()) == 1
    rev = script.get_revision("b2c3d4e5f6g7")
    assert rev is not None and rev.down_revision == "a1b2c3d4e5f6"
    ga = script.get_revision("a1b2c3d4e5f6")
    assert ga is not None
    # Later tables come after the contract revision.
    chain = [r.revision for r in script.walk_revisions()]
    assert chain.index("b2c3d4e5f6g7") > chain.index(script.get_current_head() or "")


#: Columns later revisions add to ai_usage_logs (all nullable: rows before them knew nothing).
LATER_COLUMNS = {
    "cache_read_tokens": ("INTEGER", True),
    "cache_write_tokens": ("INTEGER", True),
    "usage_details": ("JSONB", True),
    "provider": ("VARCHAR(100)", True),
    "fingerprint": ("BYTEA", True),
}


@pytest.mark.parametrize("revision", ["b2c3d4e5f6g7", "head"])
def test_ai_usage_logs_matches_the_guide(scratch: tuple[str, Engine], revision: str) -> None:
    """Exactly the guide's table at its revision; at head, the guide's columns unchanged and
    only the later revisions' nullable columns beside them."""
    url, engine = scratch
    command.upgrade(alembic_config(url), revision)
    insp = inspect(engine)
    cols = {c["name"]: c for c in insp.get_columns("ai_usage_logs")}
    later = LATER_COLUMNS if revision == "head" else {}
    for name, (type_, nullable) in later.items():
        assert str(cols.pop(name)["type"]) == type_, name
        assert nullable, name
    expected = {
        "id": ("UUID", False),
        "tenant_id": ("UUID", False),
        "user_id": ("UUID", True),
        "operation": ("VARCHAR(100)", False),
        "model": ("VARCHAR(100)", False),
        "input_tokens": ("INTEGER", False),
        "output_tokens": ("INTEGER", False),
        "total_tokens": ("INTEGER", False),
        "cost_usd": ("DOUBLE PRECISION", True),
        "assessment_id": ("UUID", True),
        "lead_id": ("UUID", True),
        "duration_ms": ("INTEGER", True),
        "success": ("VARCHAR(20)", False),
        "created_at": ("TIMESTAMP", False),
    }
    assert set(cols) == set(expected)
    for name, (type_, nullable) in expected.items():
        assert str(cols[name]["type"]) == type_, name
        assert cols[name]["nullable"] is nullable, name
    assert getattr(cols["created_at"]["type"], "timezone", None) is True
    assert "now()" in str(cols["created_at"]["default"])
    # The partitioned layout's key must hold the partition key (docs/ledger/scale.md).
    key = ["id", "created_at"] if PARTITIONED and revision == "head" else ["id"]
    assert insp.get_pk_constraint("ai_usage_logs")["constrained_columns"] == key

    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("ai_usage_logs")}
    assert indexes == {
        "idx_ai_usage_logs_tenant_id": ["tenant_id"],
        "idx_ai_usage_logs_operation": ["operation"],
        "idx_ai_usage_logs_created_at": ["created_at"],
        "idx_ai_usage_logs_tenant_created": ["tenant_id", "created_at"],
    }
    fks = {
        fk["constrained_columns"][0]: (
            fk["referred_table"],
            fk["referred_columns"],
            fk["options"].get("ondelete"),
        )
        for fk in insp.get_foreign_keys("ai_usage_logs")
    }
    assert fks == {
        "tenant_id": ("tenants", ["id"], None),
        "user_id": ("users", ["id"], "SET NULL"),
        "assessment_id": ("assessments", ["id"], "SET NULL"),
        "lead_id": ("leads", ["id"], "SET NULL"),
    }


def test_round_trip_leaves_an_identical_schema(scratch: tuple[str, Engine]) -> None:
    url, engine = scratch
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    before = schema_snapshot(engine)
    command.downgrade(cfg, "a1b2c3d4e5f6")
    down = schema_snapshot(engine)
    assert not [c for c in down["columns"] if str(c[0]).startswith("ai_usage")]
    command.upgrade(cfg, "head")
    assert schema_snapshot(engine) == before


def test_downgrade_removes_exactly_what_upgrade_made(scratch: tuple[str, Engine]) -> None:
    url, engine = scratch
    cfg = alembic_config(url)
    command.upgrade(cfg, "a1b2c3d4e5f6")
    at_ga = schema_snapshot(engine)
    command.upgrade(cfg, "b2c3d4e5f6g7")
    command.downgrade(cfg, "a1b2c3d4e5f6")
    assert schema_snapshot(engine) == at_ga
    command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert (
            conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                    " AND table_name <> 'alembic_version'"
                )
            ).scalar_one()
            == 0
        )


def test_host_database_at_ga_revision_upgrades_with_later_revisions_only(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    cfg = alembic_config(url)
    command.upgrade(cfg, "a1b2c3d4e5f6")
    with engine.begin() as conn:
        tenant = conn.execute(
            text(
                "INSERT INTO tenants (name, ga_measurement_id) VALUES ('host', 'G-ABC123') RETURNING id"
            )
        ).scalar_one()
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT ga_measurement_id FROM tenants WHERE id = :t"), {"t": tenant}
            ).scalar_one()
            == "G-ABC123"
        )


def test_models_match_migrations(scratch: tuple[str, Engine]) -> None:
    url, _ = scratch
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.check(cfg)  # raises AutogenerateDiffsDetected on any drift


def test_guide_verification_sql_runs_verbatim(db: Engine, tenant: uuid.UUID) -> None:
    with db.begin() as conn:
        conn.exec_driver_sql(GUIDE_INSERT)
        rows = conn.exec_driver_sql(GUIDE_SELECT).mappings().all()
        assert len(rows) == 1
        row = rows[0]
        assert row["tenant_id"] == tenant and row["total_tokens"] == 3000
        assert row["created_at"] is not None and row["cost_usd"] is None
        monthly = conn.exec_driver_sql(GUIDE_MONTHLY).all()
        assert [tuple(r) for r in monthly] == [(tenant, 1, 1000, 2000, 3000, None)]
        assert conn.exec_driver_sql(GUIDE_DELETE).rowcount == 1


def test_guide_sql_is_quoted_from_the_guide() -> None:
    if not GUIDE.exists():
        pytest.skip("the guide is not beside this checkout")
    guide = GUIDE.read_text(encoding="utf-8")
    for sql in (GUIDE_INSERT, GUIDE_DELETE, GUIDE_SELECT, GUIDE_MONTHLY):
        assert sql.strip() in guide


@pytest.mark.parametrize(
    "parent,column",
    [
        ("users", "user_id"),
        ("assessments", "assessment_id"),
        ("leads", "lead_id"),
    ],
)
def test_deleting_a_parent_keeps_the_log_row(
    db: Engine, tenant: uuid.UUID, parent: str, column: str
) -> None:
    with db.begin() as conn:
        parent_id = conn.execute(
            text(f"INSERT INTO {parent} (tenant_id, name) VALUES (:t, 'p') RETURNING id"),
            {"t": tenant},
        ).scalar_one()
        log_id = uuid.uuid4()
        conn.execute(
            text(
                f"INSERT INTO ai_usage_logs (id, tenant_id, {column}, operation, model, input_tokens,"
                " output_tokens, total_tokens, success) VALUES (:id, :t, :p, 'op', 'm', 1, 1, 2,"
                " 'success')"
            ),
            {"id": log_id, "t": tenant, "p": parent_id},
        )
        conn.execute(text(f"DELETE FROM {parent} WHERE id = :p"), {"p": parent_id})
        value = conn.execute(
            text(f"SELECT {column} FROM ai_usage_logs WHERE id = :id"), {"id": log_id}
        ).scalar_one()
    assert value is None


def test_revision_files_are_dated(tmp_path: Path) -> None:
    names = sorted(p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))
    assert any("b2c3d4e5f6g7" in n for n in names)
    assert all(n[:4].isdigit() for n in names)
