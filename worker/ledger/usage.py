"""What one AI call used, as pricing reads it, and the usage keys the fast path prices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
ANCESTORS: dict[str, tuple[str, ...]] = {
    "input_tokens": (),
    "output_tokens": (),
    "cache_read_tokens": ("input_tokens",),
    "cache_write_tokens": ("input_tokens",),
    "cache_write_5m_tokens": ("input_tokens", "cache_write_tokens"),
    "cache_write_1h_tokens": ("input_tokens", "cache_write_tokens"),
}
FAST_DETAILS = frozenset(FAST_KEYS[4:])


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
