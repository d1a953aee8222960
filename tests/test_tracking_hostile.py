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
