"""What a tracked SDK call became in ai_usage_logs, and what genai-prices says it costs.

The expected usage of each case is written by hand in genai-prices' convention (input counts
the cache too), from the wire numbers; the truth is genai-prices' `calc_price` of that usage
at the row's own `created_at`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from sqlalchemy import Engine, text

from worker.client import UsageClient
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer

TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


class Recorder:
    """A sync-mode UsageClient whose published events are kept (as the worker receives them)."""

    def __init__(self, tenant: uuid.UUID) -> None:
        self.tenant = str(tenant)
        self.events: list[dict[str, Any]] = []
        self.client = UsageClient(
            mode="sync", publisher=lambda task, args, kwargs: self.events.append(kwargs)
        )

    def fields(self, **over: Any) -> dict[str, Any]:
        return {"tenant_id": self.tenant, "operation": "sdk-test", **over}

    def take(self) -> list[dict[str, Any]]:
        taken, self.events = self.events, []
        return taken


def rows(db: Engine, ids: list[str]) -> list[dict[str, Any]]:
    with db.connect() as conn:
        found = conn.execute(
            text(
                "SELECT id::text, operation, model, provider, input_tokens, output_tokens, cache_read_tokens,"
                " cache_write_tokens, usage_details, cost_usd, success, created_at"
                " FROM ai_usage_logs WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids},
        )
        by_id = {r.id: dict(r._mapping) for r in found}
    return [by_id[i] for i in ids]


def land(db: Engine, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write `events` with the worker's own writer and pricing; their rows, in order."""
    result = write_batch(db, events, Pricer())
    assert result.inserted == len(events), result
    return rows(db, [e["id"] for e in events])


def truth(row: dict[str, Any], usage: dict[str, int]) -> float:
    price = calc_price(
        Usage(**usage),
        row["model"],
        provider_id=row["provider"],
        genai_request_timestamp=row["created_at"],
    )
    return float(price.total_price)


def check(row: dict[str, Any], usage: dict[str, int], success: str = "success") -> float:
    """Assert the row holds `usage` (genai-prices keys) and costs what genai-prices says."""
    assert {k: row[k] for k in TOKENS} == {k: usage.get(k, 0) for k in TOKENS}
    details = {k: v for k, v in usage.items() if k not in TOKENS} or None
    assert row["usage_details"] == details
    assert row["success"] == success
    expected = truth(row, usage)
    assert expected > 0, "a case must have a price, or it proves nothing"
    assert row["cost_usd"] == pytest.approx(expected, abs=1e-9, rel=0)
    return expected


def client_warnings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Callable[[str], list[str]]:
    """Forget which warnings the client already gave (it gives each once per process); the
    returned function lists the messages logged since that contain a text."""
    monkeypatch.setattr("worker.client.tracker._warned", set())
    caplog.clear()
    return lambda part: [r.getMessage() for r in caplog.records if part in r.getMessage()]
