"""What the reconciliation tests share: the fake's figures made from our own events (so that
"the provider saw exactly what we sent" is one call), run options, the run tables."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.fake_provider_apis import (
    AnthropicCost,
    AnthropicUsage,
    FakeProviderApis,
    OpenAICost,
    OpenAIUsage,
)
from worker.ledger.pricing import Pricer
from worker.ledger.reconcile import Options, Row, Scope
from worker.ledger.usage import Usage

RECONCILE_TABLES = (
    "ai_usage_reconcile_results",
    "ai_usage_reconcile_buckets",
    "ai_usage_reconcile_runs",
)
#: The provider's true prices: genai-prices with no operator override.
TRUE_PRICES = Pricer()


def clear_runs(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(RECONCILE_TABLES)}"))


@pytest.fixture
def no_runs_left(engine: Engine) -> Iterator[None]:
    """No run before the test, and none left for other modules' tests (`ai-usage check`
    reports runs): the session's `db` fixture does not know these tables."""
    clear_runs(engine)
    yield
    clear_runs(engine)


def days_ago(n: int, hour: int = 12) -> dt.datetime:
    today = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)
    return dt.datetime.combine(today, dt.time(hour), dt.UTC)


def anthropic_event(
    tenant: uuid.UUID,
    model: str,
    at: dt.datetime,
    *,
    uncached: int = 0,
    read: int = 0,
    w5: int = 0,
    w1: int = 0,
    output: int = 0,
    web: int = 0,
) -> dict[str, Any]:
    """A usage event as our producers record an Anthropic call (input counts the cache)."""
    details = {"cache_write_5m_tokens": w5, "cache_write_1h_tokens": w1, "web_searches": web}
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": str(tenant),
        "operation": "reconcile_test",
        "model": model,
        "provider": "anthropic",
        "input_tokens": uncached + read + w5 + w1,
        "output_tokens": output,
        "cache_read_tokens": read,
        "cache_write_tokens": w5 + w1,
        "usage_details": {k: v for k, v in details.items() if v} or None,
        "created_at": at.isoformat(),
    }


def openai_event(
    tenant: uuid.UUID, model: str, at: dt.datetime, inp: int, cached: int, out: int
) -> dict[str, Any]:
    """A usage event as our producers record an OpenAI call (input counts the cache)."""
    e = anthropic_event(tenant, model, at, uncached=inp - cached, read=cached, output=out)
    e["provider"] = "openai"
    return e


def price(event: dict[str, Any], provider: str) -> Decimal:
    """The event's cost at the provider's true price."""
    usage = Usage(
        event["input_tokens"],
        event["output_tokens"],
        event.get("cache_read_tokens", 0),
        event.get("cache_write_tokens", 0),
        event.get("usage_details") or {},
    )
    cost = TRUE_PRICES.price_usage(
        event["model"], provider, usage, dt.datetime.fromisoformat(event["created_at"])
    )
    assert cost is not None, event["model"]
    return cost


def anthropic_saw(
    fake: FakeProviderApis,
    events: Iterable[dict[str, Any]],
    model: str,
    *,
    api_key_id: str = "apikey_01ours",
    with_cost: bool = True,
) -> None:
    """The fake's usage and cost report hold `events`, under the provider's name `model`."""
    for e in events:
        details = e.get("usage_details") or {}
        w5, w1 = details.get("cache_write_5m_tokens", 0), details.get("cache_write_1h_tokens", 0)
        day = dt.datetime.fromisoformat(e["created_at"]).date()
        read = e.get("cache_read_tokens", 0)
        fake.anthropic_usage.append(
            AnthropicUsage(
                day,
                model,
                uncached_input_tokens=e["input_tokens"] - read - w5 - w1,
                cache_read_input_tokens=read,
                cache_5m=w5,
                cache_1h=w1,
                output_tokens=e["output_tokens"],
                web_search_requests=details.get("web_searches", 0),
                api_key_id=api_key_id,
            )
        )
        if not with_cost:
            continue
        # Lines by token type, as the report's description grouping splits them; web searches
        # on a line of their own with no model ("Web Search Usage"), as the real report bills them.
        total = price(e, "anthropic")
        output = TRUE_PRICES.price_usage(
            e["model"], "anthropic", Usage(0, e["output_tokens"]), _at(e)
        )
        web = web_search_cost(e, "anthropic")
        assert output is not None
        fake.anthropic_costs += [
            AnthropicCost(day, str(output * 100), model, token_type="output_tokens"),
            AnthropicCost(
                day, str((total - output - web) * 100), model, token_type="uncached_input_tokens"
            ),
        ]
        if web:
            fake.anthropic_costs.append(
                AnthropicCost(
                    day,
                    str(web * 100),
                    None,
                    token_type=None,
                    cost_type="web_search",
                    description="Web Search Usage",
                )
            )


def web_search_cost(event: dict[str, Any], provider: str) -> Decimal:
    """The part of the event's cost at the provider's true price that is web searches."""
    searches = (event.get("usage_details") or {}).get("web_searches", 0)
    if not searches:
        return Decimal(0)
    usage = Usage(0, 0, 0, 0, {"web_searches": searches})
    cost = TRUE_PRICES.price_usage(event["model"], provider, usage, _at(event))
    assert cost is not None
    return cost


def openai_saw(
    fake: FakeProviderApis,
    events: Iterable[dict[str, Any]],
    model: str,
    *,
    project_id: str = "proj_ours",
) -> None:
    """The fake's usage and costs hold `events`, under the provider's name `model`."""
    for e in events:
        day = dt.datetime.fromisoformat(e["created_at"]).date()
        fake.openai_usage.append(
            OpenAIUsage(
                day,
                model,
                input_tokens=e["input_tokens"],
                input_cached_tokens=e.get("cache_read_tokens", 0),
                output_tokens=e["output_tokens"],
                num_model_requests=1,
                project_id=project_id,
            )
        )
        total = price(e, "openai")
        output = TRUE_PRICES.price_usage(e["model"], "openai", Usage(0, e["output_tokens"]), _at(e))
        web = web_search_cost(e, "openai")
        assert output is not None
        fake.openai_costs += [
            OpenAICost(day, float(output), f"{model}, output", project_id=project_id),
            OpenAICost(day, float(total - output - web), f"{model}, input", project_id=project_id),
        ]
        if web:
            fake.openai_costs.append(
                OpenAICost(day, float(web), "web search tool calls", project_id=project_id)
            )


def _at(e: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(e["created_at"])


def options(fake: FakeProviderApis, provider: str, **kw: Any) -> Options:
    if provider == "anthropic":
        return Options(fake.anthropic_key, fake.anthropic_url, deadline_s=30, **kw)
    return Options(fake.openai_key, fake.openai_url, deadline_s=30, **kw)


def statuses(rows: Iterable[Row], day: dt.date, model: str) -> dict[str, str]:
    """measure -> status of one day and model."""
    return {r.measure: r.status for r in rows if r.day == day and r.model == model}


__all__ = ["Scope"]
