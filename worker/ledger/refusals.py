"""Why the writer refuses a row, in the words of its dead letter: a month closed by retention,
a month without a partition (the partitioned layout), and any other refusal of the database,
naming the field; and the one warning a batch's dead letters are logged as."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Sequence

import psycopg2

from worker.ledger.months import month_start
from worker.ledger.rows import DeadLetter, Row, WriteResult

# The writer's logger: its warnings are the writer's, wherever the words are made.
log = logging.getLogger("worker.ledger.ingest")

# Which column a foreign-key violation is about, by constraint name.
_FK_FIELDS = {
    "fk_ai_usage_logs_tenant_id_tenants": "tenant_id",
    "fk_ai_usage_logs_user_id_users": "user_id",
    "fk_ai_usage_logs_assessment_id_assessments": "assessment_id",
    "fk_ai_usage_logs_lead_id_leads": "lead_id",
}
#: SQLSTATE 23514: a check violation, which is also what "no partition of relation ... found
#: for row" is.
_CHECK_VIOLATION = "23514"


def no_partition(exc: psycopg2.Error) -> bool:
    """True if `exc` is PostgreSQL's refusal of a row whose month has no partition."""
    primary = exc.diag.message_primary or ""
    return exc.pgcode == _CHECK_VIOLATION and primary.startswith("no partition of relation")


def by_month(rows: Sequence[Row]) -> list[list[Row]]:
    """`rows` grouped by their created_at's UTC month, in order of first appearance."""
    groups: dict[dt.date, list[Row]] = {}
    for row in rows:
        groups.setdefault(month_start(row.event.created_at), []).append(row)
    return list(groups.values())


def refuse_closed(
    closed_months: Sequence[dt.date], rows: Sequence[Row], result: WriteResult
) -> Sequence[Row]:
    """Rows of months retention closed are dead-lettered: their raw rows were pruned and their
    rollups are final, so a late event for one would be counted nowhere."""
    closed = set(closed_months)
    if not closed:
        return rows
    kept: list[Row] = []
    for row in rows:
        at = row.event.created_at
        month = month_start(at)
        if month not in closed:
            kept.append(row)
            continue
        reason = (
            f"created_at: {at.isoformat()} falls in {month:%Y-%m}, a month closed by retention"
            " (its raw rows were pruned and its rollups are final); late events for a closed"
            " month are refused"
        )
        result.dead_letters.append(DeadLetter(row.payload, reason, "created_at", row.event.id))
    return kept


def describe_db_error(exc: psycopg2.Error, row: Row) -> tuple[str, str | None]:
    """The dead letter's reason and field for a row the database refused."""
    diag = exc.diag
    if no_partition(exc):
        # The partitioned layout, a month without a partition (none is made ahead that far,
        # or one far in the past): kept here until the partition exists.
        at = row.event.created_at
        month = f"{month_start(at):%Y-%m}"
        return (
            f"created_at: {at.isoformat()} falls in {month}, a month ai_usage_logs has no"
            f" partition for; run `ai-usage partitions create {month}`, then replay the dead"
            " letters (`ai-usage dead-letters replay --all`)",
            "created_at",
        )
    column = _FK_FIELDS.get(diag.constraint_name or "") or diag.column_name
    message = (diag.message_primary or str(exc)).strip()
    if diag.message_detail:
        message = f"{message} ({diag.message_detail.strip()})"
    if column:
        message = f"{column}: {message}"
    return message, column


def log_dead_letters(letters: Sequence[DeadLetter]) -> None:
    """One warning per batch with the count of each reason's field, and the first reason: a
    thousand events of one deleted tenant are one line, not a thousand."""
    if not letters:
        return
    fields = Counter(d.field or "event" for d in letters)
    common = fields.most_common(8)
    summary = ", ".join(f"{ascii(name)[1:-1][:40]}: {n}" for name, n in common)
    if len(fields) > len(common):
        summary += f", {len(fields) - len(common)} other fields"
    first = letters[0]
    log.warning(
        "%d events dead-lettered (%s); first: event %s: %s",
        len(letters),
        summary,
        first.event_id or "(no id)",
        first.error[:300],
    )
