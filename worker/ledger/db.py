"""Engines, one per process, made on first use (after any fork) and never at import."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

from worker.settings import get_settings, normalise_database_url

#: The checkout (or install) root holding alembic.ini and alembic/.
ROOT = Path(__file__).resolve().parents[2]

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


def alembic_config(url: str | None = None) -> Any:
    """The project's alembic configuration. With `url`, for that database, and leaving the
    caller's logging alone; without, alembic's env.py reads DATABASE_URL from the settings."""
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalise_database_url(url))
        cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str | None = None) -> None:
    """`alembic upgrade head` (the release step), on `url` or on DATABASE_URL."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
