"""Test data and observation: tenants, events, COPY text, bulk loads, and waiting for rows to be
committed or a Redis queue to drain."""

from __future__ import annotations

import datetime as dt
import io
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from sqlalchemy import text

from bench.procs import BenchError
from bench.servers import Stack
from worker.consumer.transport import queue_keys
from worker.ledger.pricing import Pricer

#: Priced models (genai-prices knows them), so the worker prices every event.
MODELS = ("claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", "gpt-4o", "gpt-4o-mini")
OPERATIONS = ("generate_assessment", "analyze_lead_insights", "summarise_lead")
COLUMNS = (
    "id, tenant_id, operation, model, input_tokens, output_tokens, total_tokens, cost_usd,"
    " duration_ms, success, created_at"
)


def make_tenants(stack: Stack, n: int) -> list[str]:
    with stack.engine.begin() as conn:
        return [
            str(
                conn.execute(
                    text("INSERT INTO tenants (name) VALUES (:n) RETURNING id"), {"n": f"bench-{i}"}
                ).scalar_one()
            )
            for i in range(n)
        ]


def events(n: int, tenants: Sequence[str], seed: int = 5) -> list[dict[str, Any]]:
    """`n` event dicts as the client sends them (created_at an ISO string, cost left to the
    worker); dated now, so that none is refused as being in the future."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    out = []
    for i in range(n):
        out.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "tenant_id": tenants[i % len(tenants)],
                "operation": OPERATIONS[i % len(OPERATIONS)],
                "model": MODELS[i % len(MODELS)],
                "input_tokens": rng.randint(200, 4000),
                "output_tokens": rng.randint(50, 2000),
                "duration_ms": rng.randint(300, 9000),
                "created_at": (now - dt.timedelta(microseconds=n - i)).isoformat(),
            }
        )
    return out


def priced(evs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with cost_usd set by the application (the naive baseline's producer)."""
    pricer = Pricer()
    return [
        {
            **e,
            "cost_usd": pricer.price(
                e["model"],
                None,
                e["input_tokens"],
                e["output_tokens"],
                dt.datetime.fromisoformat(e["created_at"]),
            ),
        }
        for e in evs
    ]


def _cost(value: float | None) -> str:
    return "\\N" if value is None else repr(value)


def copy_text(evs: Sequence[dict[str, Any]]) -> str:
    """COPY text (columns COLUMNS) of priced events."""
    return "".join(
        f"{e['id']}\t{e['tenant_id']}\t{e['operation']}\t{e['model']}\t{e['input_tokens']}\t"
        f"{e['output_tokens']}\t{e['input_tokens'] + e['output_tokens']}\t"
        f"{_cost(e.get('cost_usd'))}\t{e['duration_ms']}\tsuccess\t{e['created_at']}\n"
        for e in evs
    )


#: The columns the worker writes (the spec's and revision e5f6a7b8c9d0's): the limit (1) loads
#: rows of the same shape, fingerprint included.
ROW_COLUMNS = COLUMNS + ", cache_read_tokens, cache_write_tokens, provider, fingerprint"


def row_text(evs: Sequence[dict[str, Any]]) -> str:
    """COPY text (columns ROW_COLUMNS) of priced events, as the worker writes them."""
    return "".join(
        f"{e['id']}\t{e['tenant_id']}\t{e['operation']}\t{e['model']}\t{e['input_tokens']}\t"
        f"{e['output_tokens']}\t{e['input_tokens'] + e['output_tokens']}\t"
        f"{_cost(e.get('cost_usd'))}\t{e['duration_ms']}\tsuccess\t{e['created_at']}\t0\t0\t\\N"
        f"\t\\\\x{uuid.UUID(e['id']).hex}\n"
        for e in evs
    )


def spread_rows(n: int, tenants: Sequence[str], months: int, seed: int) -> str:
    """COPY text of `n` rows over the current month and the `months - 1` before it."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spans: list[tuple[dt.datetime, float]] = [(first, (now - first).total_seconds())]
    for _ in range(months - 1):
        prev = (first - dt.timedelta(days=1)).replace(day=1)
        spans.append((prev, (first - prev).total_seconds()))
        first = prev
    buf = io.StringIO()
    for i in range(n):
        start, span = spans[i % len(spans)]
        at = start + dt.timedelta(seconds=rng.random() * span)
        inp, out = rng.randint(200, 4000), rng.randint(50, 2000)
        cost = "\\N" if i % 50 == 0 else repr(round((inp * 3 + out * 15) / 1e6, 8))
        buf.write(
            f"{uuid.UUID(int=rng.getrandbits(128), version=4)}\t{rng.choice(tenants)}\t"
            f"{OPERATIONS[i % 3]}\t{MODELS[i % 4]}\t{inp}\t{out}\t{inp + out}\t{cost}\t"
            f"{rng.randint(300, 9000)}\t{'failure' if i % 40 == 0 else 'success'}\t"
            f"{at.isoformat()}\n"
        )
    return buf.getvalue()


def copy_rows(stack: Stack, data: str) -> None:
    """COPY straight into ai_usage_logs (FKs and the dirty-month trigger apply)."""
    conn = stack.pg_connect()
    try:
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY ai_usage_logs ({COLUMNS}) FROM STDIN", io.StringIO(data))
    finally:
        conn.close()


def wait_rows(
    stack: Stack,
    expected: int,
    last_id: str,
    timeout: float,
    describe: Callable[[], str] = str,
) -> tuple[float, dict[str, float]]:
    """perf_counter() of the first poll that saw `expected` rows in ai_usage_logs.

    Polls a cheap primary-key probe for `last_id` every 5 ms and only then counts (count(*)
    on a large table is not free on 2 CPUs). Also returns when the first row was seen."""
    conn = stack.pg_connect()
    first_row: float | None = None
    deadline = time.monotonic() + timeout
    try:
        with conn.cursor() as cur:
            while True:
                at = time.perf_counter()
                if first_row is None:
                    cur.execute("SELECT EXISTS (SELECT 1 FROM ai_usage_logs)")
                    if cur.fetchone()[0]:
                        first_row = at
                cur.execute("SELECT EXISTS (SELECT 1 FROM ai_usage_logs WHERE id = %s)", (last_id,))
                if cur.fetchone()[0]:
                    cur.execute("SELECT count(*) FROM ai_usage_logs")
                    if int(cur.fetchone()[0]) >= expected:
                        return at, {"first_row": first_row or at}
                    time.sleep(0.01)
                if time.monotonic() > deadline:
                    cur.execute("SELECT count(*) FROM ai_usage_logs")
                    raise BenchError(
                        f"only {cur.fetchone()[0]} of {expected} rows after {timeout:.0f}s\n"
                        + describe()
                    )
                time.sleep(0.005)
    finally:
        conn.close()


def count_rows(stack: Stack) -> int:
    with stack.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ai_usage_logs")).scalar_one())


def backlog(client: redis.Redis, queue: str) -> tuple[int, int]:
    """(messages waiting in `queue`, in all its priority lists; messages delivered to some
    consumer and not yet acknowledged, from kombu's unacked hash), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for key in queue_keys(queue):
        pipe.llen(key)
    pipe.hlen("unacked")
    *lengths, unacked = pipe.execute()
    return sum(int(n) for n in lengths), int(unacked)
