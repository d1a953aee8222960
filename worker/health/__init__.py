"""`ai-usage check`: one line per check, for people, container healthchecks and monitoring.

Exit status 1 if any check fails (warnings are printed, not fatal). The checks and what to do
for each are in docs/running/health.md."""

from __future__ import annotations

from sqlalchemy import Engine

from worker.health.broker import check_broker, redis_version_problem, require_redis_version
from worker.health.check import Check, Status
from worker.health.ledger import check_ledger
from worker.health.partitions import check_partitions
from worker.health.reconcile import check_reconcile
from worker.health.schema import NOT_MIGRATED, alembic_head, check_database
from worker.settings import Settings

__all__ = [
    "NOT_MIGRATED",
    "Check",
    "Status",
    "alembic_head",
    "check_broker",
    "check_database",
    "check_ledger",
    "check_partitions",
    "check_reconcile",
    "redis_version_problem",
    "require_redis_version",
    "run_checks",
]


def run_checks(engine: Engine, settings: Settings) -> list[Check]:
    """All checks, in order: database, migrations, broker and pipeline, ledger (with the
    partitioned layout's partitions)."""
    checks = check_database(engine, settings.schema_mode)
    checks += check_broker(settings)
    if checks[0].status != "fail" and not checks[1].detail.startswith(NOT_MIGRATED):
        checks += check_ledger(engine, settings)
        checks += check_partitions(engine)
        checks += check_reconcile(engine, settings)
    return checks
