"""What a reconciliation works with: measures, statuses, scope, the provider's figures and the
result rows; and its errors."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from worker.textsafe import cut

#: The providers whose usage and cost reports can be read.
PROVIDERS = ("anthropic", "openai")
Provider = Literal["anthropic", "openai"]

#: The measures compared per provider, in table order. Anthropic's usage report counts no
#: requests; OpenAI reports no 5m / 1h cache writes and no web searches in its completions usage.
MEASURES: dict[str, tuple[str, ...]] = {
    "anthropic": (
        "input_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "web_searches",
        "cost_usd",
    ),
    "openai": ("requests", "input_tokens", "cache_read_tokens", "output_tokens", "cost_usd"),
}
QUANTITIES = frozenset(m for ms in MEASURES.values() for m in ms if m != "cost_usd")

#: A verdict on one day, model and measure (see docs/reading/reconciliation.md).
Status = Literal[
    "match", "under_metered", "over_metered", "price_mismatch", "provisional", "not_covered"
]
#: The verdicts that make `ai-usage reconcile` exit 1 and `ai-usage check` warn.
DRIFT: frozenset[str] = frozenset({"under_metered", "over_metered", "price_mismatch"})

_DIMENSIONS = {
    "api_key_ids": ("api_key_id", "--api-key-id", ("anthropic", "openai")),
    "workspace_ids": ("workspace_id", "--workspace-id", ("anthropic",)),
    "project_ids": ("project_id", "--project-id", ("openai",)),
}


def printable(text: str, limit: int = 200) -> str:
    """`text` by the rule for untrusted text (worker.textsafe: controls, bidi and zero-width
    characters as escapes), cut to `limit` columns: a provider's message is shown to a human's
    terminal."""
    return cut(text, limit)


class ReconcileError(Exception):
    """Raised when a reconciliation cannot be done; the message names the setting or flag."""


class ConfigurationError(ReconcileError):
    """Raised for a missing admin key, a bad scope or range: nothing was fetched."""


class FetchError(ReconcileError):
    """Raised when the provider's report could not be read. `permanent` when retrying cannot
    help (a refused key, a malformed answer)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class DeadlineExceeded(FetchError):
    """Raised when the run's total fetch deadline expired (retries and waits included)."""


@dataclass(frozen=True)
class Scope:
    """The provider-side ids this application uses; empty: the whole organisation."""

    api_key_ids: tuple[str, ...] = ()
    workspace_ids: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.api_key_ids or self.workspace_ids or self.project_ids)

    def as_dict(self) -> dict[str, list[str]]:
        """The non-empty dimensions, as JSON output and the run table show them."""
        return {k: list(getattr(self, k)) for k in _DIMENSIONS if getattr(self, k)}

    def check(self, provider: str) -> None:
        """Raise ConfigurationError if a dimension does not exist at `provider`."""
        for name, (_, flag, providers) in _DIMENSIONS.items():
            if getattr(self, name) and provider not in providers:
                raise ConfigurationError(
                    f"{flag}: {provider} has no {name[:-1]}s ({flag} is for"
                    f" {' and '.join(providers)})"
                )


def parse_scope(text: str, provider: str) -> Scope:
    """AI_USAGE_RECONCILE_SCOPE: `[provider:]dimension=id` entries separated by commas, e.g.
    `anthropic:workspace_id=wrkspc_01,openai:project_id=proj_abc`. Entries for another
    provider are skipped; an unprefixed entry applies to every provider that has the
    dimension."""
    found: dict[str, list[str]] = defaultdict(list)
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        head, sep, value = entry.partition("=")
        target, _, dimension = head.rpartition(":")
        target, dimension, value = target.strip(), dimension.strip(), value.strip()
        name = dimension + "s"
        if not sep or not value or name not in _DIMENSIONS:
            raise ConfigurationError(
                f"AI_USAGE_RECONCILE_SCOPE: expected [provider:]api_key_id|workspace_id|"
                f"project_id=ID, got {entry!r}"
            )
        if target and target not in PROVIDERS:
            raise ConfigurationError(
                f"AI_USAGE_RECONCILE_SCOPE: unknown provider {target!r} in {entry!r}"
            )
        applies = _DIMENSIONS[name][2]
        if (target or provider) == provider and provider in applies:
            found[name].append(value)
    return Scope(**{k: tuple(v) for k, v in found.items()})


@dataclass
class RawResult:
    """One result row of a provider's daily bucket, as received."""

    report: str
    starting_at: dt.datetime
    ending_at: dt.datetime
    result: dict[str, Any]
    fetched_at: dt.datetime


@dataclass
class CostLine:
    """Reported cost that names no model we can match: declared, never compared."""

    day: dt.date
    label: str
    amount_usd: Decimal
    reason: str


@dataclass
class ProviderReport:
    """What a provider said over the range, by (UTC day, model as it names it)."""

    measures: dict[tuple[dt.date, str], dict[str, Decimal]] = field(default_factory=dict)
    cost_usd: dict[tuple[dt.date, str], Decimal] = field(default_factory=dict)
    #: Why the cost of a day and model cannot be compared (Priority Tier, say).
    cost_gaps: dict[tuple[dt.date, str], str] = field(default_factory=dict)
    #: Why no cost of this run can be compared (a scope the cost report cannot apply).
    cost_gap_all: str | None = None
    #: Web search cost by UTC day: both reports bill it on a line of its own, with no model.
    web_search_usd: dict[dt.date, Decimal] = field(default_factory=dict)
    unattributed: list[CostLine] = field(default_factory=list)
    raw: list[RawResult] = field(default_factory=list)

    def add(self, day: dt.date, model: str, values: dict[str, int | Decimal]) -> None:
        into = self.measures.setdefault((day, model), {})
        for key, value in values.items():
            into[key] = into.get(key, Decimal(0)) + Decimal(value)

    def add_cost(self, day: dt.date, model: str, usd: Decimal) -> None:
        self.cost_usd[(day, model)] = self.cost_usd.get((day, model), Decimal(0)) + usd

    def add_web_search(self, day: dt.date, usd: Decimal) -> None:
        self.web_search_usd[day] = self.web_search_usd.get(day, Decimal(0)) + usd

    def add_unattributed(self, day: dt.date, label: str, usd: Decimal, reason: str) -> None:
        for line in self.unattributed:
            if (line.day, line.label) == (day, label):
                line.amount_usd += usd
                return
        self.unattributed.append(CostLine(day, label, usd, reason))


@dataclass
class Row:
    """A verdict on one UTC day, model and measure."""

    day: dt.date
    model: str
    measure: str
    metered: Decimal | None
    reported: Decimal | None
    status: Status
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: numbers as strings (exact), None as null."""
        return {
            "day": self.day.isoformat(),
            "model": self.model,
            "measure": self.measure,
            "metered": None if self.metered is None else _plain(self.metered),
            "reported": None if self.reported is None else _plain(self.reported),
            "status": self.status,
            "detail": self.detail,
        }


def _plain(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros (`1E+3` -> `1000`, `0.50` -> `0.5`)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
