"""SDK responses through the whole pipeline: a sync-mode client publishing to Redis, a real
`celery -A worker.celery_app worker` process pricing and writing into PostgreSQL. One call
per provider; and a plain Celery producer's event with cache fields."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from tests import sdk_fakes as wire
from tests.conftest import WorkerProcess, count_rows, landed, wait_for
from tests.sdk_ledger import check, rows
from worker.client import UsageClient

pytestmark = pytest.mark.e2e

SONNET = "claude-sonnet-4-5-20250929"
BEDROCK = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def stored(db: Engine, ids: list[str]) -> list[dict[str, Any]]:
    """The rows of `ids`, once the worker has written them all."""
    wait_for(lambda: landed(db, ids).rows == len(ids), 30, what="rows written by the worker")
    return rows(db, ids)


def test_one_call_per_provider_through_a_real_worker(
    db: Engine, tenant: uuid.UUID, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker()
    usage = UsageClient(broker_url=redis_url, mode="sync")
    f: dict[str, Any] = {"tenant_id": tenant}

    anthropic_usage = {"input_tokens": 20_000, "cache_read_input_tokens": 230_000}
    anthropic_usage |= {"output_tokens": 1000}
    client = wire.anthropic_client(
        json.dumps(wire.anthropic_message(SONNET, anthropic_usage)).encode()
    )
    with usage.track_usage(**f, operation="anthropic") as call:
        call.response(client.messages.create(model=SONNET, **wire.ANTHROPIC_ASK))

    numbers = wire.responses_usage(50_000, 2000, 40_000, 1500)
    client = wire.openai_client(
        wire.sse(wire.response_events("gpt-5-2025-08-07", numbers)), wire.SSE
    )
    events = client.responses.create(model="gpt-5", input="Hi", stream=True)
    for _ in usage.track_stream(events, **f, operation="openai"):
        pass

    @usage.track(**f, operation="google")
    async def ask_gemini() -> Any:
        body = wire.gemini_response("gemini-2.5-flash", wire.gemini_usage(10_000, 500, 6000, 300))
        client = wire.gemini_client(json.dumps(body).encode(), aio=True)
        return await client.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi")

    asyncio.run(ask_gemini())

    bedrock_usage = {"inputTokens": 1000, "outputTokens": 300, "totalTokens": 10_300}
    bedrock_usage |= {"cacheReadInputTokens": 8000, "cacheWriteInputTokens": 1000}
    with usage.track_usage(**f, operation="aws", model=BEDROCK) as call:
        call.response(wire.converse(bedrock_usage, BEDROCK))

    wait_for(lambda: count_rows(db) == 4, 30, what="four rows written by the worker")
    with db.connect() as conn:
        ids = [str(i) for i in conn.execute(text("SELECT id FROM ai_usage_logs")).scalars()]
    by_operation = {r["operation"]: r for r in rows(db, ids)}
    assert {op: r["provider"] for op, r in by_operation.items()} == {
        "anthropic": "anthropic",
        "openai": "openai",
        "google": "google",
        "aws": "aws",
    }
    check(
        by_operation["anthropic"],
        {"input_tokens": 250_000, "cache_read_tokens": 230_000, "output_tokens": 1000},
    )
    check(
        by_operation["openai"],
        {"input_tokens": 50_000, "cache_read_tokens": 40_000, "output_tokens": 2000}
        | {"output_reasoning_tokens": 1500},
    )
    check(
        by_operation["google"],
        {"input_tokens": 10_000, "cache_read_tokens": 6000, "output_tokens": 800}
        | {
            "output_reasoning_tokens": 300,
            "input_text_tokens": 10_000,
            "cache_text_read_tokens": 6000,
        },
    )
    check(
        by_operation["aws"],
        {"input_tokens": 10_000, "cache_read_tokens": 8000, "cache_write_tokens": 1000}
        | {"output_tokens": 300},
    )


def test_cache_fields_sent_by_plain_send_task_land_priced(
    db: Engine, tenant: uuid.UUID, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker()
    producer = Celery("another-service", broker=redis_url, set_as_current=False)
    now = dt.datetime.now(dt.UTC).isoformat()
    base = {"tenant_id": str(tenant), "operation": "by-name", "created_at": now}
    single = base | {
        "id": str(uuid.uuid4()),
        "model": "claude-opus-4-1-20250805",
        "provider": "anthropic",
        "input_tokens": 8000,
        "output_tokens": 400,
        "cache_write_tokens": 6000,
        "usage_details": {"cache_write_1h_tokens": 6000},
    }
    batched = base | {
        "id": str(uuid.uuid4()),
        "model": "gpt-4.1-2025-04-14",
        "input_tokens": 50_000,
        "output_tokens": 2000,
        "cache_read_tokens": 40_000,
    }
    producer.send_task("ai_usage.record", kwargs=single, queue="ai_usage", serializer="json")
    producer.send_task(
        "ai_usage.record_batch", args=[[batched]], queue="ai_usage", serializer="json"
    )
    producer.close()
    one, two = stored(db, [str(single["id"]), str(batched["id"])])
    check(
        one,
        {"input_tokens": 8000, "cache_write_tokens": 6000, "output_tokens": 400}
        | {"cache_write_1h_tokens": 6000},
    )
    check(two, {"input_tokens": 50_000, "cache_read_tokens": 40_000, "output_tokens": 2000})
