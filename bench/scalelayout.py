"""Figure 8: the write path in the partitioned layout against the default one (issue 27).

Two empty databases of their own on the same server, the default layout and one migrated by
`ai-usage migrate` with AI_USAGE_LOG_LAYOUT=partitioned, with the same tenants. Each round, the
same batches of new events (the client's v7 ids, dated now) are stored into both, batch by
batch in turn, the one that goes first swapping every batch: the partitioned table's rate over
the default table's, in the same seconds. What the partitioned layout adds to a write: tuple
routing to the month's partition, and its unique index on (id) beside the primary key
(id, created_at)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from bench.scaledata import BATCH, new_batches, say, twin_database
from bench.servers import Stack
from worker.ledger.ingest import store_batch
from worker.ledger.rows import WriteResult

LAYOUTS = ("plain", "partitioned")


def layout_ingest(stack: Stack, tenants: Sequence[str], n: int, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of `n` events stored into both layouts in turn; the ratios."""
    ratios: list[float] = []
    rates: dict[str, list[int]] = {k: [] for k in LAYOUTS}
    with ExitStack() as dbs:
        targets = {k: dbs.enter_context(twin_database(stack, tenants, k)) for k in LAYOUTS}
        for _ in range(rounds):
            spent = dict.fromkeys(LAYOUTS, 0.0)
            batches = new_batches(tenants, n, "v7")
            for i, batch in enumerate(batches):
                order = LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]
                for layout in order:
                    batch.result = WriteResult(received=len(batch.rows))
                    t0 = time.perf_counter()
                    store_batch(targets[layout].engine, batch)
                    spent[layout] += time.perf_counter() - t0
            got = {k: len(batches) * BATCH / spent[k] for k in LAYOUTS}
            for k in LAYOUTS:
                rates[k].append(round(got[k]))
            ratios.append(round(got["partitioned"] / got["plain"], 3))
            say(f"  plain {got['plain']:,.0f}, partitioned {got['partitioned']:,.0f} rows/s")
    return {
        "events_per_round": n,
        "rows_per_s": rates,
        "partitioned_over_plain_by_round": ratios,
        "partitioned_over_plain": statistics.median(ratios),
    }
