"""Runtime settings, read from the environment (and `.env`) once per process, on first use.

Nothing here connects to anything. Every setting is listed in `.env.example`.
"""

from __future__ import annotations

import functools
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.client.envelope import QUEUE
from worker.client.errors import ConfigError

__all__ = ["PERIODIC_QUEUE", "QUEUE", "Settings", "get_settings", "load_settings"]
#: The queue Celery's own task consumer reads: periodic tasks (rollups) sent by Beat. The
#: ingest queue QUEUE is consumed by the worker's ingest step, whatever -Q says.
PERIODIC_QUEUE = "ai_usage.periodic"
#: `celery -A worker.celery_app` + these runs the worker, as the Procfile does (a test checks).
WORKER_ARGS = (
    "worker",
    "-Q",
    PERIODIC_QUEUE,
    "--concurrency",
    "1",
    "--loglevel",
    "INFO",
    "--without-mingle",
    "--without-gossip",
)


class Settings(BaseSettings):
    """All settings of the worker, beat and CLI (the client reads none of them)."""

    # Each setting is read from its variable only (the alias), never from its field name: a
    # host application's LOG_LEVEL or LOG_FORMAT is not ours (pydantic-settings reads the field
    # name too under populate_by_name).
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    celery_broker_url: str | None = Field(None, validation_alias="CELERY_BROKER_URL")

    #: Extra kombu transport options (JSON), e.g. {"master_name": "mymaster"} for Sentinel.
    broker_transport_extra: dict[str, Any] = Field(
        default_factory=dict, validation_alias="AI_USAGE_BROKER_TRANSPORT_OPTIONS"
    )
    #: Seconds before Redis hands an unacknowledged message to another worker.
    visibility_timeout: int = Field(300, ge=10, validation_alias="AI_USAGE_VISIBILITY_TIMEOUT")
    #: A worker batch is written when it holds this many events ...
    batch_max_events: int = Field(
        2000, ge=1, le=100_000, validation_alias="AI_USAGE_BATCH_MAX_EVENTS"
    )
    #: ... or this many bytes of message payload ...
    batch_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, validation_alias="AI_USAGE_BATCH_MAX_BYTES"
    )
    #: ... or when its oldest message has waited this long.
    batch_max_wait_ms: int = Field(
        250, ge=1, le=60_000, validation_alias="AI_USAGE_BATCH_MAX_WAIT_MS"
    )
    #: Events a worker holds at most (taken, not yet acknowledged); 0: two batches.
    prefetch_events: int = Field(0, ge=0, validation_alias="AI_USAGE_PREFETCH_EVENTS")
    #: Seconds a stopping worker (SIGTERM) spends writing what it holds before it hands the
    #: rest back to the queue; keep it well under the visibility timeout.
    shutdown_drain_s: float = Field(
        20.0, gt=0, le=600, validation_alias="AI_USAGE_SHUTDOWN_DRAIN_S"
    )
    #: Freeze the objects of start-up out of the garbage collector (worker.consumer.runtime).
    gc_freeze: bool = Field(True, validation_alias="AI_USAGE_GC_FREEZE")
    #: Generation-0 threshold of the worker's garbage collector; 0 leaves Python's (700).
    gc_threshold: int = Field(50_000, ge=0, validation_alias="AI_USAGE_GC_THRESHOLD")
    #: The worker's GIL switch interval in ms; 0 leaves Python's (5 ms).
    switch_interval_ms: float = Field(
        1.0, ge=0, le=100, validation_alias="AI_USAGE_SWITCH_INTERVAL_MS"
    )
    #: Longest pause between two attempts to write while the database is down.
    db_retry_max_s: float = Field(10.0, gt=0, validation_alias="AI_USAGE_DB_RETRY_MAX_S")
    #: `ai-usage check` fails when the oldest waiting message is older than this.
    check_queue_age_s: float = Field(600.0, gt=0, validation_alias="AI_USAGE_CHECK_QUEUE_AGE_S")
    #: Seconds between two Beat runs of ai_usage.rollup_monthly.
    rollup_interval_s: float = Field(300.0, ge=1, validation_alias="AI_USAGE_ROLLUP_INTERVAL_S")
    #: Retention: Beat runs `ai_usage.prune` daily, deleting raw rows of months that began
    #: more than this many months before the current one (rollups kept). Unset: never.
    retention_months: int | None = Field(None, ge=1, validation_alias="AI_USAGE_RETENTION_MONTHS")
    #: The queue budget alerts are sent to, as the task `ai_usage.budget_alert` (for the
    #: application to consume; the worker does not read it).
    alert_queue: str = Field(
        "ai_usage.alerts", min_length=1, validation_alias="AI_USAGE_ALERT_QUEUE"
    )
    #: Optional webhook POSTed each alert (JSON), signed with AI_USAGE_ALERT_WEBHOOK_SECRET.
    alert_webhook_url: str | None = Field(None, validation_alias="AI_USAGE_ALERT_WEBHOOK_URL")
    alert_webhook_secret: str | None = Field(None, validation_alias="AI_USAGE_ALERT_WEBHOOK_SECRET")
    #: Attempts per webhook delivery (backoff 0.5 s, doubling, at most 8 s) before it is
    #: recorded as failed.
    alert_webhook_attempts: int = Field(
        4, ge=1, le=20, validation_alias="AI_USAGE_ALERT_WEBHOOK_ATTEMPTS"
    )
    #: JSON file of operator price overrides (see README, Pricing). Empty: none.
    price_overrides_file: str | None = Field(None, validation_alias="AI_USAGE_PRICE_OVERRIDES")
    #: Port of the Prometheus endpoint served by worker and beat; 0 turns it off.
    metrics_port: int = Field(0, ge=0, le=65535, validation_alias="AI_USAGE_METRICS_PORT")
    #: `default` (celery's file scheduler: run exactly one beat) or `redbeat` (standby beats
    #: wait on a Redis lock; needs the `redbeat` extra).
    beat_scheduler: Literal["default", "redbeat"] = Field(
        "default", validation_alias="AI_USAGE_BEAT_SCHEDULER"
    )
    #: Who owns the schema: `standalone`, `host` (a host application's database, our own
    #: version table) or `copied` (our revisions copied into the host's chain). README,
    #: "Owning the schema"; the values are worker.ledger.db.SchemaMode.
    schema_mode: Literal["standalone", "host", "copied"] = Field(
        "standalone", validation_alias="AI_USAGE_SCHEMA"
    )
    log_format: Literal["text", "json"] = Field("text", validation_alias="AI_USAGE_LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="AI_USAGE_LOG_LEVEL"
    )

    # --- Reconciliation with the providers' usage and cost reports (`ai-usage reconcile`,
    # docs/reading/reconciliation.md). The admin keys are SecretStr: never in a repr or a log.
    #: Providers Beat reconciles daily (comma-separated: anthropic, openai). Empty: none.
    reconcile_providers: str = Field("", validation_alias="AI_USAGE_RECONCILE_PROVIDERS")
    #: The provider-side ids this application uses, `[provider:]dimension=id` separated by
    #: commas (api_key_id, workspace_id, project_id). Empty: the whole organisation.
    reconcile_scope: str = Field("", validation_alias="AI_USAGE_RECONCILE_SCOPE")
    #: A measure matches when it differs from the provider's figure by at most this percent.
    reconcile_tolerance_pct: float = Field(
        0.5, ge=0, le=100, validation_alias="AI_USAGE_RECONCILE_TOLERANCE_PCT"
    )
    #: Hours after a UTC day ends during which its figures are provisional (not judged).
    reconcile_lag_hours: float = Field(
        48.0, ge=0, le=24 * 31, validation_alias="AI_USAGE_RECONCILE_LAG_HOURS"
    )
    #: Days the daily Beat run covers, ending yesterday (UTC).
    reconcile_days: int = Field(7, ge=1, le=31, validation_alias="AI_USAGE_RECONCILE_DAYS")
    #: Seconds one run may spend fetching, retries and Retry-After waits included.
    reconcile_deadline_s: float = Field(
        120.0, gt=0, le=3600, validation_alias="AI_USAGE_RECONCILE_DEADLINE_S"
    )
    anthropic_admin_api_key: SecretStr | None = Field(
        None, validation_alias="ANTHROPIC_ADMIN_API_KEY"
    )
    openai_admin_key: SecretStr | None = Field(None, validation_alias="OPENAI_ADMIN_KEY")
    #: As in the providers' SDKs (OpenAI's includes the /v1).
    anthropic_base_url: str = Field(
        "https://api.anthropic.com", validation_alias="ANTHROPIC_BASE_URL"
    )
    openai_base_url: str = Field("https://api.openai.com/v1", validation_alias="OPENAI_BASE_URL")

    @field_validator("reconcile_providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        for name in (p.strip() for p in value.split(",")):
            if name and name not in ("anthropic", "openai"):
                raise ValueError(f"expected anthropic and/or openai, got {name!r}")
        return value

    @field_validator("retention_months", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `AI_USAGE_RETENTION_MONTHS=` (as in .env.example) means: no retention.
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return normalise_database_url(value)

    @field_validator("redis_url", "celery_broker_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "redis+socket"):
            raise ValueError(f"expected a redis:// or rediss:// URL, got scheme {scheme!r}")
        return value

    @property
    def broker_url(self) -> str:
        """The Celery broker: CELERY_BROKER_URL if set, else REDIS_URL."""
        url = self.celery_broker_url or self.redis_url
        if not url:
            raise ConfigError("REDIS_URL is not set (nor CELERY_BROKER_URL): the broker is unknown")
        return url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, with the psycopg2 driver named."""
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set")
        return self.database_url


def normalise_database_url(value: str) -> str:
    """Accept `postgres://` and `postgresql://` URLs and name the psycopg2 driver."""
    parts = urlsplit(value)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql", "postgresql+psycopg2"):
        return urlunsplit(parts._replace(scheme="postgresql+psycopg2"))
    raise ValueError(f"expected a postgres:// or postgresql:// URL, got scheme {scheme!r}")


_ALIASES = {
    name: (field.validation_alias if isinstance(field.validation_alias, str) else name.upper())
    for name, field in Settings.model_fields.items()
}


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = str(first["loc"][0]) if first["loc"] else "?"
    variable = _ALIASES.get(loc, loc.upper())
    return f"{variable}: {first['msg']}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, raising ConfigError with one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return load_settings()


def redact_url(url: str) -> str:
    """A URL with its password replaced by `***`, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))
