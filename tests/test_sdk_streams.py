"""Streams from the official SDKs (SSE frames or AWS event-stream frames over a mocked
transport), sync and async, tracked as an application tracks them: chunks pass through
unchanged, the usage is recorded when the stream ends, and the worker's writer stores it
priced as genai-prices prices it at `created_at`."""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine

from tests import sdk_fakes as wire
from tests.sdk_ledger import Recorder, check, client_warnings, land

SONNET = "claude-sonnet-4-5-20250929"
START = {"input_tokens": 1000, "cache_read_input_tokens": 9000, "output_tokens": 1}
CACHED = {"input_tokens": 10_000, "cache_read_tokens": 9000, "output_tokens": 500}
GPT5 = {"input_tokens": 50_000, "cache_read_tokens": 40_000, "output_tokens": 2000}
GPT5 |= {"output_reasoning_tokens": 1500}
GEMINI = {"input_tokens": 10_000, "cache_read_tokens": 6000, "output_tokens": 800}
GEMINI |= {"output_reasoning_tokens": 300, "input_text_tokens": 10_000}
GEMINI |= {"cache_text_read_tokens": 6000}


def anthropic_sse(delta: dict[str, Any] | None = None) -> bytes:
    return wire.sse(wire.anthropic_events(SONNET, START, delta or {"output_tokens": 500}))


def chat_sse(usage: bool = True) -> bytes:
    numbers = wire.chat_usage(50_000, 2000, 40_000, 1500) if usage else None
    return wire.sse(wire.chat_chunks("gpt-5-2025-08-07", numbers), named=False, done=True)


def responses_sse() -> bytes:
    return wire.sse(
        wire.response_events("gpt-5-2025-08-07", wire.responses_usage(50_000, 2000, 40_000, 1500))
    )


def gemini_sse() -> bytes:
    return wire.gemini_sse("gemini-2.5-flash", wire.gemini_usage(10_000, 500, 6000, 300))


def by_operation(db: Engine, recorder: Recorder) -> dict[str, dict[str, Any]]:
    events = recorder.take()
    rows = land(db, events)
    out = {e["operation"]: row for e, row in zip(events, rows, strict=True)}
    assert len(out) == len(events), "one event per operation"
    return out


def test_sync_streams_pass_through_and_record_at_the_end(db: Engine, tenant: uuid.UUID) -> None:
    recorder = Recorder(tenant)
    usage, f = recorder.client, recorder.fields
    ask = {"messages": [{"role": "user", "content": "Hi"}]}

    client = wire.anthropic_client(anthropic_sse(), wire.SSE)
    raw = client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)
    seen = [event.type for event in usage.track_stream(raw, **f(operation="anthropic-raw"))]
    # Every event the SDK yields (it drops the wire's ping itself).
    assert seen[0] == "message_start" and seen[-1] == "message_stop" and len(seen) == 6
    assert not recorder.events or recorder.events[-1]["operation"] == "anthropic-raw"

    manager = wire.anthropic_client(anthropic_sse(), wire.SSE).messages.stream(
        model=SONNET, **wire.ANTHROPIC_ASK
    )
    with usage.track_stream(manager, **f(operation="anthropic-manager")) as stream:
        assert "".join(stream.text_stream) == "Hello"  # the SDK's own stream object

    client = wire.openai_client(chat_sse(), wire.SSE)
    chunks = client.chat.completions.create(
        model="gpt-5", stream=True, stream_options={"include_usage": True}, **ask
    )
    tracked = usage.track_stream(chunks, **f(operation="chat-chunks"))
    with tracked:  # the SDK stream is a context manager; so is the wrapper
        text = "".join(c.choices[0].delta.content or "" for c in tracked if c.choices)
    assert text == "Hello" and tracked.response.status_code == 200  # SDK attributes pass

    manager = wire.openai_client(chat_sse(), wire.SSE).chat.completions.stream(
        model="gpt-5", stream_options={"include_usage": True}, **ask
    )
    with usage.track_stream(manager, **f(operation="chat-manager")) as stream:
        stream.until_done()

    manager = wire.openai_client(chat_sse(), wire.SSE).chat.completions.stream(
        model="gpt-5", stream_options={"include_usage": True}, **ask
    )
    with manager as stream:  # the helper's own events (ChunkEvent, ContentDeltaEvent, ...)
        kinds = {e.type for e in usage.track_stream(stream, **f(operation="chat-helper-events"))}
    assert {"chunk", "content.delta", "content.done"} <= kinds

    client = wire.openai_client(responses_sse(), wire.SSE)
    events = client.responses.create(model="gpt-5", input="Hi", stream=True)
    types = [e.type for e in usage.track_stream(events, **f(operation="responses-raw"))]
    assert types[-1] == "response.completed"

    manager = wire.openai_client(responses_sse(), wire.SSE).responses.stream(
        model="gpt-5", input="Hi"
    )
    with usage.track_stream(manager, **f(operation="responses-manager")) as stream:
        for _ in stream:  # pins ResponseStream._state._completed_response (see streams.py)
            pass

    client = wire.gemini_client(gemini_sse(), wire.SSE)
    gemini = client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi")
    text = "".join(c.text for c in usage.track_stream(gemini, **f(operation="gemini-stream")))
    assert text == "Hello"

    bedrock_usage = {"inputTokens": 1000, "outputTokens": 300, "totalTokens": 10_300}
    bedrock_usage |= {"cacheReadInputTokens": 8000, "cacheWriteInputTokens": 1000}
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    result = wire.converse_stream(bedrock_usage, model)
    names = [
        next(iter(e))
        for e in usage.track_stream(result, **f(operation="bedrock-stream", model=model))
    ]
    assert names == ["messageStart", "contentBlockDelta", "messageStop", "metadata"]

    stored = by_operation(db, recorder)
    for name in ("anthropic-raw", "anthropic-manager"):
        check(stored[name], CACHED)
    for name in ("chat-chunks", "chat-manager", "chat-helper-events"):
        check(stored[name], GPT5)
    for name in ("responses-raw", "responses-manager"):
        check(stored[name], GPT5)
    check(stored["gemini-stream"], GEMINI)
    check(
        stored["bedrock-stream"],
        {"input_tokens": 10_000, "cache_read_tokens": 8000, "cache_write_tokens": 1000}
        | {"output_tokens": 300},
    )


def test_async_streams_record_exactly_as_the_sync_ones(db: Engine, tenant: uuid.UUID) -> None:
    recorder = Recorder(tenant)
    usage, f = recorder.client, recorder.fields
    ask = {"messages": [{"role": "user", "content": "Hi"}]}

    async def application() -> None:
        client = wire.anthropic_client(anthropic_sse(), wire.SSE, aio=True)
        raw = await client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)
        async for _ in usage.track_stream(raw, **f(operation="anthropic-raw")):
            pass

        client = wire.anthropic_client(anthropic_sse(), wire.SSE, aio=True)
        manager = client.messages.stream(model=SONNET, **wire.ANTHROPIC_ASK)
        async with usage.track_stream(manager, **f(operation="anthropic-manager")) as stream:
            assert (await stream.get_final_message()).usage.output_tokens == 500

        # The coroutine itself, not awaited: the wrapper awaits it.
        client = wire.openai_client(chat_sse(), wire.SSE, aio=True)
        pending = client.chat.completions.create(
            model="gpt-5", stream=True, stream_options={"include_usage": True}, **ask
        )
        async for _ in usage.track_stream(pending, **f(operation="chat-coroutine")):
            pass

        client = wire.openai_client(responses_sse(), wire.SSE, aio=True)
        events = await client.responses.create(model="gpt-5", input="Hi", stream=True)
        async with usage.track_stream(events, **f(operation="responses-raw")) as tracked:
            async for _ in tracked:
                pass

        client = wire.gemini_client(gemini_sse(), wire.SSE, aio=True)
        pending_gemini = client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Hi"
        )
        chunks = usage.track_stream(pending_gemini, **f(operation="gemini-aio-stream"))
        assert "".join([c.text async for c in chunks]) == "Hello"

    asyncio.run(application())
    stored = by_operation(db, recorder)
    check(stored["anthropic-raw"], CACHED)
    check(stored["anthropic-manager"], CACHED)
    check(stored["chat-coroutine"], GPT5)
    check(stored["responses-raw"], GPT5)
    check(stored["gemini-aio-stream"], GEMINI)


def test_stream_events_given_one_by_one_and_in_every_form(db: Engine, tenant: uuid.UUID) -> None:
    # Newer Anthropic API versions repeat the cumulative input and cache counts in
    # message_delta (and only there the server tools used): the delta overwrites the start.
    delta: dict[str, Any] = {
        "output_tokens": 500,
        "input_tokens": 1000,
        "cache_read_input_tokens": 9000,
    }
    delta |= {"server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0}}
    recorder = Recorder(tenant)
    client = wire.anthropic_client(anthropic_sse(delta), wire.SSE)
    events = list(client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK))
    completed = list(
        wire.openai_client(responses_sse(), wire.SSE).responses.create(
            model="gpt-5", input="Hi", stream=True
        )
    )[-1]
    assert type(completed).__name__ == "ResponseCompletedEvent"
    manager = wire.anthropic_client(anthropic_sse(delta), wire.SSE).messages.stream(
        model=SONNET, **wire.ANTHROPIC_ASK
    )
    with manager as stream:
        final = stream.get_final_message()
    for name, items in (
        ("final-message", [final]),
        ("events", events),
        ("event-dicts", [e.model_dump() for e in events]),
        ("completed-event", [completed]),
        ("completed-dict", [completed.model_dump(mode="json")]),
    ):
        with recorder.client.track_usage(**recorder.fields(operation=name)) as call:
            for item in items:
                call.response(item)
    # call.response() given the whole stream hands back a pass-through wrapper.
    chunks = wire.openai_client(chat_sse(), wire.SSE).chat.completions.create(
        model="gpt-5", stream=True, stream_options={"include_usage": True}, messages=[]
    )
    with recorder.client.track_usage(**recorder.fields(operation="in-block")) as call:
        assert len(list(call.response(chunks))) == 5
    stored = by_operation(db, recorder)
    check(stored["final-message"], CACHED | {"web_searches": 1})
    check(stored["events"], CACHED | {"web_searches": 1})
    check(stored["event-dicts"], CACHED | {"web_searches": 1})
    check(stored["completed-event"], GPT5)
    check(stored["completed-dict"], GPT5)
    check(stored["in-block"], GPT5)


def test_a_broken_or_abandoned_stream_records_what_it_saw(db: Engine, tenant: uuid.UUID) -> None:
    import anthropic
    import openai

    recorder = Recorder(tenant)
    usage, f = recorder.client, recorder.fields
    start = wire.anthropic_events(SONNET, START, {"output_tokens": 500})[:4]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    client = wire.anthropic_client(wire.sse([*start, error]), wire.SSE)
    raw = client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)
    with pytest.raises(anthropic.APIStatusError):  # the application sees the SDK's own error
        for _ in usage.track_stream(raw, **f(operation="broken")):
            pass

    client = wire.anthropic_client(anthropic_sse(), wire.SSE)
    raw = client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)
    stream = usage.track_stream(raw, **f(operation="closed-early"))
    next(stream)  # message_start only, then the application stops reading
    stream.close()

    client = wire.anthropic_client(anthropic_sse(), wire.SSE)
    raw = client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)
    for _event in usage.track_stream(raw, **f(operation="abandoned")):
        break  # no close(): recorded once the wrapper is collected
    del _event
    gc.collect()

    # The request itself fails inside the wrapper (the un-awaited coroutine form).
    overloaded = json.dumps({"error": {"message": "Overloaded", "type": "server_error"}})
    client = wire.openai_client(overloaded.encode(), aio=True, status=503)
    pending = client.chat.completions.create(model="gpt-5", stream=True, messages=[])

    async def application() -> None:
        async for _ in usage.track_stream(pending, **f(operation="refused", model="gpt-5")):
            pass

    with pytest.raises(openai.InternalServerError):
        asyncio.run(application())

    seen = {"input_tokens": 10_000, "cache_read_tokens": 9000, "output_tokens": 1}
    stored = by_operation(db, recorder)
    refused = stored["refused"]
    assert (refused["success"], refused["input_tokens"], refused["cost_usd"]) == ("failure", 0, 0)
    check(stored["broken"], seen, success="failure")
    check(stored["closed-early"], seen)
    check(stored["abandoned"], seen)


def test_a_decorated_function_returning_a_stream_is_tracked_to_its_end(
    db: Engine, tenant: uuid.UUID
) -> None:
    recorder = Recorder(tenant)
    usage, f = recorder.client, recorder.fields

    @usage.track(**f(operation="sync"))
    def ask() -> Any:
        client = wire.openai_client(chat_sse(), wire.SSE)
        return client.chat.completions.create(
            model="gpt-5", stream=True, stream_options={"include_usage": True}, messages=[]
        )

    @usage.track(**f(operation="async"))
    async def ask_async() -> Any:
        client = wire.anthropic_client(anthropic_sse(), wire.SSE, aio=True)
        return await client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)

    chunks = ask()
    assert recorder.events == []  # nothing is known before the stream is read
    assert len(list(chunks)) == 5

    async def application() -> int:
        return len([e async for e in await ask_async()])

    assert asyncio.run(application()) == 6
    stored = by_operation(db, recorder)
    check(stored["sync"], GPT5)
    check(stored["async"], CACHED)


def test_a_chat_stream_without_usage_is_unpriced_with_one_warning(
    db: Engine,
    tenant: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said = client_warnings(monkeypatch, caplog)
    recorder = Recorder(tenant)
    for _ in range(2):
        client = wire.openai_client(chat_sse(usage=False), wire.SSE)
        chunks = client.chat.completions.create(model="gpt-5", stream=True, messages=[])
        assert len(list(recorder.client.track_stream(chunks, **recorder.fields()))) == 4
    rows = land(db, recorder.take())
    assert [(r["model"], r["input_tokens"], r["output_tokens"], r["cost_usd"]) for r in rows] == [
        ("gpt-5-2025-08-07", 0, 0, None),
        ("gpt-5-2025-08-07", 0, 0, None),
    ]
    warned = said("no usage could be read")
    assert len(warned) == 1, "once per type, not per call"
    assert "openai.Stream" in warned[0] and "ChatCompletionChunk" in warned[0]
    assert "include_usage" in warned[0]
