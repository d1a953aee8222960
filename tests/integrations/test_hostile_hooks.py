"""Every hook, handed objects it does not expect, logs and never raises: the model request has
succeeded (or failed on its own) by then, and pydantic-ai's capabilities and OpenTelemetry's
span processors let a hook's exception through into the application's call."""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from worker.client import UsageClient
from worker.client.integrations.langchain import UsageCallbackHandler
from worker.client.integrations.litellm import UsageLogger
from worker.client.integrations.openai_agents import UsageHooks
from worker.client.integrations.otel import UsageSpanProcessor
from worker.client.integrations.pydantic_ai import UsageCapability


class Hostile:
    """An object whose every attribute lookup raises (a proxy whose backend is gone)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"proxy closed ({name})")


USAGE = UsageClient(mode="sync", publisher=lambda *_: None)
FIELDS: dict[str, Any] = {"tenant_id": str(uuid.uuid4()), "operation": "hostile"}
RUN = uuid.uuid4()
ODD_SPAN = SimpleNamespace(
    context=None, attributes={"gen_ai.usage.input_tokens": 3}, start_time="soon", end_time=9
)

lc = UsageCallbackHandler(USAGE, **FIELDS)
pai = UsageCapability(USAGE, **FIELDS)
agents = UsageHooks(USAGE, **FIELDS)
otel = UsageSpanProcessor(USAGE, **FIELDS)
litellm = UsageLogger(USAGE, **FIELDS)

CALLS: dict[str, Callable[[], Any]] = {
    "langchain start, metadata a list": lambda: lc.on_chat_model_start(
        {},
        [],
        run_id=RUN,
        metadata=[1],  # type: ignore[arg-type]
    ),
    "langchain start, hostile params": lambda: lc.on_llm_start(
        {}, [], run_id=RUN, invocation_params=Hostile()
    ),
    "pydantic-ai after, hostile response": lambda: pai.after_model_request(
        SimpleNamespace(deps=None), request_context=Hostile(), response=Hostile()
    ),
    "pydantic-ai after, hostile context": lambda: pai.after_model_request(
        Hostile(), request_context=Hostile(), response=Hostile()
    ),
    "agents end, hostile all": lambda: agents.on_llm_end(Hostile(), Hostile(), Hostile()),
    "otel end, hostile span": lambda: otel.on_end(Hostile()),
    "otel end, odd times": lambda: otel.on_end(cast(Any, ODD_SPAN)),
    "litellm success, hostile": lambda: litellm.log_success_event(Hostile(), Hostile(), None, None),
}


@pytest.mark.parametrize("name", CALLS)
def test_a_hook_never_raises(name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        made = CALLS[name]()
        back = asyncio.run(made) if inspect.iscoroutine(made) else made
    if name.startswith("pydantic-ai"):
        assert isinstance(back, Hostile)  # the response goes back to the run, as given
    assert any("could not record" in r.getMessage() for r in caplog.records)
