"""What each of the LangChain and LiteLLM integrations costs per call on the application's
request path, in µs: the hook's own work (reading the framework's object, building and checking
the event, handing it to the client) with a client whose publisher does nothing, beside
`record()` alone with the same numbers (the floor any integration pays). A measurement, not a
test: run it from the integrations venv.

    .venv-integrations/bin/python -m tests.integrations.overhead
"""

from __future__ import annotations

import statistics
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from tests.integrations import support as s
from worker.client import UsageClient

TENANT = uuid.uuid4()
ROUNDS, CALLS = 7, 2_000


def per_call(func: Callable[[], Any]) -> float:
    """Median over ROUNDS of the mean µs of one call (CALLS calls a round)."""
    func()  # warm: lazy imports, genai-prices' data
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            func()
        rounds.append((time.perf_counter() - start) / CALLS * 1e6)
    return statistics.median(rounds)


def client() -> UsageClient:
    return UsageClient(mode="sync", publisher=lambda task, args, kwargs: None)


def langchain_cases() -> dict[str, Callable[[], Any]]:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    from worker.client.integrations.langchain import UsageCallbackHandler

    usage = client()
    message = AIMessage(
        "Hello",
        usage_metadata={
            "input_tokens": 12_560,
            "output_tokens": 400,
            "total_tokens": 12_960,
            "input_token_details": {
                "cache_read": 8_000,
                "cache_creation": 0,
                "ephemeral_5m_input_tokens": 1_500,
                "ephemeral_1h_input_tokens": 3_000,
            },
        },
        response_metadata={"model_name": s.SONNET, "model_provider": "anthropic"},
    )
    result = LLMResult(generations=[[ChatGeneration(message=message)]])
    handler = UsageCallbackHandler(usage, operation="chat")
    meta = {"tenant_id": str(TENANT)}

    def callback() -> None:
        run = uuid.uuid4()
        handler.on_chat_model_start({}, [[]], run_id=run, metadata=meta)
        handler.on_llm_end(result, run_id=run)

    def response() -> None:
        with usage.track_usage(tenant_id=TENANT, operation="chat") as call:
            call.response(message)

    return {
        "LangChain UsageCallbackHandler": callback,
        "LangChain call.response(AIMessage)": response,
    }


def litellm_cases() -> dict[str, Callable[[], Any]]:
    import litellm
    from litellm.llms.custom_httpx.http_handler import HTTPHandler

    from worker.client.integrations.litellm import UsageLogger

    usage = client()
    wire = s.anthropic_usage(60, 8_000, 1_500, 3_000, 400)
    replay = s.replay(s.wire.anthropic_message(s.SONNET, wire))
    response = litellm.completion(
        model=f"anthropic/{s.SONNET}",
        messages=[{"role": "user", "content": "Hi"}],
        client=HTTPHandler(client=replay.httpx()),
        api_key="x",
    )
    logger = UsageLogger(usage, operation="chat")
    base = {
        "custom_llm_provider": "anthropic",
        "litellm_params": {"metadata": {"tenant_id": str(TENANT)}},
    }

    def log() -> None:
        logger.log_success_event(
            {**base, "litellm_call_id": str(uuid.uuid4())}, response, None, None
        )

    def handed() -> None:
        with usage.track_usage(tenant_id=TENANT, operation="chat") as call:
            call.response(response)

    return {"LiteLLM UsageLogger": log, "LiteLLM call.response(ModelResponse)": handed}


def main() -> None:
    usage = client()

    def floor() -> None:
        usage.record(
            tenant_id=TENANT,
            operation="chat",
            model=s.SONNET,
            provider="anthropic",
            input_tokens=12_560,
            output_tokens=400,
            cache_read_tokens=8_000,
            cache_write_tokens=4_500,
            usage_details={"cache_write_5m_tokens": 1_500, "cache_write_1h_tokens": 3_000},
        )

    cases: dict[str, Callable[[], Any]] = {"record() alone (the floor)": floor}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frameworks' import-time warnings
        cases |= langchain_cases()
        cases |= litellm_cases()
    print(f"{'per call, median of ' + str(ROUNDS) + ' rounds':45} {'µs':>8}")
    for name, func in cases.items():
        print(f"{name:45} {per_call(func):8.1f}")


if __name__ == "__main__":
    main()
