"""Pricing: the price in force at the call's time, overrides first, unknown models None."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price, data_snapshot

from worker.client.errors import ConfigError
from worker.ledger.pricing import Pricer, load_overrides

UTC = dt.UTC


def test_o3_price_change_on_2025_06_10() -> None:
    p = Pricer()
    before = dt.datetime(2025, 6, 9, 23, 59, tzinfo=UTC)
    after = dt.datetime(2025, 6, 10, 0, 1, tzinfo=UTC)
    usage = Usage(input_tokens=1000, output_tokens=2000)
    expect_before = calc_price(usage, "o3", genai_request_timestamp=before).total_price
    expect_after = calc_price(usage, "o3", genai_request_timestamp=after).total_price
    assert expect_before != expect_after
    assert p.price_decimal("o3", None, 1000, 2000, before) == expect_before
    assert p.price_decimal("o3", None, 1000, 2000, after) == expect_after
    # $10/$40 per MTok before, $2/$8 after.
    assert expect_before == Decimal("0.09") and expect_after == Decimal("0.018")


def test_unknown_model_is_none_never_zero() -> None:
    assert Pricer().price("in-house-llm-v1", None, 1000, 1000, dt.datetime.now(UTC)) is None
    assert not Pricer().is_known("in-house-llm-v1", None)


def test_unknown_provider_hint_falls_back_to_model() -> None:
    now = dt.datetime.now(UTC)
    assert Pricer().price("gpt-4o", "no-such-provider", 10, 10, now) == Pricer().price(
        "gpt-4o", None, 10, 10, now
    )


def _usages(rng: random.Random, model_price: object) -> list[dict[str, int]]:
    """Usage vectors on, and on either side of, every tier threshold, with random cache reads,
    cache writes and 5m / 1h write splits inside the prompt."""
    from worker.ledger.priceshape import shape as _shape

    prompts = [0, 1, rng.randint(0, 300_000)]
    for bound in _shape(model_price).bounds:
        prompts += [bound + d for d in (-1, 0, 1, 2) if bound + d >= 0]
        prompts.append(bound + rng.randint(3, 2_000_000))
    out = []
    for n in prompts:
        read = rng.choice((0, rng.randint(0, n)))
        write = rng.choice((0, rng.randint(0, n - read)))
        one_hour = rng.choice((0, rng.randint(0, write)))
        five_min = rng.choice((0, rng.randint(0, write - one_hour)))
        out.append(
            {
                "input_tokens": n,
                "output_tokens": rng.randint(0, 50_000),
                "cache_read_tokens": read,
                "cache_write_tokens": write,
                "cache_write_1h_tokens": one_hour,
                "cache_write_5m_tokens": five_min,
            }
        )
    return out


def test_fast_path_equals_genai_prices_for_every_model() -> None:
    """The piecewise-linear shortcut must give exactly genai-prices' own result for the full
    usage (cache reads, cache writes, the 5m / 1h write split), tiered prices included, on and
    around every tier threshold, for every model of the snapshot."""
    from worker.ledger.priceshape import shape as _shape
    from worker.ledger.pricing import Usage as FullUsage

    snapshot = data_snapshot.get_snapshot()
    rng = random.Random(7)
    checked = tiered = cached = 0
    for when in (dt.datetime(2025, 3, 1, tzinfo=UTC), dt.datetime(2026, 9, 1, tzinfo=UTC)):
        for provider in snapshot.providers:
            for model in provider.models:
                mp = model.get_prices(when)
                compared = 0
                for values in _usages(rng, mp):
                    try:
                        expected = model.calc_price(
                            Usage(**values), provider, genai_request_timestamp=when
                        ).total_price
                    except Exception:
                        continue
                    usage = FullUsage(
                        values["input_tokens"],
                        values["output_tokens"],
                        values["cache_read_tokens"],
                        values["cache_write_tokens"],
                        {k: values[k] for k in ("cache_write_1h_tokens", "cache_write_5m_tokens")},
                    )
                    assert _shape(mp).price(usage) == expected, (provider.id, model.id, values)
                    compared += 1
                    cached += bool(values["cache_read_tokens"] and mp.cache_read_mtok)
                checked += compared
                tiered += bool(compared and _shape(mp).bounds)  # a tiered price, compared
    assert checked > 5000 and tiered > 20 and cached > 1000, (checked, tiered, cached)


def write_overrides(tmp_path: Path, entries: list[dict[str, object]]) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(entries))
    return str(path)


def test_overrides_come_first_by_effective_date(tmp_path: Path) -> None:
    path = write_overrides(
        tmp_path,
        [
            {
                "model": "in-house-llm-v1",
                "effective_from": "2025-01-01",
                "input_per_mtok": 1,
                "output_per_mtok": 2,
            },
            {
                "model": "in-house-llm-v1",
                "effective_from": "2025-07-01T00:00:00Z",
                "input_per_mtok": "0.5",
                "output_per_mtok": 1,
            },
            {
                "model": "gpt-4o",
                "provider": "azure",
                "effective_from": "2024-01-01",
                "input_per_mtok": 100,
                "output_per_mtok": 100,
            },
        ],
    )
    p = Pricer(load_overrides(path))
    assert (
        p.price(
            "in-house-llm-v1", None, 1_000_000, 1_000_000, dt.datetime(2024, 12, 31, tzinfo=UTC)
        )
        is None
    )
    assert (
        p.price("in-house-llm-v1", None, 1_000_000, 1_000_000, dt.datetime(2025, 3, 1, tzinfo=UTC))
        == 3.0
    )
    assert (
        p.price("In-House-LLM-v1", None, 1_000_000, 1_000_000, dt.datetime(2025, 7, 2, tzinfo=UTC))
        == 1.5
    )
    when = dt.datetime(2025, 3, 1, tzinfo=UTC)
    assert p.price("gpt-4o", "azure", 1_000_000, 0, when) == 100.0
    assert p.price("gpt-4o", "openai", 1_000_000, 0, when) == Pricer().price(
        "gpt-4o", "openai", 1_000_000, 0, when
    )


def test_malformed_overrides_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^AI_USAGE_PRICE_OVERRIDES: entry 0"):
        load_overrides(write_overrides(tmp_path, [{"model": "x"}]))
    with pytest.raises(ConfigError, match="^AI_USAGE_PRICE_OVERRIDES: cannot read"):
        load_overrides(str(tmp_path / "missing.json"))


def test_unpriced_usage_details_keep_the_fast_path_and_its_result() -> None:
    """Details a price does not price (Gemini's modality counts, reasoning tokens on most
    models) change nothing in genai-prices' result; the fast path then gives that same result
    without genai-prices' 300 us calculation. A priced detail goes to genai-prices."""
    from worker.ledger.priceshape import shape as _shape
    from worker.ledger.pricing import Usage as FullUsage
    from worker.ledger.pricing import find_model

    when = dt.datetime(2026, 9, 1, tzinfo=UTC)
    details = {
        "input_text_tokens": 900,
        "cache_text_read_tokens": 400,
        "output_reasoning_tokens": 50,
    }
    usage = FullUsage(1_000, 200, 400, 0, details)
    for model in ("gemini-2.5-flash", "gpt-5", "claude-sonnet-4-5"):
        mp = find_model(model, None).get_prices(when)
        shape = _shape(mp)
        assert shape.covers(details), model
        expected = calc_price(
            Usage(input_tokens=1_000, output_tokens=200, cache_read_tokens=400, **details),
            model, genai_request_timestamp=when,
        ).total_price  # fmt: skip
        assert Pricer().price_usage(model, None, usage, when) == expected == shape.price(usage)
    audio = find_model("gemini-2.5-flash", None).get_prices(when)  # prices audio input
    assert not _shape(audio).covers({"input_audio_tokens": 10})


def test_the_model_cache_is_bounded_and_a_flood_changes_no_price() -> None:
    # Model names come from producers: a flood of distinct names must not grow the worker's
    # memory without bound, and must not change what a known model costs before and after.
    from worker.ledger.pricing import _MODELS_KEPT

    p = Pricer()
    before = {
        m: p.price(m, None, 12_345, 678, dt.datetime(2025, 7, 1, tzinfo=UTC), cache_read_tokens=45)
        for m in ("gpt-4o", "claude-3-5-sonnet-20241022", "o3")
    }
    assert all(v is not None for v in before.values())
    for i in range(_MODELS_KEPT * 2 + 7):
        assert p.price(f"in-house-{i}", None, 10, 10, dt.datetime.now(UTC)) is None
        assert len(p._models) <= _MODELS_KEPT
    after = {
        m: p.price(m, None, 12_345, 678, dt.datetime(2025, 7, 1, tzinfo=UTC), cache_read_tokens=45)
        for m in before
    }
    assert after == before
