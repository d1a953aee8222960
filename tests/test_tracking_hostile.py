"""Odd objects and odd counts after a successful AI call: never an exception into the
application, never a lost or garbage row. An object whose attributes raise is recorded
unpriced; usage that the event schema refuses (a negative count, a cache larger than the input)
is recorded unpriced with a warning naming the field, not dropped."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.sdk_ledger import Recorder, client_warnings, land
from worker.client.integrations._shared import record
from worker.client.responses import CallUsage


class Hostile:
    """An object whose every attribute lookup raises something other than AttributeError (a
    lazy proxy whose backend is gone, say)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"proxy closed ({name})")


def test_an_object_whose_attributes_raise_never_reaches_the_application(
    db: Engine, tenant: uuid.UUID
) -> None:
    recorder = Recorder(tenant)
    hostile = Hostile()
    with recorder.client.track_usage(**recorder.fields(model="gpt-4o")) as call:
        assert call.response(hostile) is hostile

    @recorder.client.track(**recorder.fields(model="gpt-4o"))
    def ask() -> Any:
        return hostile

    assert ask() is hostile
    assert recorder.client.track_stream(hostile, **recorder.fields(model="gpt-4o")) is hostile
    stored = land(db, recorder.take())
    assert [(r["input_tokens"], r["output_tokens"], r["cost_usd"]) for r in stored] == [
        (0, 0, None)
    ] * 3


@pytest.mark.parametrize(
    ("counts", "field"),
    [
        ({"input_tokens": -5, "output_tokens": 3}, "input_tokens"),
        ({"input_tokens": 10, "output_tokens": 3, "cache_read_tokens": 20}, "input_tokens"),
        ({"input_tokens": 3_000_000_000, "output_tokens": 3}, "input_tokens"),
        ({"input_tokens": 10, "output_tokens": 3, "usage_details": {"x": -1}}, "usage_details"),
    ],
)
def test_usage_the_schema_refuses_is_recorded_unpriced_not_dropped(
    db: Engine,
    tenant: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    counts: dict[str, Any],
    field: str,
) -> None:
    """A reader (or call.tokens) giving counts the event refuses: the row still lands, with 0
    tokens and the model read (cost NULL), and one warning names the field."""
    said = client_warnings(monkeypatch, caplog)
    recorder = Recorder(tenant)
    found = CallUsage(**counts, model="claude-3-5-haiku-20241022", provider="anthropic")
    record(recorder.client, found, recorder.fields(), what="a probe")
    (row,) = land(db, recorder.take())
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, None)
    assert (row["model"], row["provider"], row["success"]) == (
        "claude-3-5-haiku-20241022",
        "anthropic",
        "success",
    )
    (warned,) = said("recorded with 0 tokens")
    assert field in warned and "a probe" in warned
