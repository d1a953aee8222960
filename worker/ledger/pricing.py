"""Prices an event at the price in force when its AI call happened, from its full usage.

Sources, in order:
1. Operator overrides: a JSON file named by AI_USAGE_PRICE_OVERRIDES (see README, Pricing),
   per model (optionally per provider) with an effective-from date.
2. genai-prices' bundled snapshot (never its network updater).
An unknown model prices to None (stored as NULL, counted and logged), never to 0.

Usage follows genai-prices' convention: `input_tokens` counts every input token, cached or
not; cache reads and writes (and the 5m / 1h split of writes) are parts of it, priced at their
own rates; long-context tiers are chosen on the whole prompt.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from worker.client.errors import ConfigError

log = logging.getLogger(__name__)

_MTOK = Decimal(1_000_000)

#: Usage keys the fast path prices by itself; any other usage_details key is priced by
#: genai-prices' own calculation (slower, and rare).
FAST_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
)
#: For each fast key, the keys it is a part of (genai-prices' unit hierarchy): a probe of its
#: price must hold those at least as large as itself.
_ANCESTORS: dict[str, tuple[str, ...]] = {
    "input_tokens": (),
    "output_tokens": (),
    "cache_read_tokens": ("input_tokens",),
    "cache_write_tokens": ("input_tokens",),
    "cache_write_5m_tokens": ("input_tokens", "cache_write_tokens"),
    "cache_write_1h_tokens": ("input_tokens", "cache_write_tokens"),
}
_FAST_DETAILS = frozenset(FAST_KEYS[4:])


class PricingError(ValueError):
    """Raised when genai-prices refuses an event's usage (an impossible combination of usage
    details, say); the message is genai-prices' own, `field` names the event field."""

    def __init__(self, message: str, field: str = "usage_details") -> None:
        super().__init__(message)
        self.field = field


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 1 us an event here
class Usage:
    """What one AI call used, in genai-prices' convention (input_tokens includes the cache)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    #: Further genai-prices usage keys (cache_write_1h_tokens, input_audio_tokens,
    #: web_searches, ...), as the event's usage_details carries them.
    details: Mapping[str, int | float] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """True when the call reported no usage at all."""
        return not (
            self.input_tokens
            or self.output_tokens
            or self.cache_read_tokens
            or self.cache_write_tokens
            or any(self.details.values())
        )

    def values(self) -> dict[str, int | float]:
        """Every non-zero usage value by genai-prices usage key."""
        out: dict[str, int | float] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }
        out.update(self.details)
        return {k: v for k, v in out.items() if v}


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
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        details: Mapping[str, int | float] | None = None,
    ) -> float | None:
        """USD cost of the call, or None when no price is known for the model."""
        usage = Usage(
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, details or {}
        )
        cost = self.price_usage(model, provider, usage, at)
        return None if cost is None else float(cost)

    def price_decimal(
        self,
        model: str,
        provider: str | None,
        input_tokens: int,
        output_tokens: int,
        at: dt.datetime,
    ) -> Decimal | None:
        """Exact USD cost of a call with input and output tokens only."""
        return self.price_usage(model, provider, Usage(input_tokens, output_tokens), at)

    def price_usage(
        self, model: str, provider: str | None, usage: Usage, at: dt.datetime
    ) -> Decimal | None:
        """Exact USD cost of `usage`, or None when no price is known for the model. Raises
        PricingError when genai-prices refuses the usage details."""
        ref = model.lower()
        prov = provider.lower() if provider else None
        for o in self.overrides:
            if (
                o.model == ref
                and (o.provider is None or o.provider == prov)
                and (o.effective_from <= at)
            ):
                return o.cost(usage)
        info = find_model(ref, prov)
        if info is None:
            return None
        model_price = info.get_prices(at)
        shape = _shape(model_price)
        if shape.covers(usage.details):
            return shape.price(usage)
        return _calc(model_price, usage.values())

    def is_known(self, model: str, provider: str | None) -> bool:
        """Whether any price source knows `model`."""
        ref = model.lower()
        if any(o.model == ref for o in self.overrides):
            return True
        return find_model(ref, provider.lower() if provider else None) is not None


#: Bedrock model ids (`anthropic.claude-...-v1:0`, with an optional cross-region prefix such as
#: `us.` or `global.`, or an inference-profile ARN): genai-prices finds them only under the
#: `aws` provider, and its own provider guess from the model name alone fails on them.
_BEDROCK_ID = re.compile(
    r"^(?:[a-z]{2,6}\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|writer|qwen|openai|twelvelabs)\."
)


def provider_candidates(model_ref: str, provider: str | None) -> tuple[str | None, ...]:
    """The provider ids to try for a model, most likely first (None: genai-prices' guess)."""
    guess: tuple[str | None, ...] = ("aws", None) if _BEDROCK_ID.match(model_ref) else (None,)
    if provider and provider not in guess:
        return (provider, *guess)
    return guess


@functools.lru_cache(maxsize=4096)
def find_model(model_ref: str, provider: str | None) -> Any:
    """genai-prices' model for a (lower-case) model ref and provider hint, or None."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    # An inference-profile ARN ends in the model id it runs.
    ref = model_ref.rsplit("/", 1)[-1] if model_ref.startswith("arn:aws") else model_ref
    for prov in provider_candidates(ref, provider):
        try:
            _, info = snapshot.find_provider_model(ref, None, prov, None)
            return info
        except LookupError:
            continue
    return None


@functools.cache
def usage_keys() -> frozenset[str]:
    """Every usage key genai-prices prices (its unit registry's reported keys)."""
    # data_units is genai-prices' generated unit table; `requests` is counted by genai-prices
    # itself (one per call), never reported.
    from genai_prices.data_units import unit_data

    return frozenset(unit_data) - {"requests"}


def _calc(model_price: Any, values: Mapping[str, int | float]) -> Decimal:
    """genai-prices' own calculation of `values` under `model_price`."""
    from genai_prices import Usage as GenaiUsage

    try:
        result = model_price.calc_price(GenaiUsage(**values))
    except ValueError as exc:
        raise PricingError(str(exc)) from None
    return Decimal(result["total_price"])


class _Shape:
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
            at_lo = _calc(model_price, {"input_tokens": lo})
            coefficients = tuple(self._slope(key, lo, at_lo) for key in FAST_KEYS)
            self.segments.append((lo, at_lo, coefficients))

    def _slope(self, key: str, lo: int, at_lo: Decimal) -> Decimal:
        """The price of one more unit of `key`, probed where it is valid: a part of the
        prompt (a cache read, say) needs a prompt that holds it."""
        mp = self.model_price
        if key == "input_tokens":
            return _calc(mp, {"input_tokens": lo + 1}) - at_lo
        if key == "output_tokens":
            return _calc(mp, {"input_tokens": lo, "output_tokens": 1}) - at_lo
        base: dict[str, int | float] = {"input_tokens": lo + 1}
        base.update(dict.fromkeys(_ANCESTORS[key][1:], 1))
        return _calc(mp, {**base, key: 1}) - _calc(mp, base)

    def covers(self, details: Mapping[str, int | float]) -> bool:
        """Whether the fast path prices these usage details exactly: each is a 5m / 1h cache
        write split, or a dimension this price does not price at all (genai-prices decomposes
        usage over priced units only, so such a value changes nothing: Gemini's
        input_text_tokens, reasoning tokens on most models)."""
        for key in details:
            if key in _FAST_DETAILS:
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
            return _calc(self.model_price, usage.values())
        lo, at_lo, (c_in, c_out, c_read, c_write, c_5m, c_1h) = segment
        cost = (
            at_lo
            + c_in * (usage.input_tokens - lo)
            + c_out * usage.output_tokens
            + c_read * usage.cache_read_tokens
            + c_write * usage.cache_write_tokens
        )
        if usage.details:
            # Token counts: integers (the contract refuses fractional tokens).
            cost += c_5m * int(usage.details.get("cache_write_5m_tokens", 0))
            cost += c_1h * int(usage.details.get("cache_write_1h_tokens", 0))
        return cost


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
