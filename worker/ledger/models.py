"""SQLAlchemy 2 typed models. The migrations are the source of the schema; a test checks these
models against them (`alembic check` comes out empty)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from worker.ledger.base import Base as Base
from worker.ledger.base import _created_at, _uuid_pk


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[dt.datetime] = _created_at()
    # Google Analytics integration (revision a1b2c3d4e5f6).
    ga_measurement_id: Mapped[str | None] = mapped_column(String(32))
    ga_api_secret: Mapped[str | None] = mapped_column(String(255))


class _TenantOwned:
    """Columns of the minimal parent tables that belong to a tenant."""

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[dt.datetime] = _created_at()


class User(_TenantOwned, Base):
    __tablename__ = "users"


class Assessment(_TenantOwned, Base):
    __tablename__ = "assessments"


class Lead(_TenantOwned, Base):
    __tablename__ = "leads"


class AIUsageLog(Base):
    """One AI API call. Column names, types and index names follow the migration guide exactly."""

    __tablename__ = "ai_usage_logs"
    __table_args__ = (
        Index("idx_ai_usage_logs_tenant_id", "tenant_id"),
        Index("idx_ai_usage_logs_operation", "operation"),
        Index("idx_ai_usage_logs_created_at", "created_at"),
        Index("idx_ai_usage_logs_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id"), nullable=False
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL")
    )
    operation: Mapped[str] = mapped_column(String(100), nullable=False)
    model: Mapped[str] = mapped_column(String(100), nullable=False)
    input_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    cost_usd: Mapped[float | None] = mapped_column(Double)
    assessment_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("assessments.id", ondelete="SET NULL")
    )
    lead_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("leads.id", ondelete="SET NULL")
    )
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[str] = mapped_column(String(20), nullable=False)
    created_at: Mapped[dt.datetime] = _created_at()
    # Revision e5f6a7b8c9d0 (not in the migration guide; NULL on rows written before it).
    #: Parts of input_tokens: read from, and written to, the provider's prompt cache.
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    #: Further usage dimensions by genai-prices usage key (cache_write_1h_tokens, ...).
    usage_details: Mapped[dict[str, int | float] | None] = mapped_column(JSONB)
    #: The event's pricing hint (`aws`, `azure`, ...), which a reprice needs too.
    provider: Mapped[str | None] = mapped_column(String(100))
    #: A hash of the validated event: a second copy with other content is a conflict.
    fingerprint: Mapped[bytes | None] = mapped_column(LargeBinary)


class AIUsageDeadLetter(Base):
    """An event that could not be stored, with the reason; replayable with `ai-usage dead-letters`."""

    __tablename__ = "ai_usage_dead_letters"
    __table_args__ = (Index("idx_ai_usage_dead_letters_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    #: `event:<id>`, or `sha256:<payload hash>` for a payload without a usable id: a redelivered
    #: or replayed event updates its dead letter instead of adding another.
    dedupe_key: Mapped[str] = mapped_column(String(80), nullable=False, unique=True)
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    #: The event as received, JSON-encoded with ASCII escapes (NUL bytes and lone surrogates
    #: survive this way; PostgreSQL text and jsonb refuse them raw).
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    field: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    created_at: Mapped[dt.datetime] = _created_at()
    last_attempt_at: Mapped[dt.datetime] = _created_at()


class AIUsageBudget(Base):
    """A tenant's monthly budget in USD and the percentages of it that raise an alert."""

    __tablename__ = "ai_usage_budgets"
    __table_args__ = (CheckConstraint("monthly_usd > 0", name="ck_ai_usage_budgets_positive"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    monthly_usd: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    thresholds: Mapped[list[int]] = mapped_column(
        ARRAY(Integer), nullable=False, server_default=text("'{50,80,100}'")
    )
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _created_at()


class AIUsageBudgetAlert(Base):
    """One alert: a tenant-month crossed a threshold of its budget. Unique per (tenant, month,
    threshold): the row is what makes an alert go out once."""

    __tablename__ = "ai_usage_budget_alerts"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "month", "threshold_pct", name="uq_ai_usage_budget_alerts_once"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    month: Mapped[dt.date] = mapped_column(Date, nullable=False)
    threshold_pct: Mapped[int] = mapped_column(Integer, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    budget_usd: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    forecast_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    on_track_to_exceed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[dt.datetime] = _created_at()
    #: When the ai_usage.budget_alert task was sent (in the transaction that made the row).
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: none (no webhook configured), pending, sent or failed.
    webhook_status: Mapped[str] = mapped_column(String(20), nullable=False)
    webhook_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    webhook_error: Mapped[str | None] = mapped_column(Text)
    webhook_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


#: Verdicts of a reconciliation result row (revision b8c9d0e1f2a3; worker.ledger.reconcile).
RECONCILE_STATUSES = (
    "match",
    "under_metered",
    "over_metered",
    "price_mismatch",
    "provisional",
    "not_covered",
)


class AIUsageReconcileRun(Base):
    """One reconciliation of a provider's usage and cost reports over a range of UTC days."""

    __tablename__ = "ai_usage_reconcile_runs"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('running', 'ok', 'failed')", name="ck_ai_usage_reconcile_runs_outcome"
        ),
        Index("idx_ai_usage_reconcile_runs_provider", "provider", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20), nullable=False)
    first_day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    last_day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    #: The ids the provider's side was restricted to ({"api_key_ids": [...], ...}).
    scope: Mapped[dict[str, list[str]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    tolerance_pct: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    lag_hours: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    started_at: Mapped[dt.datetime] = _created_at()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: running, ok or failed (then `error` says why, with no secret in it).
    outcome: Mapped[str] = mapped_column(String(20), nullable=False, server_default="running")
    error: Mapped[str | None] = mapped_column(Text)


class AIUsageReconcileBucket(Base):
    """One result row of a provider's daily bucket, as received, with when it was fetched."""

    __tablename__ = "ai_usage_reconcile_buckets"
    __table_args__ = (Index("idx_ai_usage_reconcile_buckets_run_id", "run_id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ai_usage_reconcile_runs.id", ondelete="CASCADE"), nullable=False
    )
    #: The endpoint it came from: `usage_report/messages`, `cost_report`, `usage/completions`,
    #: `usage/embeddings` or `costs`.
    report: Mapped[str] = mapped_column(String(60), nullable=False)
    starting_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ending_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    result: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False)
    fetched_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AIUsageReconcileResult(Base):
    """A run's verdict on one UTC day, model and measure: what we metered, what the provider
    reported, and the status."""

    __tablename__ = "ai_usage_reconcile_results"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in RECONCILE_STATUSES) + ")",
            name="ck_ai_usage_reconcile_results_status",
        ),
        Index("idx_ai_usage_reconcile_results_run_id", "run_id"),
        Index("idx_ai_usage_reconcile_results_provider_day", "provider", "day"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ai_usage_reconcile_runs.id", ondelete="CASCADE"), nullable=False
    )
    provider: Mapped[str] = mapped_column(String(20), nullable=False)
    day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    measure: Mapped[str] = mapped_column(String(40), nullable=False)
    metered: Mapped[Decimal | None] = mapped_column(Numeric)
    reported: Mapped[Decimal | None] = mapped_column(Numeric)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    detail: Mapped[str | None] = mapped_column(Text)


# The rollup tables' models live beside these; importing them registers them on Base, so that
# Base.metadata (alembic's target, `ai-usage check`) holds every table.
from worker.ledger import rollup_models as rollup_models  # noqa: E402
