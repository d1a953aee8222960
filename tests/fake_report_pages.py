"""Pagination and errors shared by the fake's two providers (see tests/fake_provider_apis.py)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from typing import Any


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def rfc3339(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def page_start(query: dict[str, list[str]]) -> dt.date | None:
    """The cursor is the next bucket's start, base64 (as Anthropic's `page_MjAy...` is)."""
    cursor = query.get("page", [""])[0]
    if not cursor:
        return None
    return rfc3339(base64.b64decode(cursor.removeprefix("page_")).decode()).date()


def days_between(first: dt.date, end: dt.date, limit: int) -> list[dt.date]:
    return list(day_range(first, end))[:limit]


def day_range(first: dt.date, end: dt.date) -> Iterator[dt.date]:
    day = first
    while day < end:
        yield day
        day += dt.timedelta(days=1)


def page(data: list[dict[str, Any]], days: list[dt.date], end: dt.date) -> dict[str, Any]:
    following = days[-1] + dt.timedelta(days=1) if days else end
    more = following < end
    cursor = "page_" + base64.b64encode(f"{following.isoformat()}T00:00:00Z".encode()).decode()
    return {"data": data, "has_more": more, "next_page": cursor if more else None}
