"""A model served by a cloud provider is stored under that provider, never under the vendor
whose wire format (or client library) it shares: Azure OpenAI reached through LangChain's
`AzureChatOpenAI` (whose messages say model_provider "openai"), LiteLLM's `azure_ai` route, and
the GenAI conventions' older `az.ai.*` system names. genai-prices prices Azure's own entries,
and falls back to OpenAI's list prices itself where Azure has none."""

from __future__ import annotations

import dataclasses

import pytest
from langchain_openai import AzureChatOpenAI
from litellm.types.utils import ModelResponse, Usage

from tests.integrations import support as s
from tests.integrations.support import Case
from worker.client.integrations._shared import provider_id
from worker.client.integrations.langchain import UsageCallbackHandler
from worker.client.integrations.litellm import UsageLogger
from worker.client.integrations.otel import usage_of_span

pytestmark = pytest.mark.e2e

GPT4O = "gpt-4o-2024-11-20"


def test_langchain_azure_chat_openai_is_stored_as_azure(case: Case) -> None:
    usage = s.chat_usage(5_000, 300, 4_096)
    replay = s.replay(s.wire.chat_completion(GPT4O, usage))
    llm = AzureChatOpenAI(
        azure_endpoint="https://example-resource.openai.azure.com",
        azure_deployment="prod-gpt4o",
        api_version="2024-10-21",
        api_key="x",
        http_client=replay.httpx(),
        max_retries=0,
    )
    handler = UsageCallbackHandler(case.usage, **case.fields)
    llm.invoke("Hi", config={"callbacks": [handler]})
    as_openai = s.truth(usage, GPT4O, "openai", "chat")
    case.conform([dataclasses.replace(as_openai, provider="azure")])


def test_litellm_azure_ai_route_is_stored_as_azure(case: Case) -> None:
    logger = UsageLogger(case.usage, **case.fields)
    response = ModelResponse(
        model=GPT4O, usage=Usage(prompt_tokens=2_000, completion_tokens=100, total_tokens=2_100)
    )
    kwargs = {"litellm_call_id": "azure-ai-1", "custom_llm_provider": "azure_ai"}
    logger.log_success_event(kwargs, response, None, None)
    (row,) = s.landed(case.db, case.tenant, 1)
    assert (row["provider"], row["model"], row["input_tokens"]) == ("azure", GPT4O, 2_000)
    assert row["cost_usd"] is not None


@pytest.mark.parametrize(
    "named", ["az.ai.openai", "az.ai.inference", "azure_openai", "AzureOpenAI", "azure_ai"]
)
def test_azure_names_are_azure(named: str) -> None:
    """genai-prices' own provider matching reads these as OpenAI (they contain "openai")."""
    assert provider_id(named) == "azure"
    found = usage_of_span({"gen_ai.system": named, "gen_ai.usage.input_tokens": 1})
    assert found is not None and found.provider == "azure"
