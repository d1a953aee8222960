"""Hypothesis strategies for bad usage events, one per kind of badness, and a generator that
draws many of them under pytest's filterwarnings=error (no `.example()`: an inner @given
test collects what it is given)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from worker.client.events import UsageEvent

UUID_FIELDS = ("id", "tenant_id", "user_id", "assessment_id", "lead_id")
LABELS = ("operation", "model", "provider")
COUNTS = ("input_tokens", "output_tokens", "total_tokens", "duration_ms")
REQUIRED = ("id", "tenant_id", "operation", "model", "input_tokens", "output_tokens", "created_at")
KNOWN = frozenset(UsageEvent.model_fields)
#: Field names of dead letters that are not about one field: the message, or the event.
RESERVED = KNOWN | {"message", "event"}


@dataclass
class Bad:
    """One bad event: which kind of badness, the field its rejection must name, and how to
    change a valid event into it."""

    kind: str
    field: str
    apply: Callable[[dict[str, Any]], None]


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(event: dict[str, Any]) -> None:
        event[field] = value

    return apply


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


_junk = st.one_of(
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_not_uuid = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    _junk,
    st.text(max_size=40).filter(lambda s: not _is_uuid(s)),
)
_not_label = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), _junk)
_not_count = st.one_of(
    st.text(max_size=10), st.floats(allow_nan=False), st.booleans(), _junk
)  # 1.0 and True are refused too: the counts are strict integers
_not_cost = st.one_of(st.text(max_size=10), st.booleans(), _junk)
_not_success = st.one_of(
    st.text(max_size=10).filter(lambda s: s not in ("success", "failure")),
    st.integers(),
    st.none(),
    _junk,
)
# Letters only: a digit string would be read as a Unix time.
_not_datetime = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=12),
    st.booleans(),
    st.none(),
    _junk,
)


@st.composite
def wrong_type(draw: st.DrawFn) -> Bad:
    field = draw(st.sampled_from((*UUID_FIELDS, *LABELS, *COUNTS, "cost_usd", "success")))
    value: object
    if field in UUID_FIELDS:
        value = draw(_not_uuid)
        if field in REQUIRED:
            value = draw(st.one_of(st.just(None), st.just(value)))
    elif field in LABELS:
        value = draw(_not_label)
    elif field in COUNTS:
        value = draw(_not_count)
    elif field == "cost_usd":
        value = draw(_not_cost)
    else:
        value = draw(_not_success)
    return Bad("wrong type", field, _set(field, value))


@st.composite
def created_at_wrong_type(draw: st.DrawFn) -> Bad:
    return Bad("wrong type", "created_at", _set("created_at", draw(_not_datetime)))


@st.composite
def missing(draw: st.DrawFn) -> Bad:
    field = draw(st.sampled_from(REQUIRED))
    return Bad("missing field", field, lambda e: e.pop(field))


def _spliced(bad_chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.text(max_size=20), bad_chars, st.text(max_size=20)).map("".join)


@st.composite
def nul_bytes(draw: st.DrawFn) -> Bad:
    field = draw(st.sampled_from(LABELS))
    value = draw(_spliced(st.text(alphabet="\x00", min_size=1, max_size=3)))
    return Bad("NUL byte", field, _set(field, value))


@st.composite
def lone_surrogate(draw: st.DrawFn) -> Bad:
    field = draw(st.sampled_from(LABELS))
    surrogate = st.integers(0xD800, 0xDFFF).map(chr)
    return Bad("lone surrogate", field, _set(field, draw(_spliced(surrogate))))


@st.composite
def negative(draw: st.DrawFn) -> Bad:
    field = draw(st.sampled_from((*COUNTS, "cost_usd")))
    if field == "cost_usd":
        value: Any = draw(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))
    else:
        value = draw(st.integers(max_value=-1))
    return Bad("negative", field, _set(field, value))


@st.composite
def total_below_sum(draw: st.DrawFn) -> Bad:
    inp = draw(st.integers(1, 1_000_000))
    out = draw(st.integers(0, 1_000_000))
    total = draw(st.integers(0, inp + out - 1))

    def apply(event: dict[str, Any]) -> None:
        event.update(input_tokens=inp, output_tokens=out, total_tokens=total)

    return Bad("total below sum", "total_tokens", apply)


@st.composite
def in_the_future(draw: st.DrawFn) -> Bad:
    ahead = draw(st.integers(6 * 60, 20 * 365 * 86400))
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ahead)
    return Bad("future timestamp", "created_at", _set("created_at", when.isoformat()))


@st.composite
def unknown_field(draw: st.DrawFn) -> Bad:
    # Any text: NUL bytes, lone surrogates and names longer than any column included.
    name = draw(st.text(min_size=1, max_size=120).filter(lambda s: s not in RESERVED))
    value = draw(st.one_of(st.integers(), st.text(max_size=10), st.none(), _junk))
    return Bad("unknown field", name, _set(name, value))


STRATEGIES: dict[str, st.SearchStrategy[Bad]] = {
    "wrong type": st.one_of(wrong_type(), created_at_wrong_type()),
    "missing field": missing(),
    "NUL byte": nul_bytes(),
    "lone surrogate": lone_surrogate(),
    "negative": negative(),
    "total below sum": total_below_sum(),
    "future timestamp": in_the_future(),
    "unknown field": unknown_field(),
}


def draw_many(strategy: st.SearchStrategy[Bad], n: int, generate: int | None = None) -> list[Bad]:
    """`n` values of `strategy`: `generate` (default `n`) drawn by Hypothesis, then cycled
    (also if Hypothesis runs out of distinct values first)."""
    out: list[Bad] = []

    @settings(
        max_examples=generate or n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(bad: Bad) -> None:
        out.append(bad)

    collect()
    assert out, "hypothesis generated nothing"
    return [out[i % len(out)] for i in range(n)]
