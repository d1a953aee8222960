"""What the pydantic_ai, openai_agents, llamaindex and otel integrations share: a `CallUsage` from
counts already in genai-prices' convention, a framework's provider name as genai-prices' id, and
recording one model request without ever raising into the application.

Nothing here imports a framework; genai-prices is imported on first use.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from worker.client.responses import TOKEN_KEYS, BadCount, CallUsage, token_count
from worker.client.tracker import warn_once
from worker.client.tracking import TrackedCall

if TYPE_CHECKING:
    from worker.client.publisher import UsageClient

K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")

log = logging.getLogger(__name__)

#: Requests started and not (yet) ended that a hook keeps state for, at most: a request that
#: fails before its end hook runs leaves its entry behind, and the oldest go first.
MAX_OPEN = 10_000

#: Event fields a hook's caller may give (as defaults, or from the run's context).
Fields = Mapping[str, Any]
#: A function from the framework's run context (deps, context.context, ...) to event fields.
FieldsOf = Callable[[Any], Fields | None]


@functools.cache
def priced_keys() -> frozenset[str]:
    """Every usage key genai-prices prices (its unit registry), `requests` aside (it counts one
    per call itself)."""
    from genai_prices.data_units import unit_data

    return frozenset(unit_data) - {"requests"}


def call_usage(values: Mapping[str, Any], model: str | None, provider: str | None) -> CallUsage:
    """A CallUsage from counts already in genai-prices' convention (input counts the cache):
    the four token fields, and every other key genai-prices prices, non-zero, as a detail. For
    Anthropic, cache writes not said to be 1-hour ones are 5-minute ones. Raises BadCount for
    a value that is no token count (see `unpriced`)."""
    keys = priced_keys()
    # A count that is no count raises BadCount (the caller records the request unpriced):
    # read as 0, it would leave the rest of the usage priced without it.
    counts: dict[str, int | float] = {
        k: n for k, v in values.items() if k in keys and (n := token_count(v, k)) > 0
    }
    tokens = {k: int(counts.pop(k, 0)) for k in TOKEN_KEYS}
    rest = tokens["cache_write_tokens"] - int(counts.get("cache_write_1h_tokens", 0))
    if provider == "anthropic" and rest > 0 and "cache_write_5m_tokens" not in counts:
        # A framework that keeps only the 1-hour part (or no split): the other writes are
        # 5-minute ones, which genai-prices' Anthropic extractor reports as such (same price).
        counts["cache_write_5m_tokens"] = rest
    return CallUsage(**tokens, usage_details=counts, model=model, provider=provider)


def unpriced(exc: BadCount, model: str | None, provider: str | None, what: str) -> CallUsage:
    """The request of `what` whose usage held a value that is no count (`exc`): recorded with
    0 tokens (the worker stores it unpriced, cost NULL) and the model read, with one warning."""
    warn_once(
        f"bad-count:{what}:{exc}",
        "the usage of %s is not valid (%s): recorded with 0 tokens, which the worker stores"
        " unpriced (cost NULL)",
        what,
        exc,
    )
    return CallUsage(model=model, provider=provider)


@functools.lru_cache(maxsize=256)
def provider_id(name: str | None) -> str | None:
    """genai-prices' id for a framework's provider name (`google-gla` -> `google`, `bedrock` ->
    `aws`), by genai-prices' own matching; the name itself, lower-cased, when it knows none."""
    if not name:
        return None
    if "azure" in name.lower() or name.lower().startswith("az."):
        # Azure OpenAI's names (az.ai.openai, azure_openai, AzureOpenAI) contain "openai",
        # which genai-prices' matching takes for OpenAI: Azure has prices of its own.
        return "azure"
    from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

    found = find_provider_by_id(get_snapshot().providers, name)
    return found.id if found is not None else name.strip().lower()


def guarded(method: Callable[P, None]) -> Callable[P, None]:
    """A framework's hook method that logs what goes wrong instead of raising it: the model
    request it records has succeeded (or failed on its own), and the framework may let a hook's
    error through into the application's call."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("could not record a model request (%s)", method.__qualname__)

    return run


def aguarded(
    method: Callable[P, Coroutine[Any, Any, None]],
) -> Callable[P, Coroutine[Any, Any, None]]:
    """`guarded` for an async hook method."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await method(*args, **kwargs)
        except Exception:
            log.exception("could not record a model request (%s)", method.__qualname__)

    return run


def remember(store: dict[K, V], key: K, value: V) -> None:
    """`store[key] = value`, forgetting the oldest entry past MAX_OPEN."""
    if len(store) >= MAX_OPEN and key not in store:
        del store[next(iter(store))]
    store[key] = value


def context_fields(fields_of: FieldsOf | None, context: Any, what: str) -> dict[str, Any]:
    """`fields_of(context)` as a dict; {} (and one warning) when it raises or gives no mapping:
    the application's call has succeeded by then and must not see our error."""
    if fields_of is None:
        return {}
    try:
        found = fields_of(context)
    except Exception as exc:
        warn_once(f"fields:{what}", "the fields function of %s raised %r: defaults used", what, exc)
        return {}
    if found is None:
        return {}
    if not isinstance(found, Mapping):
        warn_once(
            f"fields-type:{what}",
            "the fields function of %s returned a %s, not a mapping of event fields",
            what,
            type(found).__name__,
        )
        return {}
    return dict(found)


def record(
    usage: UsageClient,
    found: CallUsage | None,
    fields: Fields,
    *,
    failed: bool = False,
    duration_ms: int | None = None,
    what: str,
) -> None:
    """Record one model request through the client's own path (TrackedCall: the fields given
    win over what was read, an unknown model is warned about once); never raises."""
    values = dict(fields)
    if duration_ms is not None:
        values.setdefault("duration_ms", duration_ms)
    call = TrackedCall(usage.record, values)
    call.start(check=False)  # the request is made: a bad field is logged, naming it
    if found is not None:
        call.tracker.tokens(
            found.input_tokens,
            found.output_tokens,
            cache_read_tokens=found.cache_read_tokens,
            cache_write_tokens=found.cache_write_tokens,
            usage_details=dict(found.usage_details),
        )
        call.default(model=found.model, provider=found.provider)
    call.finish(failed, what)


class Hook:
    """What a framework hook keeps: the client, the function from the run's context to event
    fields, and the default fields (used for what that function leaves out)."""

    #: What the hook reads, for log lines.
    what = "a framework's model response"

    def __init__(
        self, usage: UsageClient, *, fields: FieldsOf | None = None, **defaults: Any
    ) -> None:
        self._usage = usage
        self._fields = fields
        self._defaults = defaults

    def record_request(
        self,
        found: CallUsage | None,
        context: Any,
        *,
        duration_ms: int | None,
        failed: bool = False,
    ) -> None:
        """Record one model request of a run whose context is `context`; never raises."""
        fields = {**self._defaults, **context_fields(self._fields, context, self.what)}
        record(self._usage, found, fields, failed=failed, duration_ms=duration_ms, what=self.what)
