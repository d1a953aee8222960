"""What grouping the rollup deltas by user costs the write path (revision d0e1f2a3b4c5).

`python -m bench.userdeltas [--database-url URL] [--batches 20] [--tenants 50] [--users 1000]`

In a throwaway database at head: `tenants` tenants with `users` users each, and `batches`
batches of 2,000 events (the bench's events, each by a random user of its tenant, one in ten by
none, with the client's UUIDv7 ids), prepared before any is timed. The batches are stored
through worker.ledger.ingest.store_batch, the delta trigger function switched before each one
between this revision's (grouped by tenant, day, model, operation, success and user) and the
previous one's (no user), in the order ABBA so that neither always goes first. Both bodies are
installed the same way before every batch, so each store pays the same recompilation. After
each four batches a rollup folds the deltas (not timed), so the delta table stays small as
under Beat. Prints per variant: the median store time, rows/s and delta rows per batch, and the
ratio of the medians."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import random
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import Engine, create_engine, text

from bench import data
from bench.servers import throwaway_database
from worker.client.envelope import new_id
from worker.ledger.ingest import store_batch
from worker.ledger.pricing import Pricer
from worker.ledger.rollups import run_rollup
from worker.ledger.rows import PreparedBatch, prepare_batch
from worker.settings import normalise_database_url

BATCH = 2000
REVISION = (
    Path(__file__).resolve().parent.parent
    / "alembic"
    / "versions"
    / "2026_12_07_d0e1f2a3b4c5_user_daily_rollups.py"
)


def _revision() -> ModuleType:
    """The revision's module, for the two bodies of the trigger function it knows."""
    spec = importlib.util.spec_from_file_location("user_daily_rollups", REVISION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _population(engine: Engine, tenants: int, users: int) -> dict[str, list[str]]:
    with engine.begin() as conn:
        ids = [
            str(t)
            for t in conn.execute(
                text(
                    "INSERT INTO tenants (name) SELECT 'bench-' || i"
                    " FROM generate_series(1, :n) AS i RETURNING id"
                ),
                {"n": tenants},
            ).scalars()
        ]
        out: dict[str, list[str]] = {}
        for t in ids:
            out[t] = [
                str(u)
                for u in conn.execute(
                    text(
                        "INSERT INTO users (tenant_id, name) SELECT :t, 'u' || i"
                        " FROM generate_series(1, :n) AS i RETURNING id"
                    ),
                    {"t": t, "n": users},
                ).scalars()
            ]
    return out


def _batches(population: dict[str, list[str]], n: int, seed: int) -> list[PreparedBatch]:
    rng = random.Random(seed)
    evs = data.events(n * BATCH, list(population), seed=seed)
    for e in evs:
        e["id"] = str(new_id())
        if rng.random() < 0.9:
            e["user_id"] = rng.choice(population[e["tenant_id"]])
    pricer = Pricer()
    return [prepare_batch(evs[i : i + BATCH], pricer) for i in range(0, len(evs), BATCH)]


def _deltas(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ai_usage_rollup_deltas")).scalar_one())


def measure(url: str, batches: int, tenants: int, users: int) -> dict[str, Any]:
    engine = create_engine(normalise_database_url(url))
    revision = _revision()
    bodies = {"per_user": revision._function(True), "previous": revision._function(False)}
    population = _population(engine, tenants, users)
    prepared = _batches(population, batches, seed=27)
    order = ["per_user", "previous", "previous", "per_user"]
    seconds: dict[str, list[float]] = {k: [] for k in bodies}
    deltas: dict[str, list[int]] = {k: [] for k in bodies}
    store_batch(engine, _batches(population, 1, seed=1)[0])  # warm the pool and the caches
    run_rollup(engine, wait=True)
    gc.disable()  # a collection over the prepared batches would land on one store
    try:
        for i, batch in enumerate(prepared):
            variant = order[i % len(order)]
            with engine.begin() as conn:
                conn.execute(text(bodies[variant]))
            before = _deltas(engine)
            started = time.perf_counter()
            result = store_batch(engine, batch)
            seconds[variant].append(time.perf_counter() - started)
            assert result.inserted == BATCH, result.counts()
            deltas[variant].append(_deltas(engine) - before)
            if i % len(order) == len(order) - 1:
                run_rollup(engine, wait=True)
    finally:
        gc.enable()
        with engine.begin() as conn:
            conn.execute(text(bodies["per_user"]))
        engine.dispose()
    out: dict[str, Any] = {"batches": batches, "tenants": tenants, "users_per_tenant": users}
    for k in bodies:
        median = statistics.median(seconds[k])
        out[k] = {
            "store_median_ms": round(median * 1000, 1),
            "rows_per_s": round(BATCH / median),
            "delta_rows_per_batch": statistics.median(deltas[k]),
            "store_ms": [round(s * 1000, 1) for s in seconds[k]],
        }
    out["per_user_over_previous"] = round(
        out["per_user"]["store_median_ms"] / out["previous"]["store_median_ms"], 3
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.userdeltas", description=__doc__)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), required=False)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--users", type=int, default=1000, help="users per tenant")
    args = p.parse_args(argv)
    if not args.database_url:
        p.error("--database-url (or DATABASE_URL) names the PostgreSQL server to use")
    with throwaway_database(args.database_url) as url:
        print(json.dumps(measure(url, args.batches, args.tenants, args.users), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
