"""Celery configuration, built from the settings when Celery first reads its config (at worker,
beat or producer start), never at import of `worker.celery_app`."""

from __future__ import annotations

from kombu import Queue

from worker.settings import QUEUE, get_settings

_s = get_settings()

broker_url = _s.broker_url
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep reconnecting; an outage must not stop the worker
# Only this key is read by the Redis transport (a top-level visibility_timeout is ignored).
broker_transport_options = {
    "visibility_timeout": _s.visibility_timeout,
    "socket_keepalive": True,
    "health_check_interval": 25,
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

task_default_queue = QUEUE
task_queues = (Queue(QUEUE, routing_key=QUEUE),)
task_routes = {"ai_usage.*": {"queue": QUEUE, "routing_key": QUEUE}}

# The batcher holds messages unacknowledged until their batch commits, so the consumer must be
# allowed that many in flight (the batcher writes as soon as a batch is full).
worker_prefetch_multiplier = 2 * _s.batch_max_events
# Celery lowers the prefetch count after a broker reconnect and raises it again per ack; the
# batcher acknowledges in bulk and needs its full window at once.
worker_enable_prefetch_count_reduction = False
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
        "options": {"expires": _s.rollup_interval_s, "queue": QUEUE},
    }
}

if _s.beat_scheduler == "redbeat":
    # Standby beats: only the holder of the Redis lock sends; another takes over within
    # redbeat_lock_timeout if it dies. The rollup's advisory lock keeps results right anyway.
    beat_scheduler = "redbeat.RedBeatScheduler"
    redbeat_redis_url = _s.broker_url
    redbeat_lock_timeout = max(60, int(_s.rollup_interval_s * 2))
