"""The naive baseline: what a developer following the migration guide would write.

One Celery task per usage event; its body opens a SQLAlchemy ORM session, adds one AIUsageLog
row and commits. The worker runs with Celery's defaults (`celery -A bench.naive_app worker -Q
naive`: prefork pool, one process per CPU, prefetch multiplier 4, early acknowledgement). The
cost is computed by the application (the guide says so), so it arrives in the event.

`noop` is the reference for what Celery itself costs per message, with the same defaults.
The only addition to plain Celery is the worker_ready hook, which tells the harness (through
BENCH_READY_FILE) that the worker consumes, since the default log level does not say it.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, signals
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from worker.ledger.models import AIUsageLog
from worker.settings import normalise_database_url

QUEUE = "naive"

app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = QUEUE

# Module-level engine, as the tutorials have it; it connects lazily (in each pool process).
engine = create_engine(
    normalise_database_url(os.environ.get("DATABASE_URL", "postgresql://127.0.0.1/postgres"))
)


@app.task(name="naive.record")  # type: ignore[untyped-decorator]
def record(**event: Any) -> None:
    """Store one usage event."""
    with Session(engine) as session:
        session.add(
            AIUsageLog(
                id=uuid.UUID(event["id"]),
                tenant_id=uuid.UUID(event["tenant_id"]),
                operation=event["operation"],
                model=event["model"],
                input_tokens=event["input_tokens"],
                output_tokens=event["output_tokens"],
                total_tokens=event["input_tokens"] + event["output_tokens"],
                cost_usd=event.get("cost_usd"),
                duration_ms=event.get("duration_ms"),
                success=event.get("success", "success"),
                created_at=dt.datetime.fromisoformat(event["created_at"]),
            )
        )
        session.commit()


@app.task(name="naive.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Does nothing: Celery's own per-message cost."""


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**_: Any) -> None:
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        Path(path).write_text(str(os.getpid()))
