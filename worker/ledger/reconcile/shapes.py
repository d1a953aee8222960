"""Reading the providers' report pages field by field: a malformed answer is refused with the
path of the field (`data[0].results[2].output_tokens: ...`), never read as zero."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from worker.ledger.reconcile.core import FetchError, printable


def bad(what: str, where: str, problem: str) -> FetchError:
    return FetchError(f"{what}: {where}: {problem}", permanent=True)


def buckets(
    what: str, page: dict[str, Any], start_key: str, end_key: str
) -> Iterator[tuple[dt.datetime, dt.datetime, str, list[tuple[str, dict[str, Any]]]]]:
    """Each bucket of a page: its start and end (UTC), its path, and its results with theirs.
    Anthropic names the list `results`; OpenAI's wire JSON does too, its SDK pages `result`."""
    for i, bucket in enumerate(page["data"]):
        where = f"data[{i}]"
        if not isinstance(bucket, dict):
            raise bad(what, where, "expected an object")
        start = instant(what, f"{where}.{start_key}", bucket.get(start_key))
        end = instant(what, f"{where}.{end_key}", bucket.get(end_key))
        key = "results" if "results" in bucket else "result"
        results = bucket.get(key)
        if not isinstance(results, list):
            raise bad(what, f"{where}.results", "expected a list")
        rows: list[tuple[str, dict[str, Any]]] = []
        for j, result in enumerate(results):
            if not isinstance(result, dict):
                raise bad(what, f"{where}.{key}[{j}]", "expected an object")
            rows.append((f"{where}.{key}[{j}]", result))
        yield start, end, where, rows


def instant(what: str, where: str, value: Any) -> dt.datetime:
    """An RFC 3339 string (Anthropic) or Unix seconds (OpenAI), as an aware UTC datetime."""
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(dt.UTC)
    raise bad(what, where, f"expected a UTC time, got {printable(repr(value), 60)}")


def day_of(what: str, where: str, start: dt.datetime, end: dt.datetime) -> dt.date:
    """The UTC day a daily bucket covers; a bucket that is not one UTC day is refused."""
    if start.time() != dt.time(0) or end - start != dt.timedelta(days=1):
        raise bad(what, where, f"expected a bucket of one UTC day, got {start} to {end}")
    return start.date()


def count(what: str, where: str, result: dict[str, Any], key: str) -> int:
    """A whole, non-negative count; absent or null counts as 0 (fields newer than a report)."""
    value = result.get(key)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise bad(what, f"{where}.{key}", f"expected a count, got {printable(repr(value), 60)}")


def nested(what: str, where: str, result: dict[str, Any], key: str) -> dict[str, Any]:
    """An object field (absent or null: empty)."""
    value = result.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise bad(what, f"{where}.{key}", "expected an object")


def text_field(what: str, where: str, result: dict[str, Any], key: str) -> str | None:
    """A string field, or None when absent or null (a dimension not grouped by)."""
    value = result.get(key)
    if value is None or isinstance(value, str):
        return value
    raise bad(what, f"{where}.{key}", f"expected a string or null, got {type(value).__name__}")


def amount(what: str, where: str, value: Any) -> Decimal:
    """A decimal amount given as a string (Anthropic's cents) or a number (OpenAI's dollars)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise bad(what, where, f"expected a decimal amount, got {printable(repr(value), 60)}")
    try:
        # str() first: a float's shortest repr, not its binary expansion.
        number = Decimal(str(value))
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        raise bad(what, where, f"expected a decimal amount, got {printable(repr(value), 60)}")
    return number


def in_scope(
    what: str, where: str, result: dict[str, Any], pairs: Iterable[tuple[Sequence[str], str]]
) -> bool:
    """Whether `result` lies in the scope: for each (ids, field) with ids, its field is one of
    them. The provider applies the filter; a result outside it is still left out here."""
    return all(not ids or text_field(what, where, result, key) in ids for ids, key in pairs)
