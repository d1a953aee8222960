"""`ai-usage check`, the database half: reachable, and at the code's revision (or schema)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, text

from worker.health.check import Check, first_line
from worker.ledger.db import VERSION_TABLES, SchemaMode, current_revisions
from worker.settings import redact_url

NOT_MIGRATED = "not migrated"


def alembic_head() -> str | None:
    """The head revision of the migrations shipped inside this package (never the cwd's)."""
    from worker.ledger.db import script_directory

    return script_directory().get_current_head()


def check_database(engine: Engine, mode: SchemaMode = "standalone") -> list[Check]:
    try:
        with engine.connect() as conn:
            if mode == "copied":
                migrations = _schema_drift(conn)
            else:
                migrations = _revision_check(current_revisions(conn, VERSION_TABLES[mode]), mode)
    except Exception as exc:
        return [Check("database", "fail", f"unreachable: {type(exc).__name__}: {first_line(exc)}")]
    return [Check("database", "ok", f"reachable ({redact_url(str(engine.url))})"), migrations]


def _revision_check(current: tuple[str, ...] | None, mode: SchemaMode) -> Check:
    table = VERSION_TABLES[mode]
    head = alembic_head()
    if not current:
        why = f"no {table} table" if current is None else f"{table} is empty"
        return Check("migrations", "fail", f"{NOT_MIGRATED} ({why}): run `ai-usage migrate`")
    at = ", ".join(current)
    if at == head:
        return Check("migrations", "ok", f"at head {head} ({table})")
    from worker.ledger.db import script_directory

    try:
        known = script_directory().get_revision(at) is not None
    except Exception:
        known = False
    if not known:
        hint = " (a host application's? set AI_USAGE_SCHEMA=host)" if mode == "standalone" else ""
        return Check(
            "migrations", "fail", f"{table} holds {at}, not a revision of ai-usage-worker{hint}"
        )
    return Check(
        "migrations", "fail", f"database at {at}, code expects {head}: run `ai-usage migrate`"
    )


def _schema_drift(conn: Connection) -> Check:
    """Mode `copied`: no version of ours to read, so compare our tables with the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worker.ledger.models import Base

    def ours(name: str | None, type_: str, parent_names: Any) -> bool:  # what is reflected
        table = name if type_ == "table" else parent_names.get("table_name")
        return table is None or str(table).startswith("ai_usage_")

    def our_object(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return table is None or str(getattr(table, "name", "")).startswith("ai_usage_")

    if conn.execute(text("SELECT to_regclass('ai_usage_logs')")).scalar() is None:
        return Check(
            "migrations",
            "fail",
            f"{NOT_MIGRATED} (no ai_usage_logs table): copy our revisions into the host's chain"
            " and run its `alembic upgrade head`",
        )
    ctx = MigrationContext.configure(
        conn, opts={"include_name": ours, "include_object": our_object}
    )
    # Only what the host lacks or has differently: extra indexes or columns of its own are fine.
    diffs = [d for d in _flatten(compare_metadata(ctx, Base.metadata)) if d[0][:4] != "remo"]
    absent = {d[1].name for d in diffs if d[0] == "add_table"}
    diffs = [d for d in diffs if d[0] == "add_table" or _table_of(d) not in absent]
    if not diffs:
        return Check("migrations", "ok", "ai_usage_* tables match the code (host's chain)")
    shown = "; ".join(_describe_diff(d) for d in diffs[:3])
    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return Check(
        "migrations",
        "fail",
        f"schema differs from the code: {shown}{more}: copy the missing revisions into the"
        " host's chain and run its `alembic upgrade head`",
    )


def _flatten(diffs: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for d in diffs:
        out.extend(d if isinstance(d, list) else [d])  # modify_* come grouped per column
    return out


def _table_of(diff: tuple[Any, ...]) -> str | None:
    if isinstance(diff[2] if len(diff) > 2 else None, str):
        return str(diff[2])  # add_column and modify_*: (op, schema, table, ...)
    table = getattr(diff[1], "table", None)  # indexes, constraints
    return str(table.name) if table is not None else None


def _describe_diff(diff: tuple[Any, ...]) -> str:
    kind = str(diff[0])
    if kind == "add_table":
        return f"missing table {diff[1].name}"
    if kind == "add_column":
        return f"missing column {diff[2]}.{diff[3].name}"
    if kind in ("add_index", "add_fk", "add_constraint"):
        return f"missing {kind[4:]} {getattr(diff[1], 'name', '?')}"
    if kind.startswith("modify_"):
        return f"{diff[2]}.{diff[3]}: {kind[7:]} differs"
    return kind
