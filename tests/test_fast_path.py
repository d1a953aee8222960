"""The schema's fast path (worker.client.fast) takes an event only when the pydantic model
would take it with the same values: the same row, the same fingerprint. Checked on generated
events whose every field is drawn from valid and invalid values of every kind, given as JSON
bytes (the worker) and as Python values (the client)."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.client import fast
from worker.client.errors import InvalidEvent
from worker.client.events import UsageEvent, parse_event
from worker.ledger.rows import _content, instant

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
U = "0b7e1c30-1111-4222-8333-444455556666"

UUIDS = [U, U.upper(), U.replace("-", ""), "{" + U + "}", "urn:uuid:" + U, U[:-1], "", 0, None]
LABELS = [
    "summarise",
    "x" * 100,
    "x" * 101,
    "",
    "日本語 🚀",
    "a\x00b",
    "\ud800",
    "\\N",
    "t\tab",
    5,
    None,
]
COUNTS = [0, 1, 1000, 2_147_483_647, 2_147_483_648, -1, True, 1.0, 1.5, "12", None]
TIMES = [
    "2026-11-20T10:00:00Z", "2026-11-20T10:00:00", "2026-11-20T19:00:00+09:00",
    "2026-11-20T10:00:00.123456Z", "2026-11-20T10:00:00.1234567Z", "2026-11-20 10:00:00Z",
    "2026-11-20", "2026-11-20T10:00Z", "2026-11-20T12:04:59Z", "2026-11-20T12:06:00Z",
    "2026-11-20t10:00:00z", "yesterday", 1_700_000_000, 1.7e12, None,
    dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 20, 10),
]  # fmt: skip
COSTS = [
    None,
    0,
    0.5,
    1,
    0.123456789,
    -0.01,
    1e12,
    1e13,
    math.inf,
    math.nan,
    True,
    "1",
    Decimal("0.5"),
]
DETAILS = [
    None, {}, {"cache_write_1h_tokens": 10}, {"web_searches": 2}, {"audio_seconds": 2.5},
    {"input_audio_tokens": 2.5}, {"Web": 1}, {"input_tokens": 1}, {"x": -1}, {"x": True},
    {f"k{i}": 1 for i in range(33)}, {"cache_write_5m_tokens": 10**6}, {"x\n": 1}, [1],
]  # fmt: skip
SUCCESS = ["success", "failure", True, False, "maybe", 1, None]

FIELDS: dict[str, list[Any]] = {
    "id": UUIDS,
    "tenant_id": UUIDS,
    "user_id": UUIDS,
    "lead_id": UUIDS,
    "operation": LABELS,
    "model": LABELS,
    "provider": LABELS,
    "input_tokens": COUNTS,
    "output_tokens": COUNTS,
    "cache_read_tokens": COUNTS,
    "cache_write_tokens": COUNTS,
    "total_tokens": COUNTS,
    "duration_ms": COUNTS,
    "cost_usd": COSTS,
    "created_at": TIMES,
    "success": SUCCESS,
    "usage_details": DETAILS,
}
BASE: dict[str, Any] = {
    "id": U,
    "tenant_id": str(uuid.uuid4()),
    "operation": "summarise",
    "model": "claude-sonnet-4-5",
    "input_tokens": 1000,
    "output_tokens": 200,
    "created_at": "2026-11-20T10:00:00Z",
}


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    event = dict(BASE)
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        event[name] = draw(st.sampled_from(FIELDS[name]))
    if draw(st.booleans()) and draw(st.booleans()):
        event.pop(draw(st.sampled_from(sorted(event))))
    if draw(st.integers(0, 20)) == 0:
        event["colour"] = "red"
    return event


def judged(payload: Any) -> UsageEvent | None:
    try:
        return parse_event(payload, NOW)
    except InvalidEvent:
        return None


def same(fast_event: fast.FastEvent, model: UsageEvent) -> None:
    for name in UsageEvent.model_fields:
        a, b = getattr(fast_event, name), getattr(model, name)
        if name == "cost_usd" and a is not None:
            a, b = float(a), float(b)
        assert (a == b and type(a) is type(b)) or name == "cost_usd", (name, a, b)
    assert _content(fast_event) == _content(model)


def as_json(payload: dict[str, Any]) -> bytes | None:
    try:
        return json.dumps(payload, default=_not_json).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return None


def _not_json(value: Any) -> Any:
    raise TypeError(type(value).__name__)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
def test_the_fast_path_takes_only_what_the_model_takes_with_the_same_values(
    payload: dict[str, Any],
) -> None:
    from_fields = fast.from_fields(dict(payload), NOW)
    if from_fields is not None:
        model = judged(payload)
        assert model is not None, payload
        same(from_fields, model)
    raw = as_json(payload)
    if raw is not None:
        from_json = fast.from_json(raw, NOW)
        if from_json is not None:
            model = judged(json.loads(raw))
            assert model is not None, raw
            same(from_json, model)


def test_the_fast_path_takes_the_common_valid_events() -> None:
    """So that the property above is not met by a fast path that takes nothing."""
    valid = [
        BASE,
        {**BASE, "user_id": str(uuid.uuid4()), "provider": "anthropic", "duration_ms": 900},
        {**BASE, "cache_read_tokens": 900, "usage_details": {"output_reasoning_tokens": 50}},
        {**BASE, "success": False, "cost_usd": 0.25, "total_tokens": 1500},
        {**BASE, "created_at": "2026-11-20T19:00:00.5+09:00"},
    ]
    for payload in valid:
        assert fast.from_json(json.dumps(payload).encode(), NOW) is not None, payload
        assert fast.from_fields(dict(payload), NOW) is not None, payload
    client_values = {**BASE, "id": uuid.uuid4(), "created_at": NOW - dt.timedelta(hours=1)}
    assert fast.from_fields(client_values, NOW) is not None


@settings(max_examples=3000, deadline=None)
@given(
    st.datetimes(
        timezones=st.sampled_from(
            [dt.UTC, None, dt.timezone(dt.timedelta(hours=-3, minutes=-30)), ZoneInfo("UTC")]
        )
    )
)
def test_a_row_s_instant_is_isoformat_byte_for_byte(at: dt.datetime) -> None:
    """The COPY text (and so every stored fingerprint) writes created_at as isoformat() did:
    msgspec's shortcut for UTC must not change a byte, microseconds of zero included."""
    assert instant(at) == at.isoformat()
    assert instant(at.replace(microsecond=0)) == at.replace(microsecond=0).isoformat()
