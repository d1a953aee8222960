"""`ai-usage check`: one line per check, for people, container healthchecks and monitoring."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, text

from worker.consumer.transport import key_names, queue_keys, undecodable_key
from worker.logs import redact
from worker.settings import QUEUE, Settings, redact_url

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return redact(f"{self.status.upper():<4} {self.name:<14} {self.detail}")


def alembic_head() -> str | None:
    """The head revision of the migrations shipped beside this package (or in the cwd)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        ini = base / "alembic.ini"
        if ini.exists():
            cfg = Config(str(ini))
            cfg.set_main_option("script_location", str(base / "alembic"))
            return ScriptDirectory.from_config(cfg).get_current_head()
    return None


def check_database(engine: Engine) -> list[Check]:
    out: list[Check] = []
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:
        return [Check("database", "fail", f"unreachable: {type(exc).__name__}: {_first(exc)}")]
    out.append(Check("database", "ok", f"reachable ({redact_url(str(engine.url))})"))
    head = alembic_head()
    if head is None:
        out.append(Check("migrations", "warn", f"at {current}; head unknown (no alembic.ini)"))
    elif current != head:
        out.append(
            Check(
                "migrations",
                "fail",
                f"database at {current}, code expects {head}: run `alembic upgrade head`",
            )
        )
    else:
        out.append(Check("migrations", "ok", f"at head {head}"))
    return out


def check_broker(settings: Settings) -> list[Check]:
    import redis

    url = settings.broker_url
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        version = _server_version(client)
        names = key_names()
        depth = 0
        for key in queue_keys(QUEUE):
            depth += int(client.llen(key))  # type: ignore[arg-type]
        unacked = int(client.hlen(names["unacked"]))  # type: ignore[arg-type]
        aside = int(client.llen(undecodable_key(QUEUE)))  # type: ignore[arg-type]
        client.close()
    except Exception as exc:
        return [Check("broker", "fail", f"unreachable ({redact_url(url)}): {type(exc).__name__}")]
    too_old = redis_version_problem(version)
    return [
        Check("broker", "fail", too_old)
        if too_old
        else Check("broker", "ok", f"reachable ({redact_url(url)}), Redis {version}"),
        Check(
            "queue",
            "warn" if aside else "ok",
            f"{QUEUE}: {depth} messages waiting, {unacked} unacknowledged"
            + (f"; {aside} foreign items set aside in {QUEUE}.undecodable" if aside else ""),
        ),
    ]


#: The worker waits with BLMOVE and takes messages with RPOP and a count: Redis 6.2 commands.
MIN_REDIS = (6, 2)


def redis_version_problem(version: str) -> str | None:
    """Why the worker cannot use a Redis of this version (from INFO's redis_version), or None."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None  # a fork with its own numbering: let it try
    if found >= MIN_REDIS:
        return None
    need = ".".join(map(str, MIN_REDIS))
    return (
        f"Redis {version} is too old: the worker needs Redis {need} or newer (BLMOVE, RPOP count)"
    )


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


def check_ledger(engine: Engine, settings: Settings, now: dt.datetime | None = None) -> list[Check]:
    now = now or dt.datetime.now(dt.UTC)
    out: list[Check] = []
    try:
        with engine.connect() as conn:
            dead = int(
                conn.execute(text("SELECT count(*) FROM ai_usage_dead_letters")).scalar_one()
            )
            last = conn.execute(
                text("SELECT last_success_at FROM ai_usage_rollup_state WHERE id = 1")
            ).scalar()
            unpriced = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM ai_usage_logs WHERE cost_usd IS NULL"
                        " AND created_at >= :since"
                    ),
                    {"since": now - dt.timedelta(days=1)},
                ).scalar_one()
            )
    except Exception as exc:
        return [Check("ledger", "fail", f"cannot read: {type(exc).__name__}")]
    out.append(
        Check(
            "dead_letters",
            "warn" if dead else "ok",
            f"{dead} dead letters" + (" (see `ai-usage dead-letters list`)" if dead else ""),
        )
    )
    limit = dt.timedelta(seconds=2 * settings.rollup_interval_s)
    if last is None:
        out.append(Check("rollup", "warn", "has never run (is beat running?)"))
    else:
        age = now - last
        status: Status = "fail" if age > limit else "ok"
        out.append(
            Check(
                "rollup",
                status,
                f"last ran {int(age.total_seconds())}s ago (limit {int(limit.total_seconds())}s)",
            )
        )
    out.append(
        Check(
            "pricing",
            "warn" if unpriced else "ok",
            f"{unpriced} events of the last 24h have no price"
            + (" (add a price override, then `ai-usage reprice`)" if unpriced else ""),
        )
    )
    return out


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""


def run_checks(engine: Engine, settings: Settings) -> list[Check]:
    """All checks. Exit status: 1 if any failed, else 0 (warnings are printed, not fatal)."""
    checks = check_database(engine)
    checks += check_broker(settings)
    if checks[0].status != "fail":
        checks += check_ledger(engine, settings)
    return checks
