"""Prices an event at the price in force when its AI call happened, from its full usage.

Sources, in order:
1. Operator overrides: a JSON file named by AI_USAGE_PRICE_OVERRIDES (docs/ledger/pricing.md),
   per model (optionally per provider) with an effective-from date.
2. genai-prices' bundled snapshot (never its network updater).
An unknown model prices to None (stored as NULL, counted and logged), never to 0.

Usage follows genai-prices' convention: `input_tokens` counts every input token, cached or
not; cache reads and writes (and the 5m / 1h split of writes) are parts of it, priced at their
own rates; long-context tiers are chosen on the whole prompt.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from worker.ledger.overrides import PriceOverride, load_overrides
from worker.ledger.priceshape import Shape, calc, shape
from worker.ledger.usage import PricingError, Usage

__all__ = [
    "PriceOverride",
    "Pricer",
    "PricingError",
    "Usage",
    "default_pricer",
    "find_model",
    "load_overrides",
    "provider_candidates",
    "usage_keys",
]


_MODELS_KEPT = 4096


class Pricer:
    """Prices usage; one per process (it caches model lookups)."""

    def __init__(self, overrides: Sequence[PriceOverride] = ()) -> None:
        self.overrides = tuple(overrides)
        # genai-prices' model by (model, provider) as events name them (None: unknown), with
        # its Shape when its price never changes with the date. The worker prices every event
        # here: a dict hit is cheaper than lower(), the lru_cache and get_prices().
        self._models: dict[tuple[str, str | None], tuple[Any, Shape | None] | None] = {}

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
        if self.overrides:
            ref = model.lower()
            prov = provider.lower() if provider else None
            for o in self.overrides:
                if (
                    o.model == ref
                    and (o.provider is None or o.provider == prov)
                    and (o.effective_from <= at)
                ):
                    return o.cost(usage)
        key = (model, provider)
        try:
            found = self._models[key]
        except KeyError:
            found = self._models[key] = _found(model, provider)
            if len(self._models) > _MODELS_KEPT:  # model names come from producers
                self._models.clear()
        if found is None:
            return None
        info, fixed = found
        fast = fixed if fixed is not None else shape(info.get_prices(at))
        if not usage.details or fast.covers(usage.details):
            return fast.price(usage)
        return calc(fast.model_price, usage.values())

    def is_known(self, model: str, provider: str | None) -> bool:
        """Whether any price source knows `model`."""
        ref = model.lower()
        if any(o.model == ref for o in self.overrides):
            return True
        return find_model(ref, provider.lower() if provider else None) is not None


def _found(model: str, provider: str | None) -> tuple[Any, Shape | None] | None:
    info = find_model(model.lower(), provider.lower() if provider else None)
    if info is None:
        return None
    from genai_prices.types import ModelPrice

    # One price for all dates (no conditional prices): its Shape can be kept with the model.
    return info, shape(info.prices) if isinstance(info.prices, ModelPrice) else None


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


@functools.cache
def default_pricer() -> Pricer:
    """This process's pricer, with the overrides file from the settings."""
    from worker.settings import get_settings

    return Pricer(load_overrides(get_settings().price_overrides_file))
