"""Celery configuration, built from the settings when Celery first reads its config (at worker,
beat or producer start), never at import of `worker.celery_app`."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery.schedules import crontab
from kombu import Queue

from worker.settings import PARTITIONS_TASK, PERIODIC_QUEUE, QUEUE, get_settings

_s = get_settings()

broker_url = _s.broker_url
# The worker's Redis transport (waits without popping, takes under its own delivery tags,
# counts room in events): kombu's documented way to change a transport, by `module:Class`.
broker_transport = (
    "worker.consumer.transport:SentinelTransport"
    if urlsplit(broker_url).scheme == "sentinel"
    else "worker.consumer.transport:Transport"
)
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep reconnecting; an outage must not stop the worker
# Only this key is read by the Redis transport (a top-level visibility_timeout is ignored).
broker_transport_options = {
    "visibility_timeout": _s.visibility_timeout,
    "socket_keepalive": True,
    "health_check_interval": 25,
    **_s.broker_transport_extra,
}

# JSON only: a pickle message is refused, never executed.
task_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"
task_ignore_result = True

# At-least-once delivery; writes are idempotent by event id, so a redelivery is harmless.
task_acks_late = True
task_reject_on_worker_lost = True

# Ingest messages go to QUEUE (read by the ingest step); every other task of the app (rollups)
# to PERIODIC_QUEUE, read by Celery's own task consumer (`-Q ai_usage.periodic`).
task_default_queue = PERIODIC_QUEUE
task_queues = (Queue(PERIODIC_QUEUE, routing_key=PERIODIC_QUEUE),)
task_routes = {
    "ai_usage.record": {"queue": QUEUE, "routing_key": QUEUE},
    "ai_usage.record_batch": {"queue": QUEUE, "routing_key": QUEUE},
    # The alert webhook's deliveries: the periodic queue unless a queue of their own is set.
    "ai_usage.deliver_alerts": {
        "queue": _s.alert_delivery_queue,
        "routing_key": _s.alert_delivery_queue,
    },
    "ai_usage.*": {"queue": PERIODIC_QUEUE, "routing_key": PERIODIC_QUEUE},
}

# Celery's task consumer only runs periodic tasks; the ingest step bounds its own room in events.
worker_prefetch_multiplier = 1
worker_hijack_root_logger = False
worker_send_task_events = False
worker_cancel_long_running_tasks_on_connection_loss = False

timezone = "UTC"
enable_utc = True
beat_schedule = {
    "ai-usage-rollup-monthly": {
        "task": "ai_usage.rollup_monthly",
        "schedule": _s.rollup_interval_s,
        # A backlog of periodic messages must not pile up: each one is dropped once its
        # successor is due.
        "options": {"expires": _s.rollup_interval_s, "queue": PERIODIC_QUEUE},
    }
}
# The partitioned layout's months ahead (a no-op in the plain layout): daily by the clock, so
# that a Beat restarted more often than daily still runs it (an interval would start over at
# each start); Beat also sends it once when it starts (worker.consumer.app).
beat_schedule["ai-usage-partitions"] = {
    "task": PARTITIONS_TASK,
    "schedule": crontab(minute=15, hour=0),
    "options": {"expires": 86400.0, "queue": PERIODIC_QUEUE},
}
if _s.retention_months:
    beat_schedule["ai-usage-prune"] = {
        "task": "ai_usage.prune",
        "schedule": 86400.0,
        "kwargs": {"older_than_months": _s.retention_months},
        "options": {"expires": 86400.0, "queue": PERIODIC_QUEUE},
    }

if _s.reconcile_providers.strip():
    # Daily, after the providers' overnight batches (lag: docs/reading/reconciliation.md).
    beat_schedule["ai-usage-reconcile"] = {
        "task": "ai_usage.reconcile",
        "schedule": crontab(minute=30, hour=6),
        "options": {"expires": 86400.0, "queue": PERIODIC_QUEUE},
    }

if _s.beat_scheduler == "redbeat":
    # Standby beats: only the holder of the Redis lock sends; another takes over within
    # redbeat_lock_timeout if it dies. The rollup's advisory lock keeps results right anyway.
    beat_scheduler = "redbeat.RedBeatScheduler"
    redbeat_redis_url = _s.broker_url
    redbeat_lock_timeout = max(60, int(_s.rollup_interval_s * 2))
