"""Engines, one per process, made on first use (after any fork) and never at import; and the
migrations, which ship inside the package (`worker/ledger/migrations`, the repo's alembic/)."""

from __future__ import annotations

import importlib.resources
import os
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine, create_engine, text

from worker.settings import get_settings, normalise_database_url

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext, MigrationInfo
    from alembic.script import ScriptDirectory

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None


def get_engine() -> Engine:
    """This process's engine for DATABASE_URL. A forked child gets a fresh one."""
    global _engine, _engine_pid
    with _lock:
        if _engine is None or _engine_pid != os.getpid():
            if _engine is not None:
                # Inherited from the parent across fork: drop its pool without closing the
                # parent's sockets.
                _engine.dispose(close=False)
            _engine = make_engine(get_settings().sqlalchemy_url)
            _engine_pid = os.getpid()
        return _engine


def make_engine(url: str) -> Engine:
    """An engine with the pool settings the worker relies on: pre-ping so a restarted database
    is noticed at checkout, and short connect timeouts so an outage fails fast and is retried."""
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "ai-usage-worker"},
    )


def dispose_engine() -> None:
    """Close this process's engine (tests and shutdown)."""
    global _engine, _engine_pid
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _engine_pid = None


#: Who owns the schema (docs/ledger/schema.md), from AI_USAGE_SCHEMA:
#: `standalone`: our whole chain, stand-in parent tables included, in `alembic_version`;
#: `host`: a host application's database that has the parent tables: our chain from
#:   ai_usage_logs on, in a version table of our own, the host's `alembic_version` untouched;
#: `copied`: the host copied our revisions into its own chain; we never migrate.
SchemaMode = Literal["standalone", "host", "copied"]
VERSION_TABLES: dict[SchemaMode, str] = {
    "standalone": "alembic_version",
    "host": "ai_usage_alembic_version",
}
#: The stand-in parent tables' revisions: in host mode these tables are the host's.
STAND_IN_REVISIONS = ("9f8e7d6c5b4a", "a1b2c3d4e5f6")
#: What ai_usage_logs' foreign keys (and the report's tenant names) need of a host.
PARENT_COLUMNS = {
    "tenants": ("id", "name"),
    "users": ("id",),
    "assessments": ("id",),
    "leads": ("id",),
}


def migrations_dir() -> str:
    """The folder of the shipped migrations (env.py, versions/), wherever the package lives:
    a wheel, an sdist install or an editable checkout. Never the cwd."""
    return str(importlib.resources.files("worker.ledger") / "migrations")


def script_directory() -> ScriptDirectory:
    """The shipped revision chain."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(migrations_dir())


def schema_mode() -> SchemaMode:
    """AI_USAGE_SCHEMA (default `standalone`)."""
    return get_settings().schema_mode


def alembic_config(url: str | None = None, mode: SchemaMode | None = None) -> Config:
    """The package's alembic configuration (no alembic.ini needed). With `url`, for that
    database; without, env.py reads DATABASE_URL. `mode` overrides AI_USAGE_SCHEMA."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_dir())
    if url is not None:
        # configparser interpolation: a percent-encoded password must survive.
        cfg.set_main_option("sqlalchemy.url", normalise_database_url(url).replace("%", "%%"))
    if mode is not None:
        cfg.attributes["schema_mode"] = mode
    return cfg


def version_table(mode: SchemaMode) -> str:
    """Where our revision is kept in `mode`."""
    if mode == "copied":
        raise _refused(
            "AI_USAGE_SCHEMA=copied: the host application's chain holds these revisions;"
            " migrate with the host's `alembic upgrade head`"
        )
    return VERSION_TABLES[mode]


def current_revisions(conn: Connection, table: str) -> tuple[str, ...] | None:
    """The revisions recorded in `table`, or None if there is no such table."""
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        return None
    return tuple(str(r) for r in conn.execute(text(f'SELECT version_num FROM "{table}"')).scalars())


def missing_parents(conn: Connection) -> list[str]:
    """What a host database lacks of PARENT_COLUMNS (`users`, `tenants.name`, `leads.id
    (integer, not uuid)`), in the connection's current schema."""
    found: dict[tuple[str, str], str] = {
        (str(t), str(c)): str(d)
        for t, c, d in conn.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ANY(:t)"
            ),
            {"t": list(PARENT_COLUMNS)},
        )
    }
    tables = {t for t, _ in found}
    out: list[str] = []
    for table, columns in PARENT_COLUMNS.items():
        if table not in tables:
            out.append(table)
            continue
        for column in columns:
            kind = found.get((table, column))
            if kind is None:
                out.append(f"{table}.{column}")
            elif column == "id" and kind != "uuid":
                out.append(f"{table}.id ({kind}, not uuid)")
    return out


def prepare_migrations(env: Any, mode: SchemaMode) -> None:
    """Run by env.py (`env` is its `alembic.context`, the EnvironmentContext's proxy module)
    inside the migration transaction, before the revisions: refuse, with one
    line, a database that is not what `mode` expects; in host mode, record the host's parent
    tables as the stand-in revisions on first use, so that our chain starts at ai_usage_logs."""
    ctx = env.get_context()
    conn = ctx.connection
    assert conn is not None
    heads = ctx.get_current_heads()
    table = VERSION_TABLES[mode]
    for head in heads:
        if _unknown(env.script, head):
            hint = (
                " (a host application's? set AI_USAGE_SCHEMA=host)" if mode == "standalone" else ""
            )
            raise _refused(
                f"{table} holds revision {head!r}, which is not one of ai-usage-worker's{hint}"
            )
    if mode == "host":
        missing = missing_parents(conn)
        if missing:
            raise _refused(
                "AI_USAGE_SCHEMA=host: the host database lacks " + ", ".join(missing)
                + "; ai_usage_logs needs tenants(id, name), users(id), assessments(id),"
                " leads(id) with uuid ids"
            )  # fmt: skip
        destination = env.get_revision_argument()
        if destination in ("base", *STAND_IN_REVISIONS[:-1]):
            raise _stand_ins_refused()
        if not heads and destination is not None:
            ctx.stamp(env.script, STAND_IN_REVISIONS[-1])
    elif not heads and conn.execute(text("SELECT to_regclass('tenants')")).scalar() is not None:
        raise _refused(
            "tables tenants etc. exist but alembic_version does not name a revision of ours:"
            " a host application's database? set AI_USAGE_SCHEMA=host"
        )


def refuse_stand_in_steps(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    """env.py's on_version_apply hook in host mode: the parent tables are the host's, so a
    downgrade past ai_usage_logs (a relative one, say, that prepare_migrations cannot see) is
    refused once the first stand-in step has run, and rolled back: it is all one transaction."""
    if step.is_migration and set(step.up_revision_ids) & set(STAND_IN_REVISIONS):
        raise _stand_ins_refused()


def _stand_ins_refused() -> Exception:
    return _refused(
        "AI_USAGE_SCHEMA=host: the parent tables belong to the host application;"
        f" downgrade no further than {STAND_IN_REVISIONS[-1]}"
    )


def _unknown(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is None
    except CommandError:
        return True


def _refused(message: str) -> Exception:
    from alembic.util import CommandError

    return CommandError(message)


@dataclass
class Migrated:
    """What `migrate` did."""

    mode: SchemaMode
    version_table: str
    before: tuple[str, ...] | None
    after: tuple[str, ...]


def migrate(url: str | None = None, mode: SchemaMode | None = None) -> Migrated:
    """`alembic upgrade head` of the shipped chain (the release step), on `url` or on
    DATABASE_URL, in `mode` (default AI_USAGE_SCHEMA). Raises alembic's CommandError with one
    line when the database is not what the mode expects."""
    from alembic import command

    mode = mode or schema_mode()
    table = version_table(mode)
    engine = make_engine(normalise_database_url(url) if url else get_settings().sqlalchemy_url)
    try:
        with engine.connect() as conn:
            before = current_revisions(conn, table)
        cfg = alembic_config(url, mode)
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            after = current_revisions(conn, table) or ()
    finally:
        engine.dispose()
    return Migrated(mode, table, before, after)
