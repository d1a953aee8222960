"""UTC months and days: the calendar every rollup, report and retention rule is keyed on."""

from __future__ import annotations

import datetime as dt
import re


def month_start(value: dt.date | dt.datetime) -> dt.date:
    """The first day of `value`'s month (a datetime is taken in UTC)."""
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC).date() if value.tzinfo else value.date()
    return value.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    """The first day of the month after `month`'s."""
    return dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def add_months(month: dt.date, n: int) -> dt.date:
    """The first day of the month `n` months after (n < 0: before) `month`'s."""
    index = month.year * 12 + month.month - 1 + n
    return dt.date(index // 12, index % 12 + 1, 1)


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[first of month, first of next month) as UTC datetimes."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = next_month(month)
    return start, dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC)


def day_bounds(first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[first 00:00, the day after last 00:00) as UTC datetimes."""
    start = dt.datetime(first.year, first.month, first.day, tzinfo=dt.UTC)
    end = dt.datetime(last.year, last.month, last.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    return start, end


def parse_month(value: str) -> dt.date:
    """`YYYY-MM` to the first day of that month; ValueError names the expected form."""
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"month must look like YYYY-MM, got {value!r}") from None


def parse_day(value: str) -> dt.date:
    """`YYYY-MM-DD` to a date; ValueError names the expected form."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"date must look like YYYY-MM-DD, got {value!r}") from None


_AGE = re.compile(r"^(\d+)\s*(m|mo|months?)$")


def parse_age_months(value: str) -> int:
    """`13m` (or `13mo`, `13 months`) to 13; at least 1. ValueError names the expected form."""
    match = _AGE.match(value.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"age must be a number of months such as 13m, got {value!r}")
    return int(match.group(1))
