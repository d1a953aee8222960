"""The pricing fast path: a genai-prices price read once as an affine function of the usage
between its tier thresholds, then evaluated in exact Decimal arithmetic."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from worker.ledger.usage import ANCESTORS, FAST_DETAILS, FAST_KEYS, PricingError, Usage


def calc(model_price: Any, values: Mapping[str, int | float]) -> Decimal:
    """genai-prices' own calculation of `values` under `model_price`."""
    from genai_prices import Usage as GenaiUsage

    try:
        result = model_price.calc_price(GenaiUsage(**values))
    except ValueError as exc:
        raise PricingError(str(exc)) from None
    return Decimal(result["total_price"])


class Shape:
    """A price as a function of the usage, read off genai-prices once per price.

    genai-prices' own calculation costs 200-330 us a call, most of a worker's time per event.
    Its result is affine in the usage values between the tier thresholds (a tier applies its
    rate to every token once the whole prompt exceeds its start; cache reads and writes are
    parts of input_tokens with rates of their own), so each segment's coefficients are derived
    from genai-prices itself, one unit apart, and the rest is exact Decimal arithmetic."""

    def __init__(self, model_price: Any) -> None:
        from genai_prices.types import TieredPrices

        self.model_price = model_price
        self._priced: dict[str, bool] = {}
        self.bounds = sorted(
            {
                tier.start
                for value in vars(model_price).values()
                if isinstance(value, TieredPrices)
                for tier in value.tiers
            }
        )
        # Segment i holds the input counts n with bounds[i-1] < n <= bounds[i]; its price is
        # at_lo + c_in * (n - lo) + the sum of each other key's coefficient times its count.
        self.segments: list[tuple[int, Decimal, tuple[Decimal, ...]] | None] = []
        for i in range(len(self.bounds) + 1):
            lo = self.bounds[i - 1] + 1 if i else 0
            if i < len(self.bounds) and self.bounds[i] < lo + 1:
                self.segments.append(None)  # too narrow to read a slope in: calculated
                continue
            at_lo = calc(model_price, {"input_tokens": lo})
            coefficients = tuple(self._slope(key, lo, at_lo) for key in FAST_KEYS)
            self.segments.append((lo, at_lo, coefficients))

    def _slope(self, key: str, lo: int, at_lo: Decimal) -> Decimal:
        """The price of one more unit of `key`, probed where it is valid: a part of the
        prompt (a cache read, say) needs a prompt that holds it."""
        mp = self.model_price
        if key == "input_tokens":
            return calc(mp, {"input_tokens": lo + 1}) - at_lo
        if key == "output_tokens":
            return calc(mp, {"input_tokens": lo, "output_tokens": 1}) - at_lo
        base: dict[str, int | float] = {"input_tokens": lo + 1}
        base.update(dict.fromkeys(ANCESTORS[key][1:], 1))
        return calc(mp, {**base, key: 1}) - calc(mp, base)

    def covers(self, details: Mapping[str, int | float]) -> bool:
        """Whether the fast path prices these usage details exactly: each is a 5m / 1h cache
        write split, or a dimension this price does not price at all (genai-prices decomposes
        usage over priced units only, so such a value changes nothing: Gemini's
        input_text_tokens, reasoning tokens on most models)."""
        for key in details:
            if key in FAST_DETAILS:
                continue
            priced = self._priced.get(key)
            if priced is None:
                from genai_prices.data_units import unit_data

                unit = unit_data.get(key)
                price_key = unit["price_key"] if unit else None
                priced = self._priced[key] = (
                    price_key is None or getattr(self.model_price, price_key, None) is not None
                )
            if priced:
                return False
        return True

    def price(self, usage: Usage) -> Decimal:
        segment = self.segments[bisect.bisect_left(self.bounds, usage.input_tokens)]
        if segment is None:
            return calc(self.model_price, usage.values())
        lo, at_lo, (c_in, c_out, c_read, c_write, c_5m, c_1h) = segment
        cost = at_lo + c_in * (usage.input_tokens - lo) + c_out * usage.output_tokens
        # Terms of zero are left out (most calls read or write no cache): adding an exact zero
        # changes no value, and each Decimal product costs about 0.1 us.
        if usage.cache_read_tokens:
            cost += c_read * usage.cache_read_tokens
        if usage.cache_write_tokens:
            cost += c_write * usage.cache_write_tokens
        if usage.details:
            # Token counts: integers (the contract refuses fractional tokens).
            cost += c_5m * int(usage.details.get("cache_write_5m_tokens", 0))
            cost += c_1h * int(usage.details.get("cache_write_1h_tokens", 0))
        return cost


_SHAPES: dict[int, Shape] = {}


def shape(model_price: Any) -> Shape:
    """The fast path of `model_price`, made once per price object."""
    found = _SHAPES.get(id(model_price))
    if found is None or found.model_price is not model_price:
        found = _SHAPES[id(model_price)] = Shape(model_price)
    return found
