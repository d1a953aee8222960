"""Real SDK clients over a mocked HTTP transport, answering with the provider's own wire JSON
or SSE frames: the objects the tests track are the ones the SDKs build for an application.

anthropic, openai and google-genai take an httpx client (the `httpx2` package); boto3 is
answered by botocore's Stubber (Converse) or, for ConverseStream, by a `before-send` hook
returning the binary AWS event-stream frames, which botocore parses itself.
"""

from __future__ import annotations

import binascii
import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx2

JSON = "application/json"
SSE = "text/event-stream"


def _handler(body: bytes, content_type: str, status: int) -> Any:
    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    return handle


def http(body: bytes, content_type: str = JSON, status: int = 200) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.MockTransport(_handler(body, content_type, status)))


def ahttp(body: bytes, content_type: str = JSON, status: int = 200) -> httpx2.AsyncClient:
    handler = _handler(body, content_type, status)
    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


def sse(events: list[dict[str, Any]], named: bool = True, done: bool = False) -> bytes:
    """SSE frames, `event: <type>` lines included when `named` (Anthropic, Responses)."""
    out = []
    for e in events:
        head = f"event: {e['type']}\n" if named else ""
        out.append(f"{head}data: {json.dumps(e)}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


# -- Anthropic -----------------------------------------------------------------------------


def anthropic_client(body: bytes, content_type: str = JSON, aio: bool = False) -> Any:
    import anthropic

    if aio:
        return anthropic.AsyncAnthropic(
            api_key="x", http_client=ahttp(body, content_type), max_retries=0
        )
    return anthropic.Anthropic(api_key="x", http_client=http(body, content_type), max_retries=0)


def anthropic_message(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_events(
    model: str, start_usage: dict[str, Any], delta_usage: dict[str, Any]
) -> list[dict[str, Any]]:
    start = anthropic_message(model, start_usage) | {"content": [], "stop_reason": None}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": delta_usage,
        },
        {"type": "message_stop"},
    ]


ANTHROPIC_ASK: dict[str, Any] = {
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Hello"}],
}


# -- OpenAI --------------------------------------------------------------------------------


def openai_client(
    body: bytes, content_type: str = JSON, aio: bool = False, status: int = 200
) -> Any:
    import openai

    if aio:
        transport = ahttp(body, content_type, status)
        return openai.AsyncOpenAI(api_key="x", http_client=transport, max_retries=0)
    return openai.OpenAI(api_key="x", http_client=http(body, content_type, status), max_retries=0)


def chat_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_763_600_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_1",
    }


def chat_chunks(model: str, usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A chat stream; the last chunk (no choices) carries the usage when include_usage."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_763_600_000}
    base |= {"model": model, "system_fingerprint": "fp_1"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return base | {"choices": [choice], "usage": None}

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
    ]
    if usage is not None:
        chunks.append(base | {"choices": [], "usage": usage})
    return chunks


def responses_usage(inp: int, out: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def response(model: str, usage: dict[str, Any] | None, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_763_600_000,
        "status": status,
        "model": model,
        "output": []
        if usage is None
        else [
            {
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def response_events(model: str, usage: dict[str, Any]) -> list[dict[str, Any]]:
    item = response(model, usage)["output"][0]
    empty_item = item | {"status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response(model, None, "in_progress")},
        {"type": "response.in_progress", "response": response(model, None, "in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": empty_item},
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": part,
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello",
            "logprobs": [],
        },
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response(model, usage)},
    ]
    return [e | {"sequence_number": i} for i, e in enumerate(events)]


# -- Gemini --------------------------------------------------------------------------------


def gemini_client(body: bytes, content_type: str = JSON, aio: bool = False) -> Any:
    from google import genai
    from google.genai import types

    options = (
        types.HttpOptions(httpx_async_client=ahttp(body, content_type))
        if aio
        else types.HttpOptions(httpx_client=http(body, content_type))
    )
    return genai.Client(api_key="x", http_options=options)


def gemini_response(model: str, usage: dict[str, Any], text: str = "Hello") -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}
        ],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "r1",
    }


def gemini_usage(
    prompt: int, candidates: int, cached: int = 0, thoughts: int = 0
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def gemini_sse(model: str, usage: dict[str, Any]) -> bytes:
    """A generate_content_stream answer: every chunk carries the usage so far."""
    first = usage | {"candidatesTokenCount": 1, "totalTokenCount": usage["promptTokenCount"] + 1}
    first.pop("thoughtsTokenCount", None)
    chunks = [gemini_response(model, first, "Hel"), gemini_response(model, usage, "lo")]
    return "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks).encode()


# -- Bedrock -------------------------------------------------------------------------------

BEDROCK_ASK: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": "Hello"}]}]}


def _bedrock() -> Any:
    import boto3

    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


def converse(usage: dict[str, Any], model_id: str) -> dict[str, Any]:
    """boto3's converse() answered by botocore's Stubber with the wire response."""
    from botocore.stub import Stubber

    client = _bedrock()
    wire = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
        "stopReason": "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 120},
    }
    with Stubber(client) as stub:
        stub.add_response("converse", wire, {"modelId": model_id, **BEDROCK_ASK})
        result: dict[str, Any] = client.converse(modelId=model_id, **BEDROCK_ASK)
    return result


def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    """One frame of the AWS event-stream encoding (prelude, headers, payload, CRCs)."""
    headers = (
        _header(":event-type", event_type)
        + _header(":content-type", JSON)
        + _header(":message-type", "event")
    )
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(headers) + len(body) + 4, len(headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + body
    return message + struct.pack(">I", binascii.crc32(message))


class _Raw(io.BytesIO):
    def stream(self, amt: int = 1024, decode_content: Any = None) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


def converse_stream(usage: dict[str, Any], model_id: str, aborted: bool = False) -> Any:
    """boto3's converse_stream() over a transport answering with event-stream frames."""
    from botocore.awsrequest import AWSResponse

    frames = [
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        event_frame("messageStop", {"stopReason": "end_turn"}),
        event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 90}}),
    ]
    if aborted:  # the connection drops after the first frame: a truncated second one
        frames = [frames[0], frames[1][:9]]
    body = b"".join(frames)

    def send(request: Any, **_: Any) -> AWSResponse:
        headers = {"content-type": "application/vnd.amazon.eventstream"}
        return AWSResponse(request.url, 200, headers, _Raw(body))

    client = _bedrock()
    client.meta.events.register("before-send.bedrock-runtime.ConverseStream", send)
    return client.converse_stream(modelId=model_id, **BEDROCK_ASK)
