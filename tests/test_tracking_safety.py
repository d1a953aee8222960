"""Never a silent $0, never an exception into the application: an unreadable response is
recorded unpriced with one warning per type; a failure in our own code after a successful
AI call is logged; bad fields fail at the call site, before the AI call."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from tests import sdk_fakes as wire
from tests.sdk_ledger import Recorder, client_warnings, land
from worker.client import InvalidEvent, UsageClient

SONNET = "claude-sonnet-4-5-20250929"
MESSAGE = wire.anthropic_message(SONNET, {"input_tokens": 10, "output_tokens": 5})


def message() -> Any:
    client = wire.anthropic_client(json.dumps(MESSAGE).encode())
    return client.messages.create(model=SONNET, **wire.ANTHROPIC_ASK)


class Unreadable:
    """A response type no reader knows."""

    text = "Hello"


def test_an_unreadable_response_is_recorded_unpriced_with_one_warning_per_type(
    db: Engine,
    tenant: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said = client_warnings(monkeypatch, caplog)
    recorder = Recorder(tenant)
    for response in (Unreadable(), Unreadable(), SimpleNamespace(usage=None)):
        with recorder.client.track_usage(**recorder.fields(model="gpt-4o")) as call:
            call.response(response)
    stored = land(db, recorder.take())
    assert [(r["input_tokens"], r["output_tokens"], r["cost_usd"]) for r in stored] == [
        (0, 0, None)
    ] * 3
    warned = said("no usage could be read")
    assert len(warned) == 2, warned  # one per type, not one per call
    assert f"{__name__}.Unreadable" in warned[0] and "types.SimpleNamespace" in warned[1]
    assert "unpriced" in warned[0]


def test_a_failure_in_our_code_never_reaches_the_application(
    db: Engine,
    tenant: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(tenant)
    response = message()

    # Reading the usage blows up: the call is still recorded, unpriced.
    def boom(*_: Any) -> Any:
        raise RuntimeError("reader bug")

    monkeypatch.setattr("worker.client.tracker.extract", boom)
    with recorder.client.track_usage(**recorder.fields(operation="reader")) as call:
        assert call.response(response) is response
    monkeypatch.undo()

    # Recognising the shape blows up, inside a stream: every chunk still passes.
    monkeypatch.setattr("worker.client.tracker.piece", boom)
    client = wire.anthropic_client(
        wire.sse(wire.anthropic_events(SONNET, {"input_tokens": 3, "output_tokens": 1}, {})),
        wire.SSE,
    )
    raw = client.messages.create(model=SONNET, stream=True, **wire.ANTHROPIC_ASK)
    assert len(list(recorder.client.track_stream(raw, **recorder.fields(operation="stream")))) == 6
    monkeypatch.undo()
    (reader, stream) = land(db, recorder.take())
    assert reader["cost_usd"] is None and stream["cost_usd"] is None

    # Publishing blows up (sync mode raises the broker's error): logged, never raised.
    def broker_down(*_: Any) -> None:
        raise ConnectionError("broker down")

    failing = UsageClient(mode="sync", publisher=broker_down)
    fields = recorder.fields()
    with caplog.at_level(logging.ERROR, logger="worker.client.tracking"):
        with failing.track_usage(**fields) as call:
            call.response(response)

        @failing.track(**fields)
        def ask() -> Any:
            return response

        assert ask() is response
        for _ in failing.track_stream(iter([response]), **fields):
            pass
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and all("could not record" in r.getMessage() for r in errors)


def test_bad_fields_fail_at_the_call_site_before_the_ai_call() -> None:
    usage = UsageClient(mode="sync", publisher=lambda *_: None)
    calls: list[str] = []
    with (
        pytest.raises(InvalidEvent, match="^tenant_id: "),
        usage.track_usage(tenant_id="not-a-uuid", operation="x"),
    ):
        calls.append("the AI call")

    @usage.track(tenant_id=str(uuid.uuid4()), operation="x", modle="gpt-4o")
    def ask() -> None:
        calls.append("the AI call")

    with pytest.raises(InvalidEvent, match="^modle: is not a known field"):
        ask()
    assert calls == []


def test_importing_the_client_imports_nothing_heavy() -> None:
    heavy = ("genai_prices", "celery", "kombu", "sqlalchemy", "pydantic_settings")
    sdks = ("anthropic", "openai", "google.genai", "boto3")
    script = (
        "import sys, worker.client as c\n"
        f"before = [m for m in {heavy + sdks!r} if m in sys.modules]\n"
        "c.read_usage({'usage': {'input_tokens': 1, 'output_tokens': 2}})\n"
        "print(before, 'genai_prices' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[] True"  # genai-prices only once a response is read
