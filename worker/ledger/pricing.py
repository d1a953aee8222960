"""Prices an event at the price in force when its AI call happened.

Sources, in order:
1. Operator overrides: a JSON file named by AI_USAGE_PRICE_OVERRIDES (see README, Pricing),
   per model (optionally per provider) with an effective-from date.
2. genai-prices' bundled snapshot (never its network updater).
An unknown model prices to None (stored as NULL, counted and logged), never to 0.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from worker.client.errors import ConfigError

log = logging.getLogger(__name__)

_MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class PriceOverride:
    """An operator's price for `model` (and `provider`, if set) from `effective_from` on."""

    model: str
    effective_from: dt.datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    provider: str | None = None


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
                )
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(
                f"AI_USAGE_PRICE_OVERRIDES: entry {i} is malformed: {exc!r}"
            ) from None
    # Latest first, so the first match is the price in force.
    out.sort(key=lambda o: o.effective_from, reverse=True)
    return tuple(out)


class Pricer:
    """Prices usage; one per process (it caches model lookups)."""

    def __init__(self, overrides: Sequence[PriceOverride] = ()) -> None:
        self.overrides = tuple(overrides)

    def price(
        self,
        model: str,
        provider: str | None,
        input_tokens: int,
        output_tokens: int,
        at: dt.datetime,
    ) -> float | None:
        """USD cost of the call, or None when no price is known for the model."""
        cost = self.price_decimal(model, provider, input_tokens, output_tokens, at)
        return None if cost is None else float(cost)

    def price_decimal(
        self,
        model: str,
        provider: str | None,
        input_tokens: int,
        output_tokens: int,
        at: dt.datetime,
    ) -> Decimal | None:
        ref = model.lower()
        prov = provider.lower() if provider else None
        for o in self.overrides:
            if (
                o.model == ref
                and (o.provider is None or o.provider == prov)
                and (o.effective_from <= at)
            ):
                return (o.input_per_mtok * input_tokens + o.output_per_mtok * output_tokens) / _MTOK
        info = _find_model(ref, prov)
        if info is None:
            return None
        return _shape(info.get_prices(at)).price(input_tokens, output_tokens)

    def is_known(self, model: str, provider: str | None) -> bool:
        """Whether any price source knows `model`."""
        ref = model.lower()
        if any(o.model == ref for o in self.overrides):
            return True
        return _find_model(ref, provider.lower() if provider else None) is not None


@functools.lru_cache(maxsize=4096)
def _find_model(model_ref: str, provider: str | None) -> Any:
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    for prov in (provider, None) if provider else (None,):
        try:
            _, info = snapshot.find_provider_model(model_ref, None, prov, None)
            return info
        except LookupError:
            continue
    return None


def _calc(model_price: Any, input_tokens: int, output_tokens: int) -> Decimal:
    from genai_prices import Usage

    result = model_price.calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens))
    return Decimal(result["total_price"])


class _Shape:
    """A price as a function of the token counts, read off genai-prices once per price.

    genai-prices' own calculation costs 200-330 us a call, most of a worker's time per event.
    Its result is linear in the counts between the tier thresholds (a tier applies its rate to
    all tokens once the input exceeds its start), so each segment's coefficients are derived
    from genai-prices itself, one token apart, and the rest is exact Decimal arithmetic."""

    def __init__(self, model_price: Any) -> None:
        from genai_prices.types import TieredPrices

        self.model_price = model_price
        self.bounds = sorted(
            {
                tier.start
                for value in vars(model_price).values()
                if isinstance(value, TieredPrices)
                for tier in value.tiers
            }
        )
        # Segment i holds the input counts n with bounds[i-1] < n <= bounds[i].
        self.segments: list[tuple[Decimal, Decimal, Decimal] | None] = []
        for i in range(len(self.bounds) + 1):
            lo = self.bounds[i - 1] + 1 if i else 0
            if i < len(self.bounds) and self.bounds[i] < lo + 1:
                self.segments.append(None)  # too narrow to read a slope in: calculated
                continue
            at_lo = _calc(model_price, lo, 0)
            per_in = _calc(model_price, lo + 1, 0) - at_lo
            per_out = _calc(model_price, lo, 1) - at_lo
            self.segments.append((at_lo - per_in * lo, per_in, per_out))

    def price(self, input_tokens: int, output_tokens: int) -> Decimal:
        segment = self.segments[bisect.bisect_left(self.bounds, input_tokens)]
        if segment is None:
            return _calc(self.model_price, input_tokens, output_tokens)
        base, per_in, per_out = segment
        return base + per_in * input_tokens + per_out * output_tokens


_shapes: dict[int, _Shape] = {}


def _shape(model_price: Any) -> _Shape:
    shape = _shapes.get(id(model_price))
    if shape is None or shape.model_price is not model_price:
        shape = _shapes[id(model_price)] = _Shape(model_price)
    return shape


@functools.cache
def default_pricer() -> Pricer:
    """This process's pricer, with the overrides file from the settings."""
    from worker.settings import get_settings

    return Pricer(load_overrides(get_settings().price_overrides_file))
