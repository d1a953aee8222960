"""`ai-usage check`, the broker half: Redis reachable and recent enough, and the pipeline not
stuck: the oldest waiting message, messages no worker is restoring, items set aside, and the
workers' heartbeats. Each check that can fail says what to do (docs/running/health.md)."""

from __future__ import annotations

from typing import Any

from worker.client.envelope import QUEUE
from worker.consumer.backlog import HEARTBEAT_TTL_S, Backlog, read_backlog, stale_after_s
from worker.consumer.items import undecodable_key
from worker.health.check import Check
from worker.settings import Settings, redact_url

#: The worker waits with BLMOVE: a Redis 6.2 command.
MIN_REDIS = (6, 2)


def check_broker(settings: Settings) -> list[Check]:
    import redis

    url = settings.broker_url
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
            version = _server_version(client)
            backlog = read_backlog(client, settings.visibility_timeout)
        finally:
            client.close()
    except Exception as exc:
        return [Check("broker", "fail", f"unreachable ({redact_url(url)}): {type(exc).__name__}")]
    too_old = redis_version_problem(version)
    reachable = (
        Check("broker", "fail", too_old)
        if too_old
        else Check("broker", "ok", f"reachable ({redact_url(url)}), Redis {version}")
    )
    return [reachable, *pipeline_checks(backlog, settings)]


def pipeline_checks(b: Backlog, settings: Settings) -> list[Check]:
    """The checks that fail when the pipeline is stuck, from one reading of the queue."""
    out = []
    age = b.oldest_age_s
    limit = settings.check_queue_age_s
    waiting = f"{QUEUE}: {b.depth} messages waiting, {b.unacked} unacknowledged"
    if age is not None and age > limit:
        out.append(
            Check(
                "queue",
                "fail",
                f"{waiting}; the oldest has waited {age:.0f}s (limit {limit:.0f}s): are workers"
                " running and the database up? add workers if they are",
            )
        )
    else:
        oldest = f", the oldest {age:.0f}s old" if age is not None else ""
        out.append(Check("queue", "ok", waiting + oldest))
    stale = stale_after_s(settings.visibility_timeout)
    out.append(
        Check(
            "unacked",
            "fail",
            f"{b.stale_unacked} messages unacknowledged for over {stale:.0f}s (the visibility"
            " timeout and a sweep): no worker is restoring them; start a worker",
        )
        if b.stale_unacked
        else Check("unacked", "ok", f"none unacknowledged for over {stale:.0f}s")
    )
    out.append(
        Check(
            "undecodable",
            "fail",
            f"{b.set_aside} items set aside in {undecodable_key(QUEUE)}: read their reasons with"
            " `ai-usage undecodable list`, fix the producer, then `ai-usage undecodable clear`",
        )
        if b.set_aside
        else Check("undecodable", "ok", "no items set aside")
    )
    if b.workers:
        held = sum(int(w.get("held_events", 0)) for w in b.workers)
        out.append(Check("workers", "ok", f"{len(b.workers)} alive, holding {held} events"))
    else:
        out.append(
            Check(
                "workers",
                "fail",
                f"no worker heartbeat in the last {HEARTBEAT_TTL_S}s: start a worker (Procfile"
                " `worker`), or see its log",
            )
        )
    return out


def redis_version_problem(version: str) -> str | None:
    """Why the worker cannot use a Redis of this version (from INFO's redis_version), or None."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None  # a fork with its own numbering: let it try
    if found >= MIN_REDIS:
        return None
    need = ".".join(map(str, MIN_REDIS))
    return f"Redis {version} is too old: the worker needs Redis {need} or newer (BLMOVE)"


def _server_version(client: Any) -> str:
    info: dict[str, Any] = client.info("server")
    return str(info.get("redis_version", "?"))


def require_redis_version(url: str) -> None:
    """Stop a worker whose broker is too old to run it, with one line that says so. A broker
    that cannot be reached is left to Celery's connection retries."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            version = _server_version(client)
        finally:
            client.close()
    except redis.RedisError:
        return
    problem = redis_version_problem(version)
    if problem:
        raise SystemExit(f"ai-usage worker: broker {redact_url(url)}: {problem}")
