"""Prometheus metrics of the worker.

Under the prefork pool set PROMETHEUS_MULTIPROC_DIR (the worker's `make run` and compose files
do): prometheus-client then keeps each process's values in files there, and the endpoint
served by `serve()` adds them up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# In multiprocess mode prometheus-client writes to this folder from the first metric on.
_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _MULTIPROC_DIR:
    os.makedirs(_MULTIPROC_DIR, exist_ok=True)

from prometheus_client import (  # noqa: E402 - after the folder exists
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

log = logging.getLogger(__name__)

EVENTS = Counter(
    "ai_usage_events_total",
    "Usage events handled by the worker, by outcome.",
    ["outcome"],  # received, inserted, duplicate, conflict, dead_lettered, unpriced
)
BATCH_SIZE = Histogram(
    "ai_usage_batch_size_events",
    "Events per database batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
WRITE_SECONDS = Histogram(
    "ai_usage_batch_write_seconds",
    "Seconds to validate, price and commit one batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WRITE_FAILURES = Counter(
    "ai_usage_batch_write_failures_total",
    "Batch writes that failed because the database was unavailable (retried).",
)
ROLLUP_SECONDS = Histogram(
    "ai_usage_rollup_duration_seconds",
    "Seconds one monthly rollup run took.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
BUDGET_ALERTS = Counter(
    "ai_usage_budget_alerts_total",
    "Budget alerts raised (once per tenant, month and threshold), by threshold.",
    ["threshold"],
)
ROLLUP_LAST_SUCCESS = Gauge(
    "ai_usage_rollup_last_success_timestamp_seconds",
    "Unix time of the last successful rollup.",
    multiprocess_mode="max",
)


def record_write(
    *,
    received: int,
    inserted: int,
    duplicates: int,
    conflicts: int,
    dead_lettered: int,
    unpriced: int,
    seconds: float,
) -> None:
    """Count one committed batch (conflicting duplicates are also among the dead-lettered)."""
    EVENTS.labels("received").inc(received)
    EVENTS.labels("inserted").inc(inserted)
    EVENTS.labels("duplicate").inc(duplicates)
    EVENTS.labels("conflict").inc(conflicts)
    EVENTS.labels("dead_lettered").inc(dead_lettered)
    EVENTS.labels("unpriced").inc(unpriced)
    BATCH_SIZE.observe(received)
    WRITE_SECONDS.observe(seconds)


QUEUE_DEPTH = Gauge(
    "ai_usage_queue_depth_messages",
    "Messages waiting in the ingest queue (every priority).",
    multiprocess_mode="max",
)
UNACKED = Gauge(
    "ai_usage_unacked_messages",
    "Messages taken by workers and not yet acknowledged.",
    multiprocess_mode="max",
)
STALE_UNACKED = Gauge(
    "ai_usage_unacked_stale_messages",
    "Messages unacknowledged past the visibility timeout and a sweep: nobody restores them.",
    multiprocess_mode="max",
)
OLDEST_AGE = Gauge(
    "ai_usage_oldest_message_age_seconds",
    "Age of the oldest waiting message (0 when the queue is empty).",
    multiprocess_mode="max",
)
SET_ASIDE = Gauge(
    "ai_usage_undecodable_items",
    "Items set aside in the undecodable list.",
    multiprocess_mode="max",
)
HELD_EVENTS = Gauge(
    "ai_usage_worker_held_events",
    "Events this worker has taken and not yet acknowledged.",
    multiprocess_mode="liveall",
)
HEARTBEAT = Gauge(
    "ai_usage_worker_heartbeat_timestamp_seconds",
    "Unix time of this worker's last heartbeat.",
    multiprocess_mode="max",
)


def record_backlog(
    *,
    depth: int,
    unacked: int,
    stale_unacked: int,
    oldest_age_s: float | None,
    set_aside: int,
    held_events: int,
    at: float,
) -> None:
    """Set the queue gauges from one reading (the worker's heartbeat)."""
    QUEUE_DEPTH.set(depth)
    UNACKED.set(unacked)
    STALE_UNACKED.set(stale_unacked)
    OLDEST_AGE.set(oldest_age_s or 0.0)
    SET_ASIDE.set(set_aside)
    HELD_EVENTS.set(held_events)
    HEARTBEAT.set(at)


def prune_dead_process_files() -> None:
    """Remove multiprocess files (`<kind>_<pid>.db`) of processes that are gone."""
    if not _MULTIPROC_DIR:
        return
    for path in Path(_MULTIPROC_DIR).glob("*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


def serve(port: int) -> None:
    """Serve /metrics on `port` (all interfaces), aggregating processes in multiprocess mode."""
    if port <= 0:
        return
    registry: CollectorRegistry | None = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if registry is None:
        start_http_server(port)
    else:
        start_http_server(port, registry=registry)
    log.info("metrics served on port %d", port)


RECONCILE_DRIFT = Gauge(
    "ai_usage_reconcile_drift_ratio",
    "(metered - reported) / reported over the judged days of the latest reconciliation, by"
    " provider and measure (0: in step; negative: calls or tokens missed).",
    ["provider", "measure"],
    multiprocess_mode="mostrecent",
)
RECONCILE_DRIFTING_ROWS = Gauge(
    "ai_usage_reconcile_drifting_rows",
    "Rows of the latest reconciliation that are under_metered, over_metered or price_mismatch.",
    ["provider"],
    multiprocess_mode="mostrecent",
)


def record_reconcile(provider: str, drift: dict[str, float], drifting_rows: int) -> None:
    """Set the reconciliation gauges from one run."""
    for measure, ratio in drift.items():
        RECONCILE_DRIFT.labels(provider, measure).set(ratio)
    RECONCILE_DRIFTING_ROWS.labels(provider).set(drifting_rows)
