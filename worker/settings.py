"""Runtime settings, read from the environment (and `.env`) once per process, on first use.

Nothing here connects to anything. Every setting is listed in `.env.example`.
"""

from __future__ import annotations

import base64
import functools
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.client.envelope import QUEUE
from worker.client.errors import ConfigError

__all__ = [
    "PARTITIONS_TASK",
    "PERIODIC_QUEUE",
    "QUEUE",
    "Settings",
    "get_settings",
    "load_settings",
]
#: The queue Celery's own task consumer reads: periodic tasks (rollups) sent by Beat. The
#: ingest queue QUEUE is consumed by the worker's ingest step, whatever -Q says.
PERIODIC_QUEUE = "ai_usage.periodic"
#: Beat's task that makes the partitioned layout's months ahead (worker.consumer.tasks); Beat
#: also sends it when it starts (worker.consumer.app).
PARTITIONS_TASK = "ai_usage.partitions"
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
    #: Optional webhook POSTed each alert (JSON), signed per the Standard Webhooks
    #: specification with AI_USAGE_ALERT_WEBHOOK_SECRET. Only http:// and https:// URLs,
    #: without a user name or password (checked here, when the settings load).
    alert_webhook_url: str | None = Field(None, validation_alias="AI_USAGE_ALERT_WEBHOOK_URL")
    #: The signing secret, `whsec_` + base64 of at least 24 random bytes (the specification's
    #: format). A SecretStr: its repr (and the Settings repr) never shows it.
    alert_webhook_secret: SecretStr | None = Field(
        None, validation_alias="AI_USAGE_ALERT_WEBHOOK_SECRET"
    )
    #: Attempts per webhook delivery (backoff 0.5 s, doubling, at most 8 s) before it is
    #: recorded as failed.
    alert_webhook_attempts: int = Field(
        4, ge=1, le=20, validation_alias="AI_USAGE_ALERT_WEBHOOK_ATTEMPTS"
    )
    #: Seconds one attempt may take in all (connect, send, the answer's status and headers),
    #: however the receiver dribbles; kept well under the 10 minutes after which a delivery
    #: left `sending` is taken up again.
    alert_webhook_timeout_s: float = Field(
        10.0, gt=0, le=120, validation_alias="AI_USAGE_ALERT_WEBHOOK_TIMEOUT_S"
    )
    #: The queue of the webhook delivery task `ai_usage.deliver_alerts` (read by this app's
    #: workers, unlike AI_USAGE_ALERT_QUEUE). The default is the periodic queue the worker
    #: reads; a queue of its own, with a worker of its own (`-Q`), keeps deliveries off the
    #: rollups' worker process entirely.
    alert_delivery_queue: str = Field(
        PERIODIC_QUEUE, min_length=1, validation_alias="AI_USAGE_ALERT_DELIVERY_QUEUE"
    )
    #: JSON file of operator price overrides (docs/ledger/pricing.md). Empty: none.
    price_overrides_file: str | None = Field(None, validation_alias="AI_USAGE_PRICE_OVERRIDES")
    #: Port of the Prometheus endpoint served by worker and beat; 0 turns it off.
    metrics_port: int = Field(0, ge=0, le=65535, validation_alias="AI_USAGE_METRICS_PORT")
    #: `default` (celery's file scheduler: run exactly one beat) or `redbeat` (standby beats
    #: wait on a Redis lock; needs the `redbeat` extra).
    beat_scheduler: Literal["default", "redbeat"] = Field(
        "default", validation_alias="AI_USAGE_BEAT_SCHEDULER"
    )
    #: Who owns the schema: `standalone`, `host` (a host application's database, our own
    #: version table) or `copied` (our revisions copied into the host's chain). docs/ledger/
    #: schema.md; the values are worker.ledger.db.SchemaMode.
    schema_mode: Literal["standalone", "host", "copied"] = Field(
        "standalone", validation_alias="AI_USAGE_SCHEMA"
    )
    #: The layout of ai_usage_logs, read once, by the migration c9d0e1f2a3b4 when it runs:
    #: `plain` (the spec's table) or `partitioned` (one partition per UTC month; docs/ledger/
    #: scale.md). Afterwards the code reads the layout from the database, never from here.
    log_layout: Literal["plain", "partitioned"] = Field(
        "plain", validation_alias="AI_USAGE_LOG_LAYOUT"
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

    @field_validator("alert_webhook_url", "alert_webhook_secret", mode="before")
    @classmethod
    def _empty_webhook_is_unset(cls, value: object) -> object:
        # `AI_USAGE_ALERT_WEBHOOK_URL=` (as in .env.example) means: no webhook.
        return None if value == "" else value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        problem = None if value is None else webhook_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("alert_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else webhook_secret_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> Settings:
        if self.alert_webhook_url and self.alert_webhook_secret is None:
            raise ValueError(
                "AI_USAGE_ALERT_WEBHOOK_SECRET: is required when AI_USAGE_ALERT_WEBHOOK_URL is"
                " set (every delivery is signed)"
            )
        if self.alert_delivery_queue == self.alert_queue:
            raise ValueError(
                "AI_USAGE_ALERT_DELIVERY_QUEUE: must differ from AI_USAGE_ALERT_QUEUE (the"
                " application consumes that one; this app's workers read the delivery queue)"
            )
        return self

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
    if not first["loc"]:  # a check across settings: its message names the variable
        return str(first["msg"]).removeprefix("Value error, ")
    loc = str(first["loc"][0])
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


#: The Standard Webhooks specification's secret: `whsec_` then base64, of 24 to 64 bytes.
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
WEBHOOK_SECRET_MIN_BYTES = 24


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook URL, in words that never repeat it (it may hold a
    password), or None. Only http:// and https:// with a host; no user name or password,
    which would be sent as a header and end up in logs; no space or control character."""
    if any(ch <= " " or ch == "\x7f" for ch in url):
        return "must not contain spaces or control characters"
    if not url.isascii():
        return "must be ASCII (an international domain name in its xn-- form, a path %-encoded)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL (its host or port cannot be read)"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = scheme if scheme.isalnum() and len(scheme) <= 10 else "?"
        return f"expected an https:// or http:// URL, got scheme {shown!r}"
    if "@" in parts.netloc:
        return "must not hold a user name or password (put credentials in the secret, not the URL)"
    if not parts.hostname:
        return "has no host"
    return None


def webhook_secret_problem(secret: str) -> str | None:
    """Why `secret` cannot sign webhooks (never repeating it), or None."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return (
            f"expected {WEBHOOK_SECRET_PREFIX}<base64> (the Standard Webhooks format); make one"
            " with `ai-usage budget new-secret`"
        )
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except ValueError:
        return f"is not valid base64 after {WEBHOOK_SECRET_PREFIX}"
    if len(key) < WEBHOOK_SECRET_MIN_BYTES:
        return (
            f"is {len(key)} bytes, fewer than {WEBHOOK_SECRET_MIN_BYTES}: make a new one with"
            " `ai-usage budget new-secret`"
        )
    return None


def redact_url(url: str) -> str:
    """A URL with its password replaced by `***`, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))
