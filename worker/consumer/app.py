"""The Celery application: `celery -A worker.celery_app worker|beat`.

Creating the app connects to nothing; its configuration (worker.consumer.config) is read from
the settings when Celery first needs it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

app = Celery("ai_usage_worker", include=["worker.consumer.tasks"])
app.config_from_object("worker.consumer.config")
# The ingest queue's consumer, batching and drain at shutdown: a consumer bootstep.
app.steps["consumer"].add("worker.consumer.step:IngestStep")


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from worker.logs import configure_logging

    configure_logging()


@signals.celeryd_init.connect
def _worker_setup(**_: Any) -> None:
    from worker.health import require_redis_version
    from worker.settings import get_settings

    # SystemExit, unlike an exception, is not swallowed by Celery's signal dispatch.
    require_redis_version(get_settings().broker_url)
    _prune_metrics_dir()


def _prune_metrics_dir() -> None:
    # Multiprocess metric files of processes that no longer exist would be added in forever.
    from worker.metrics import prune_dead_process_files

    prune_dead_process_files()


@signals.beat_init.connect
def _beat_started(sender: Any = None, **_: Any) -> None:
    # The partitions ahead once at Beat's start too, not only at its daily time: a deployment
    # whose Beat restarts before that time every day would otherwise never make them.
    from worker.settings import PARTITIONS_TASK

    try:
        app.send_task(PARTITIONS_TASK)
    except Exception:  # the broker down at start: the daily run makes them
        logging.getLogger(__name__).warning("could not send %s at beat start", PARTITIONS_TASK)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A pool child must not use the parent's database connections.
    from worker.ledger.db import dispose_engine

    dispose_engine()


@signals.worker_ready.connect
def _worker_ready(**_: Any) -> None:
    from worker.metrics import serve
    from worker.settings import get_settings

    serve(get_settings().metrics_port)
