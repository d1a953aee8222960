"""The full usage of a call on real PostgreSQL: cache tokens and usage details stored and
priced as genai-prices prices them, conflicting duplicates told from redeliveries, bad
references dead-lettered in one pass, and no zero-token row shown as free."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import uuid
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from sqlalchemy import Engine, text

from tests.conftest import count_rows, make_tenant
from tests.factories import event as factory
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer
from worker.ledger.reprice import reprice
from worker.ledger.rollups import run_rollup

WHEN = "2026-11-20T10:00:00Z"
AT = dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)


event = functools.partial(
    factory, operation="summarise", model="claude-sonnet-4-5", input_tokens=10_000,
    output_tokens=500, created_at=WHEN,
)  # fmt: skip


def stored(db: Engine, event_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT cost_usd, cache_read_tokens, cache_write_tokens, usage_details, provider,"
                " fingerprint IS NOT NULL AS fp FROM ai_usage_logs WHERE id = :id"
            ),
            {"id": event_id},
        ).one()
    return dict(row._mapping)


def truth(model: str, provider: str | None = None, **usage: int) -> float:
    return float(
        calc_price(
            Usage(**usage), model, provider_id=provider, genai_request_timestamp=AT
        ).total_price
    )


@pytest.mark.parametrize(
    "model,provider,usage",
    [
        # 90% of the prompt read from the cache.
        ("claude-sonnet-4-5", None, {"input_tokens": 10_000, "cache_read_tokens": 9_000}),
        # Cache writes, 5 minutes and 1 hour.
        (
            "claude-opus-4-1",
            None,
            {"input_tokens": 8_000, "cache_write_tokens": 6_000, "cache_write_1h_tokens": 6_000},
        ),
        (
            "claude-3-5-haiku-20241022",
            None,
            {"input_tokens": 8_000, "cache_write_tokens": 5_000, "cache_write_5m_tokens": 5_000},
        ),
        # OpenAI: half the prompt cached; gpt-5 and o4-mini at 80%.
        ("gpt-4o", None, {"input_tokens": 4_000, "cache_read_tokens": 2_000}),
        ("gpt-5", None, {"input_tokens": 50_000, "cache_read_tokens": 40_000}),
        ("o4-mini", None, {"input_tokens": 50_000, "cache_read_tokens": 40_000}),
        # Over the 200k long-context tier, decided on the whole prompt, cache included.
        ("claude-sonnet-4-5", None, {"input_tokens": 250_000, "cache_read_tokens": 230_000}),
        ("gemini-2.5-pro", None, {"input_tokens": 260_000, "cache_read_tokens": 100_000}),
        # A Bedrock model id, with and without the provider hint.
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", None, {"input_tokens": 3_000}),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws", {"input_tokens": 3_000}),
        # A dimension only genai-prices' own calculation prices.
        ("gpt-4o-audio-preview", None, {"input_tokens": 3_000, "input_audio_tokens": 1_000}),
    ],
)
def test_cost_is_genai_prices_for_the_full_usage(
    db: Engine, tenant: uuid.UUID, model: str, provider: str | None, usage: dict[str, int]
) -> None:
    fields = {k: v for k, v in usage.items() if k in ("input_tokens", "cache_read_tokens")}
    fields["cache_write_tokens"] = usage.get("cache_write_tokens", 0)
    details = {
        k: v for k, v in usage.items() if k not in fields and k != "cache_write_tokens"
    } or None
    e = event(tenant, model=model, provider=provider, usage_details=details, **fields)
    assert write_batch(db, [e], Pricer()).inserted == 1
    row = stored(db, e["id"])
    # The truth for a Bedrock id is genai-prices' aws price, which it finds only when told.
    bedrock = model.split(".")[-2:-1] == ["anthropic"] or model.startswith("anthropic.")
    expected = truth(model, provider or ("aws" if bedrock else None), output_tokens=500, **usage)
    assert expected > 0
    assert row["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert row["cache_read_tokens"] == usage.get("cache_read_tokens", 0)
    assert row["cache_write_tokens"] == usage.get("cache_write_tokens", 0)
    assert row["usage_details"] == details and row["provider"] == provider and row["fp"]


def test_input_tokens_must_hold_the_cache(db: Engine, tenant: uuid.UUID) -> None:
    # Anthropic's usage.input_tokens leaves the cache out; sent as is, it is refused.
    bad = event(tenant, input_tokens=100, cache_read_tokens=9_000)
    result = write_batch(db, [bad], Pricer())
    assert result.dead_lettered == 1 and count_rows(db) == 0
    with db.connect() as conn:
        field, error = conn.execute(text("SELECT field, error FROM ai_usage_dead_letters")).one()
    assert field == "input_tokens" and "counts every input token" in error


def test_an_unknown_usage_key_is_a_dead_letter_naming_it(db: Engine, tenant: uuid.UUID) -> None:
    bad = event(tenant, usage_details={"web_search_requests": 3})
    assert write_batch(db, [bad], Pricer()).dead_lettered == 1
    with db.connect() as conn:
        field, error = conn.execute(text("SELECT field, error FROM ai_usage_dead_letters")).one()
    assert field == "usage_details"
    assert "'web_search_requests' is not a usage key" in error and "web_searches" in error


def test_zero_usage_is_unpriced_never_free(db: Engine, tenant: uuid.UUID) -> None:
    empty_ok = event(tenant, input_tokens=0, output_tokens=0)
    empty_failed = event(tenant, input_tokens=0, output_tokens=0, success="failure")
    result = write_batch(db, [empty_ok, empty_failed], Pricer())
    assert result.inserted == 2 and result.unpriced == 1
    assert stored(db, empty_ok["id"])["cost_usd"] is None
    assert stored(db, empty_failed["id"])["cost_usd"] == 0.0
    # A reprice does not price it either.
    assert reprice(db, Pricer()).priced == 0
    assert stored(db, empty_ok["id"])["cost_usd"] is None


def test_reprice_uses_the_whole_usage_and_the_provider(db: Engine, tenant: uuid.UUID) -> None:
    usage = {"input_tokens": 20_000, "cache_read_tokens": 15_000, "cache_write_tokens": 2_000}
    e = event(
        tenant,
        model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        provider="aws",
        usage_details={"cache_write_1h_tokens": 2_000},
        **usage,
    )
    write_batch(db, [e], Pricer())
    with db.begin() as conn:
        conn.execute(text("UPDATE ai_usage_logs SET cost_usd = NULL"))
    assert reprice(db, Pricer()).priced == 1
    expected = truth(
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "aws",
        output_tokens=500,
        cache_write_1h_tokens=2_000,
        **usage,
    )
    assert stored(db, e["id"])["cost_usd"] == pytest.approx(expected, abs=1e-9)


def test_rollups_total_the_cache_tokens(db: Engine, tenant: uuid.UUID) -> None:
    events = [event(tenant, cache_read_tokens=1_000 * i, cache_write_tokens=i) for i in range(5)]
    write_batch(db, events, Pricer())
    run_rollup(db, [dt.date(2026, 11, 1)], wait=True)
    with db.connect() as conn:
        read, write, total = conn.execute(
            text(
                "SELECT total_cache_read_tokens, total_cache_write_tokens, total_tokens"
                " FROM ai_usage_monthly_rollups"
            )
        ).one()
    assert (read, write, total) == (10_000, 10, 5 * 10_500)


def dead_letters(db: Engine) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT event_id::text, field, error, payload FROM ai_usage_dead_letters")
            )
        ]


def test_a_conflicting_duplicate_is_a_dead_letter_and_the_row_is_unchanged(
    db: Engine, tenant: uuid.UUID
) -> None:
    other = make_tenant(db, "B")
    first = event(tenant)
    assert write_batch(db, [first], Pricer()).inserted == 1
    before = stored(db, first["id"])
    # A redelivery: silent, a plain duplicate.
    again = write_batch(db, [dict(first)], Pricer())
    assert (again.duplicates, again.conflicts, again.dead_lettered) == (1, 0, 0)
    # The same id with other tokens and another tenant: a conflict.
    changed = {**first, "tenant_id": str(other), "input_tokens": 99}
    result = write_batch(db, [changed], Pricer())
    assert (result.duplicates, result.conflicts, result.dead_lettered) == (0, 1, 1)
    assert stored(db, first["id"]) == before and count_rows(db) == 1
    ((event_id, field, error, payload),) = dead_letters(db)
    assert event_id == first["id"] and field == "id"
    assert error.startswith("conflicting duplicate")
    assert "input_tokens" in error and "tenant_id" in error
    assert json.loads(payload) == changed
    # Sent again, the conflict is the same dead letter (attempts 2), not a second one.
    write_batch(db, [changed], Pricer())
    assert count_rows(db, "ai_usage_dead_letters") == 1


def test_a_conflict_inside_one_batch_is_seen_too(db: Engine, tenant: uuid.UUID) -> None:
    first = event(tenant)
    result = write_batch(db, [first, dict(first), {**first, "output_tokens": 1}], Pricer())
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 1, 1)


def test_events_of_a_deleted_tenant_are_dead_lettered_in_one_pass(
    db: Engine, tenant: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    gone = make_tenant(db, "gone")
    with db.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": gone})
    batch = [event(gone) for _ in range(2_000)] + [event(tenant) for _ in range(10)]
    with caplog.at_level(logging.WARNING, logger="worker.ledger.ingest"):
        result = write_batch(db, batch, Pricer())
    assert (result.inserted, result.dead_lettered) == (10, 2_000)
    letters = dead_letters(db)
    assert len(letters) == 2_000
    assert {f for _, f, _, _ in letters} == {"tenant_id"}
    assert all('is not present in table "tenants"' in e for _, _, e, _ in letters)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "2000 events dead-lettered" in warnings[0].getMessage()


def test_a_producer_cost_is_part_of_the_fingerprint(db: Engine, tenant: uuid.UUID) -> None:
    e = event(tenant, cost_usd=0.5)
    write_batch(db, [e], Pricer())
    assert write_batch(db, [{**e, "cost_usd": 0.75}], Pricer()).conflicts == 1
    assert stored(db, e["id"])["cost_usd"] == 0.5


def test_overrides_price_cache_tokens_when_given(tmp_path: Any) -> None:
    from worker.ledger.pricing import PriceOverride, Usage

    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    plain = PriceOverride("m", start, Decimal(2), Decimal(8))
    cached = PriceOverride("m", start, Decimal(2), Decimal(8), None, Decimal("0.2"), Decimal(3))
    usage = Usage(1_000_000, 0, 600_000, 100_000)
    assert plain.cost(usage) == Decimal(2)  # cache billed as the input it is part of
    assert cached.cost(usage) == Decimal("0.6") + Decimal("0.12") + Decimal("0.3")
