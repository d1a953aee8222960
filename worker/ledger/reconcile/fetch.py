"""GET a provider's admin report, every page, retrying 429 and 5xx within one total deadline.

httpx2 (already installed: genai-prices and both provider SDKs depend on it) does the HTTP; the
retry loop is ours. urllib3's `Retry` honours Retry-After, but it sleeps whatever the server
asks (an hour, if told so) and has no budget across attempts; httpx2's transport retries only
failed connects. A Beat task must end: here every wait, Retry-After included, is checked
against the time left, and a wait that would overrun the deadline fails at once, naming it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx2

from worker.ledger.reconcile.core import DeadlineExceeded, FetchError, printable

#: Longest pause between two attempts when the server gives no Retry-After.
MAX_BACKOFF_S = 30.0
#: A page timeout, shortened to the time left.
REQUEST_TIMEOUT_S = 60.0
#: A report of more pages than this is refused (a server that never says has_more=false).
MAX_PAGES = 1000

Params = Sequence[tuple[str, str]]


class ReportClient:
    """Reads one provider's admin API. `headers` carry the admin key: they are sent, never
    logged, stored or put in an error message."""

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: dict[str, str],
        *,
        deadline_s: float,
        transport: httpx2.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.deadline_s = deadline_s
        self._sleep = sleep
        self._clock = clock
        self._deadline = clock() + deadline_s
        self._http = httpx2.Client(headers=headers, transport=transport, follow_redirects=False)
        #: (attempts, seconds waited) of this client, for tests and the run's log.
        self.attempts = 0
        self.waits: list[float] = []

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReportClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def pages(self, path: str, params: Params) -> Iterator[tuple[dict[str, Any], dt.datetime]]:
        """Each page of `path` with when it was fetched, following `next_page` while
        `has_more` (both providers' pagination: the cursor goes back as `page`)."""
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            query = list(params) + ([("page", cursor)] if cursor else [])
            page = self.get(path, query)
            yield page, dt.datetime.now(dt.UTC)
            if not page.get("has_more"):
                return
            cursor = page.get("next_page")
            if not isinstance(cursor, str) or not cursor or cursor in seen:
                raise FetchError(
                    f"{self.name} {path}: has_more is true but next_page is"
                    f" {printable(repr(cursor), 60)}",
                    permanent=True,
                )
            seen.add(cursor)
        raise FetchError(f"{self.name} {path}: more than {MAX_PAGES} pages", permanent=True)

    def get(self, path: str, params: Params) -> dict[str, Any]:
        """One JSON object from `path`, retrying 429, 5xx and transport errors."""
        what = f"{self.name} {path}"
        failures = 0
        while True:
            left = self._deadline - self._clock()
            if left <= 0:
                raise DeadlineExceeded(
                    f"{what}: the {self.deadline_s:g}s deadline expired"
                    f" after {failures} failed attempts"
                )
            self.attempts += 1
            try:
                response = self._read(what, path, params, left)
            except httpx2.TimeoutException:
                problem, wait = "timed out", None
            except httpx2.TransportError as exc:
                problem, wait = f"{type(exc).__name__}: {printable(str(exc), 120)}", None
            else:
                if response.status_code == 200:
                    return _json(what, response)
                if response.status_code != 429 and response.status_code < 500:
                    raise FetchError(f"{what}: {_refusal(response)}", permanent=True)
                problem, wait = f"HTTP {response.status_code}", retry_after(response)
            failures += 1
            if wait is None:
                # Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... at most MAX_BACKOFF_S.
                wait = min(MAX_BACKOFF_S, 0.5 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            left = self._deadline - self._clock()
            if wait >= left:
                raise DeadlineExceeded(
                    f"{what}: {problem}; waiting {wait:g}s more would pass the"
                    f" {self.deadline_s:g}s deadline ({max(left, 0):.1f}s left)"
                )
            self.waits.append(wait)
            self._sleep(wait)

    def _read(self, what: str, path: str, params: Params, left: float) -> httpx2.Response:
        """One GET, its body read in chunks against the deadline: httpx2's timeout bounds
        each read, so a server sending a byte at a time would hold the page for as long as
        it liked."""
        timeout = min(REQUEST_TIMEOUT_S, left)
        with self._http.stream(
            "GET", self.base_url + path, params=list(params), timeout=timeout
        ) as response:
            chunks = []
            for chunk in response.iter_raw():
                chunks.append(chunk)
                if self._clock() >= self._deadline:
                    raise DeadlineExceeded(
                        f"{what}: the {self.deadline_s:g}s deadline expired while the page"
                        " was still arriving"
                    )
            # The body as received (still compressed, if it was): decoded once, by .json().
            return httpx2.Response(
                response.status_code,
                headers=response.headers,
                content=b"".join(chunks),
                request=response.request,
            )


def retry_after(response: httpx2.Response) -> float | None:
    """The wait the server asks for, in seconds: `retry-after-ms` (which both providers' SDKs
    read first), else Retry-After (delta-seconds or an HTTP date); None when neither parses."""
    millis = response.headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _json(what: str, response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise FetchError(f"{what}: the answer is not JSON", permanent=True) from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise FetchError(f"{what}: data: expected a list of buckets", permanent=True)
    return body


def _refusal(response: httpx2.Response) -> str:
    """HTTP status and the provider's own message (both wrap it in `error.message`)."""
    message = ""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
    except ValueError:
        pass
    hint = ""
    if response.status_code in (401, 403):
        hint = " (is the key an admin key of this organisation?)"
    return f"HTTP {response.status_code}{': ' + printable(message) if message else ''}{hint}"
