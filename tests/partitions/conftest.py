"""Fixtures of the partitioned layout's tests: a database of their own migrated with
AI_USAGE_LOG_LAYOUT=partitioned, whatever layout the rest of the run uses, so that these tests
run in `make test` and in `make test-partitioned` alike."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from alembic import command
from tests.conftest import TABLES, alembic_config, make_tenant, new_database
from tests.factories import event
from worker.ledger.db import dispose_engine
from worker.ledger.layout import PARTITION_NAME
from worker.ledger.months import add_months, month_start
from worker.ledger.partitions import ensure_partitions
from worker.settings import get_settings, normalise_database_url

NOW = dt.datetime.now(dt.UTC)
THIS_MONTH = month_start(NOW)


@contextlib.contextmanager
def layout_setting(value: str) -> Iterator[None]:
    """AI_USAGE_LOG_LAYOUT=value while the block runs (a migration reads it)."""
    saved = os.environ.get("AI_USAGE_LOG_LAYOUT")
    os.environ["AI_USAGE_LOG_LAYOUT"] = value
    get_settings.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AI_USAGE_LOG_LAYOUT", None)
        else:
            os.environ["AI_USAGE_LOG_LAYOUT"] = saved
        get_settings.cache_clear()


def at(month: dt.date, day: int = 10, hour: int = 12) -> dt.datetime:
    """An instant inside `month` (UTC)."""
    return dt.datetime(month.year, month.month, day, hour, tzinfo=dt.UTC)


def this_month(k: int) -> dt.datetime:
    """The k-th of ten instants of the current month so far (an event may not be more than
    5 minutes in the future)."""
    start = at(THIS_MONTH, 1, 0)
    return start + (NOW - start) * k / 10


def ev(tenant: uuid.UUID, when: dt.datetime, **fields: Any) -> dict[str, Any]:
    """A valid event created at `when`."""
    return event(tenant, created_at=when.isoformat(), **fields)


def months_held(engine: Engine) -> list[str]:
    """The partitions of ai_usage_logs, by name."""
    with engine.connect() as conn:
        return [
            str(n)
            for n in conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'ai_usage_logs'::regclass ORDER BY 1"
                )
            ).scalars()
        ]


@pytest.fixture(scope="module")
def partitioned_url(pg_server: str) -> Iterator[str]:
    with new_database(pg_server, "aiu_part") as url:
        with layout_setting("partitioned"):
            command.upgrade(alembic_config(url), "head")
        yield url


@pytest.fixture(scope="module")
def partitioned_engine(partitioned_url: str) -> Iterator[Engine]:
    engine = create_engine(normalise_database_url(partitioned_url))
    yield engine
    engine.dispose()


@pytest.fixture
def pdb(partitioned_engine: Engine) -> Engine:
    """The partitioned database, emptied, with exactly the partitions Beat keeps (the previous
    month to 3 ahead): a test's own partitions and leftovers go."""
    with partitioned_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
        for name in conn.execute(
            text("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ :p"),
            {"p": PARTITION_NAME.pattern},
        ).scalars():
            conn.execute(text(f"DROP TABLE {name}"))
    ensure_partitions(partitioned_engine)
    return partitioned_engine


@pytest.fixture
def ptenant(pdb: Engine) -> uuid.UUID:
    return make_tenant(pdb)


@pytest.fixture
def on_partitioned(partitioned_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """DATABASE_URL names the partitioned database (the CLI and the tasks read it)."""
    monkeypatch.setenv("DATABASE_URL", partitioned_url)
    get_settings.cache_clear()
    dispose_engine()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    dispose_engine()


def old_month(n: int) -> dt.date:
    """The month `n` months before the current one."""
    return add_months(THIS_MONTH, -n)
