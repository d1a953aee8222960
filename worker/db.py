"""Engines, one per process, made on first use (after any fork) and never at import."""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine, create_engine

from worker.settings import get_settings

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
