"""Alembic environment, one copy for two entry points: `alembic upgrade head` in a checkout (with
alembic.ini) and `ai-usage migrate` from an installed package (this folder ships as
worker/ledger/migrations). The URL is `sqlalchemy.url` if a caller set it, else DATABASE_URL;
the schema mode (README, "Owning the schema") is the caller's `schema_mode` attribute, else
AI_USAGE_SCHEMA: it picks the version table and, in host mode, leaves the host's tables alone."""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import Connection, create_engine, pool

from alembic import context
from worker.ledger.db import (
    SchemaMode,
    prepare_migrations,
    refuse_stand_in_steps,
    schema_mode,
    version_table,
)
from worker.ledger.layout import partition_month
from worker.ledger.models import Base
from worker.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
MODE: SchemaMode = config.attributes.get("schema_mode") or schema_mode()
VERSION_TABLE = version_table(MODE)  # refuses mode `copied` with one line
HOOK = refuse_stand_in_steps if MODE == "host" else None


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate (`alembic check`) skips the months' partitions of ai_usage_logs (the
    partitioned layout): they are made at run time, not by the models."""
    return not (type_ == "table" and name is not None and partition_month(name) is not None)


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        on_version_apply=HOOK,
        include_name=_include_name,
    )
    # One transaction (PostgreSQL's DDL is transactional): a refusal leaves nothing behind.
    with context.begin_transaction():
        prepare_migrations(context, MODE)
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
