"""The event schema: every rule of the contract (docs/recording/events.md), and errors that name the field."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from worker.client.errors import InvalidEvent
from worker.client.events import UsageEvent, parse_event


def good(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "tenant_id": str(uuid.uuid4()),
        "operation": "generate_assessment",
        "model": "claude-3-5-sonnet-20241022",
        "input_tokens": 10,
        "output_tokens": 20,
        "created_at": "2025-06-01T12:00:00Z",
    }
    base.update(over)
    return base


def test_defaults() -> None:
    e = parse_event(good())
    assert e.total_tokens == 30
    assert e.success == "success"
    assert e.cost_usd is None and e.user_id is None


def test_naive_time_is_utc_and_offsets_are_converted() -> None:
    assert parse_event(good(created_at="2025-06-01T12:00:00")).created_at == dt.datetime(
        2025, 6, 1, 12, tzinfo=dt.UTC
    )
    assert parse_event(good(created_at="2025-06-01T21:00:00+09:00")).created_at == dt.datetime(
        2025, 6, 1, 12, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    "value,expected", [(True, "success"), (False, "failure"), ("failure", "failure")]
)
def test_success_accepts_booleans(value: Any, expected: str) -> None:
    assert parse_event(good(success=value)).success == expected


def test_producer_cost_is_kept_and_total_may_exceed_sum() -> None:
    e = parse_event(good(cost_usd=0.5, total_tokens=31))
    assert e.cost_usd == 0.5 and e.total_tokens == 31


def test_message_round_trip() -> None:
    e = parse_event(good(user_id=str(uuid.uuid4()), duration_ms=5, provider="anthropic"))
    assert parse_event(e.to_message()) == e


@pytest.mark.parametrize(
    "over,field",
    [
        ({"id": "not-a-uuid"}, "id"),
        ({"tenant_id": None}, "tenant_id"),
        ({"operation": ""}, "operation"),
        ({"operation": "x" * 101}, "operation"),
        ({"model": "a\x00b"}, "model"),
        ({"model": "\ud800"}, "model"),
        ({"input_tokens": -1}, "input_tokens"),
        ({"input_tokens": "12"}, "input_tokens"),
        ({"input_tokens": True}, "input_tokens"),
        ({"output_tokens": 1.5}, "output_tokens"),
        ({"input_tokens": 2**31}, "input_tokens"),
        ({"total_tokens": 29}, "total_tokens"),
        ({"cost_usd": -0.01}, "cost_usd"),
        ({"cost_usd": float("inf")}, "cost_usd"),
        ({"duration_ms": -5}, "duration_ms"),
        ({"success": "maybe"}, "success"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": 1_700_000_000}, "created_at"),  # not read as Unix time: ISO-8601 only
        ({"created_at": 1.7e12}, "created_at"),
        (
            {"created_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()},
            "created_at",
        ),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_events_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(good(**over))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "missing",
    ["id", "tenant_id", "operation", "model", "input_tokens", "output_tokens", "created_at"],
)
def test_required_fields(missing: str) -> None:
    data = good()
    del data[missing]
    with pytest.raises(InvalidEvent, match=f"^{missing}: is required"):
        parse_event(data)


def test_clock_skew_within_five_minutes_is_accepted() -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=4)
    assert parse_event(good(created_at=soon.isoformat())).created_at == soon


def test_not_an_object() -> None:
    with pytest.raises(InvalidEvent, match="^event: expected a JSON object"):
        parse_event([1, 2])


def test_event_is_immutable() -> None:
    e = parse_event(good())
    with pytest.raises(Exception):
        e.model = "other"  # type: ignore[misc]
    assert isinstance(e, UsageEvent)
