"""`ai-usage check`: one line per check, for people, container healthchecks and monitoring."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, text

from worker.ledger.db import VERSION_TABLES, SchemaMode, current_revisions
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


#: How the migrations check begins when there is nothing to check the ledger in.
NOT_MIGRATED = "not migrated"


def alembic_head() -> str | None:
    """The head revision of the migrations shipped inside this package (never the cwd's)."""
    from worker.ledger.db import script_directory

    return script_directory().get_current_head()


def check_database(engine: Engine, mode: SchemaMode = "standalone") -> list[Check]:
    try:
        with engine.connect() as conn:
            if mode == "copied":
                migrations = _schema_drift(conn)
            else:
                migrations = _revision_check(current_revisions(conn, VERSION_TABLES[mode]), mode)
    except Exception as exc:
        return [Check("database", "fail", f"unreachable: {type(exc).__name__}: {_first(exc)}")]
    return [Check("database", "ok", f"reachable ({redact_url(str(engine.url))})"), migrations]


def _revision_check(current: tuple[str, ...] | None, mode: SchemaMode) -> Check:
    table = VERSION_TABLES[mode]
    head = alembic_head()
    if not current:
        why = f"no {table} table" if current is None else f"{table} is empty"
        return Check("migrations", "fail", f"{NOT_MIGRATED} ({why}): run `ai-usage migrate`")
    at = ", ".join(current)
    if at == head:
        return Check("migrations", "ok", f"at head {head} ({table})")
    from worker.ledger.db import script_directory

    try:
        known = script_directory().get_revision(at) is not None
    except Exception:
        known = False
    if not known:
        hint = " (a host application's? set AI_USAGE_SCHEMA=host)" if mode == "standalone" else ""
        return Check(
            "migrations", "fail", f"{table} holds {at}, not a revision of ai-usage-worker{hint}"
        )
    return Check(
        "migrations", "fail", f"database at {at}, code expects {head}: run `ai-usage migrate`"
    )


def _schema_drift(conn: Connection) -> Check:
    """Mode `copied`: no version of ours to read, so compare our tables with the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worker.ledger.models import Base

    def ours(name: str | None, type_: str, parent_names: Any) -> bool:  # what is reflected
        table = name if type_ == "table" else parent_names.get("table_name")
        return table is None or str(table).startswith("ai_usage_")

    def our_object(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return table is None or str(getattr(table, "name", "")).startswith("ai_usage_")

    if conn.execute(text("SELECT to_regclass('ai_usage_logs')")).scalar() is None:
        return Check(
            "migrations",
            "fail",
            f"{NOT_MIGRATED} (no ai_usage_logs table): copy our revisions into the host's chain"
            " and run its `alembic upgrade head`",
        )
    ctx = MigrationContext.configure(
        conn, opts={"include_name": ours, "include_object": our_object}
    )
    # Only what the host lacks or has differently: extra indexes or columns of its own are fine.
    diffs = [d for d in _flatten(compare_metadata(ctx, Base.metadata)) if d[0][:4] != "remo"]
    absent = {d[1].name for d in diffs if d[0] == "add_table"}
    diffs = [d for d in diffs if d[0] == "add_table" or _table_of(d) not in absent]
    if not diffs:
        return Check("migrations", "ok", "ai_usage_* tables match the code (host's chain)")
    shown = "; ".join(_describe_diff(d) for d in diffs[:3])
    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return Check(
        "migrations",
        "fail",
        f"schema differs from the code: {shown}{more}: copy the missing revisions into the"
        " host's chain and run its `alembic upgrade head`",
    )


def _flatten(diffs: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for d in diffs:
        out.extend(d if isinstance(d, list) else [d])  # modify_* come grouped per column
    return out


def _table_of(diff: tuple[Any, ...]) -> str | None:
    if isinstance(diff[2] if len(diff) > 2 else None, str):
        return str(diff[2])  # add_column and modify_*: (op, schema, table, ...)
    table = getattr(diff[1], "table", None)  # indexes, constraints
    return str(table.name) if table is not None else None


def _describe_diff(diff: tuple[Any, ...]) -> str:
    kind = str(diff[0])
    if kind == "add_table":
        return f"missing table {diff[1].name}"
    if kind == "add_column":
        return f"missing column {diff[2]}.{diff[3].name}"
    if kind in ("add_index", "add_fk", "add_constraint"):
        return f"missing {kind[4:]} {getattr(diff[1], 'name', '?')}"
    if kind.startswith("modify_"):
        return f"{diff[2]}.{diff[3]}: {kind[7:]} differs"
    return kind


def check_broker(settings: Settings) -> list[Check]:
    import redis

    url = settings.broker_url
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        version = _server_version(client)
        depth = 0
        for key in queue_keys(QUEUE):
            depth += int(client.llen(key))  # type: ignore[arg-type]
        unacked = int(client.hlen("unacked"))  # type: ignore[arg-type]
        aside = int(client.llen(f"{QUEUE}.undecodable"))  # type: ignore[arg-type]
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


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a kombu queue: its own, and one per priority (named queue +
    "\x06\x16" + n), any of 1-9 so that a non-default priority_steps is counted too."""
    return [queue] + [f"{queue}\x06\x16{n}" for n in range(1, 10)]


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
    checks = check_database(engine, settings.schema_mode)
    checks += check_broker(settings)
    if checks[0].status != "fail" and not checks[1].detail.startswith(NOT_MIGRATED):
        checks += check_ledger(engine, settings)
    return checks
