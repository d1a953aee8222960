"""The rollup tables' models (a part of worker.ledger.models, whose Base they register on):
monthly rows, the deltas, the daily and per-user daily buckets, closed months, the run state."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from worker.ledger.base import Base, _created_at


class AIUsageMonthlyRollup(Base):
    """Per tenant and UTC month: the spec's monthly query, kept ready by Beat."""

    __tablename__ = "ai_usage_monthly_rollups"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    api_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: NUMERIC: the exact sum of the rows' float costs, independent of summation order.
    total_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    failed_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    unpriced_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    computed_at: Mapped[dt.datetime] = _created_at()
    total_cache_read_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    total_cache_write_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )


class _Measures:
    """The measures of a rollup bucket: calls, tokens, cost."""

    api_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    unpriced_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    failed_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: The exact sum of the priced rows' costs; unpriced rows are counted, not summed.
    cost_usd: Mapped[Decimal] = mapped_column(Numeric, nullable=False)


class _Bucket(_Measures):
    """The key and measures of a rollup bucket: tenant, UTC day, model, operation, success."""

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    model: Mapped[str] = mapped_column(String(100), nullable=False)
    operation: Mapped[str] = mapped_column(String(100), nullable=False)
    success: Mapped[str] = mapped_column(String(20), nullable=False)


class AIUsageRollupDelta(_Bucket, Base):
    """What one statement on ai_usage_logs changed in a bucket (signed), appended by a trigger
    in the writer's transaction; folded into the daily rollups, then deleted, by a run."""

    __tablename__ = "ai_usage_rollup_deltas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    #: NULL: the rows had no user.
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class AIUsageDailyRollup(_Bucket, Base):
    """Per tenant, UTC day, model, operation and success: calls, tokens, cost."""

    __tablename__ = "ai_usage_daily_rollups"
    __table_args__ = (
        PrimaryKeyConstraint(
            "tenant_id", "day", "model", "operation", "success", name="pk_ai_usage_daily_rollups"
        ),
        Index("idx_ai_usage_daily_rollups_day", "day"),
    )

    computed_at: Mapped[dt.datetime] = _created_at()


class AIUsageUserDailyRollup(_Measures, Base):
    """Per tenant, UTC day and user (worker.ledger.rollup_sql.NO_USER, the nil UUID, for
    events without one): calls, tokens, cost.
    The primary key serves `report --by user` (one tenant, a range of days)."""

    __tablename__ = "ai_usage_user_daily_rollups"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "day", "user_id", name="pk_ai_usage_user_daily_rollups"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    computed_at: Mapped[dt.datetime] = _created_at()


class AIUsageClosedMonth(Base):
    """A month whose raw rows retention pruned: its rollups are final, late events refused."""

    __tablename__ = "ai_usage_closed_months"

    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    closed_at: Mapped[dt.datetime] = _created_at()
    rows_pruned: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    #: False for months closed before per-user rollups existed (revision d0e1f2a3b4c5): their
    #: per-user figures were never kept.
    has_user_rollups: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("true")
    )


class AIUsageRollupState(Base):
    """One row: when the last rollup finished, for `ai-usage check`."""

    __tablename__ = "ai_usage_rollup_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_success_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    months_recomputed: Mapped[int] = mapped_column(Integer, nullable=False)
