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
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from sqlalchemy import create_engine, text

from bench.scaledata import BATCH, new_batches, say
from bench.servers import Stack, throwaway_database
from worker.ledger.ingest import store_batch
from worker.ledger.rows import WriteResult
from worker.settings import normalise_database_url

LAYOUTS = ("plain", "partitioned")


@contextmanager
def _database(stack: Stack, layout: str, tenants: Sequence[str]) -> Iterator[Stack]:
    with throwaway_database(stack.database_url, layout=layout) as url:
        engine = create_engine(normalise_database_url(url), pool_size=2)
        try:
            with engine.begin() as conn:
                for i, tenant in enumerate(tenants):
                    conn.execute(
                        text("INSERT INTO tenants (id, name) VALUES (:id, :n)"),
                        {"id": tenant, "n": f"bench-{i}"},
                    )
            yield Stack(url, stack.redis_url, engine, stack.embedded)
        finally:
            engine.dispose()


def layout_ingest(stack: Stack, tenants: Sequence[str], n: int, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of `n` events stored into both layouts in turn; the ratios."""
    ratios: list[float] = []
    rates: dict[str, list[int]] = {k: [] for k in LAYOUTS}
    with ExitStack() as dbs:
        targets = {k: dbs.enter_context(_database(stack, k, tenants)) for k in LAYOUTS}
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
