"""`ai-usage check`, the partitioned layout's line: whether this month's and next month's
partitions of ai_usage_logs exist. Without this month's, every event is set aside as a dead
letter; without next month's, the first events of the next month will be (Beat's
ai_usage.partitions makes them three months ahead, so a missing one means it has not run).
Nothing in the default layout."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine

from worker.health.check import Check
from worker.ledger.layout import log_layout
from worker.ledger.months import month_start, next_month
from worker.ledger.partitions import list_partitions


def check_partitions(engine: Engine, now: dt.datetime | None = None) -> list[Check]:
    """No line in the default layout; `fail` without this month's partition, `warn` without
    the next month's."""
    try:
        with engine.connect() as conn:
            if log_layout(conn) != "partitioned":
                return []
        made = {p.month for p in list_partitions(engine)}
    except Exception as exc:
        return [Check("partitions", "fail", f"cannot read: {type(exc).__name__}")]
    this = month_start(now or dt.datetime.now(dt.UTC))
    after = next_month(this)
    fix = "run `ai-usage partitions ensure` (is beat running?)"
    if this not in made:
        return [
            Check(
                "partitions",
                "fail",
                f"no partition for this month ({this:%Y-%m}): its events are dead-lettered; {fix}",
            )
        ]
    if after not in made:
        return [Check("partitions", "warn", f"no partition for next month ({after:%Y-%m}); {fix}")]
    ahead = max(m for m in made if m is not None)
    return [Check("partitions", "ok", f"partitions made up to {ahead:%Y-%m}")]
