"""Operator price overrides (AI_USAGE_PRICE_OVERRIDES): a JSON list of prices per model,
optionally per provider, each from its effective-from date."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from worker.client.errors import ConfigError
from worker.ledger.usage import Usage

_MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class PriceOverride:
    """An operator's price for `model` (and `provider`, if set) from `effective_from` on.
    Cache rates are optional: without one, those tokens are billed at the input rate, as the
    part of input_tokens they are."""

    model: str
    effective_from: dt.datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    provider: str | None = None
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        """USD cost of `usage` at this price."""
        uncached = usage.input_tokens
        cost = Decimal(0)
        if self.cache_read_per_mtok is not None:
            uncached -= usage.cache_read_tokens
            cost += self.cache_read_per_mtok * usage.cache_read_tokens
        if self.cache_write_per_mtok is not None:
            uncached -= usage.cache_write_tokens
            cost += self.cache_write_per_mtok * usage.cache_write_tokens
        cost += self.input_per_mtok * uncached + self.output_per_mtok * usage.output_tokens
        return cost / _MTOK


def _optional_decimal(entry: Mapping[str, Any], key: str) -> Decimal | None:
    value = entry.get(key)
    return None if value is None else Decimal(str(value))


def load_overrides(path: str | None) -> tuple[PriceOverride, ...]:
    """Read the overrides file. A malformed file raises ConfigError naming the entry."""
    if not path:
        return ()
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"AI_USAGE_PRICE_OVERRIDES: cannot read {path}: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError("AI_USAGE_PRICE_OVERRIDES: expected a JSON list of price entries")
    out: list[PriceOverride] = []
    for i, entry in enumerate(raw):
        try:
            start = dt.datetime.fromisoformat(str(entry["effective_from"]))
            if start.tzinfo is None:
                start = start.replace(tzinfo=dt.UTC)
            out.append(
                PriceOverride(
                    model=str(entry["model"]).lower(),
                    provider=(str(entry["provider"]).lower() if entry.get("provider") else None),
                    effective_from=start,
                    input_per_mtok=Decimal(str(entry["input_per_mtok"])),
                    output_per_mtok=Decimal(str(entry["output_per_mtok"])),
                    cache_read_per_mtok=_optional_decimal(entry, "cache_read_per_mtok"),
                    cache_write_per_mtok=_optional_decimal(entry, "cache_write_per_mtok"),
                )
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(
                f"AI_USAGE_PRICE_OVERRIDES: entry {i} is malformed: {exc!r}"
            ) from None
    # Latest first, so the first match is the price in force.
    out.sort(key=lambda o: o.effective_from, reverse=True)
    return tuple(out)
