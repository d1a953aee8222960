"""Budget-alert webhooks: signed per the Standard Webhooks specification, POSTed with one
overall deadline, never following a redirect.

Each POST carries the alert as JSON and the specification's three headers: `webhook-id` (the
same for every delivery of one alert, redeliveries included: a receiver drops repeats by it),
`webhook-timestamp` (fresh at each attempt, in seconds since the epoch) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, under the secret
AI_USAGE_ALERT_WEBHOOK_SECRET (`whsec_<base64>`). A receiver verifies with the specification's
libraries and refuses a timestamp more than 5 minutes away from its clock (replay).

The signing is the `standardwebhooks` package's (the specification's own library); the
transport is written here, see `post`."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from standardwebhooks import Webhook as Signer

from worker.settings import webhook_url_problem

#: What a receiver should allow between our clock and its own (the specification's default).
TOLERANCE_S = 300
USER_AGENT = "ai-usage-worker (budget alerts; Standard Webhooks)"
# The ids of one deployment's alerts: a UUID5 of the alert's unique key in this namespace.
_ID_NAMESPACE = uuid.UUID("5f0c2f4e-3b7a-4c1e-9a53-6d1d2c8b7e10")
# Longest reason kept from an error's own text (a receiver can choose some of it).
_REASON_CHARS = 200


def webhook_id(tenant_id: Any, month: dt.date, threshold_pct: int) -> str:
    """The `webhook-id` of the alert of (tenant, month, threshold): derived from the alert's
    unique key, so every delivery and redelivery of it carries the same id with no column to
    store it in, and no other alert can have it."""
    key = f"{tenant_id}/{month:%Y-%m}/{int(threshold_pct)}"
    return f"alert_{uuid.uuid5(_ID_NAMESPACE, key)}"


def signed_headers(
    secret: SecretStr, msg_id: str, body: bytes, now: dt.datetime | None = None
) -> dict[str, str]:
    """The headers of one attempt: the specification's three, signed now, and the content type."""
    timestamp = int((now or dt.datetime.now(dt.UTC)).timestamp())
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    signature = Signer(secret.get_secret_value()).sign(msg_id, when, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


@dataclass(frozen=True)
class Attempt:
    """One POST: `ok` on a 2xx; else why not (`reason`), with the status if one came back."""

    ok: bool
    status: int | None
    reason: str | None


@dataclass(frozen=True)
class Delivery:
    """The outcome of one delivery: `ok`, after `attempts` POSTs, else the last `error`."""

    ok: bool
    attempts: int
    error: str | None


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): 0.5, 1, 2, ... 8."""
    return float(min(8.0, 0.5 * 2 ** (attempt - 1)))


def deliver(
    url: str,
    secret: SecretStr,
    msg_id: str,
    body: bytes,
    attempts: int,
    deadline_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST `body` until a 2xx answer or `attempts` tries, each signed afresh, waiting `backoff`
    between them (what `ai-usage budget redeliver` runs; the worker retries from its task)."""
    reason: str | None = None
    for attempt in range(1, attempts + 1):
        result = post(url, body, signed_headers(secret, msg_id, body), deadline_s)
        if result.ok:
            return Delivery(True, attempt, None)
        reason = result.reason
        if attempt < attempts:
            sleep(backoff(attempt))
    return Delivery(False, attempts, reason)


# Why http.client, by hand, and not urllib or httpx: urllib follows redirects (a 302 turns the
# POST into a body-less GET to another origin, whose 200 looked like a delivery), opens file:,
# data: and ftp: URLs, and its timeout, like httpx's and urllib3's, bounds each read, not the
# exchange, so a receiver dribbling a byte every 0.5 s holds it for as long as it likes. Here
# the exchange runs in a thread of its own and the caller waits for it at most `deadline_s`:
# past that its socket is shut down (which ends any read or write at once) and the attempt is
# a failure. Nothing is followed: a 3xx is an answer like any other non-2xx.
class _HTTPConnection(http.client.HTTPConnection):
    aborted = False

    def connect(self) -> None:
        super().connect()
        if self.aborted:  # the deadline passed while connecting
            self.close()
            raise TimeoutError("deadline passed while connecting")


class _HTTPSConnection(http.client.HTTPSConnection):
    aborted = False

    def connect(self) -> None:
        super().connect()
        if self.aborted:
            self.close()
            raise TimeoutError("deadline passed while connecting")


def connection(url: str, deadline_s: float) -> _HTTPConnection | _HTTPSConnection:
    """The (unopened) connection to a checked webhook URL's host and port."""
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    # The port always given: with none, http.client reads one from the host itself, and an
    # IPv6 literal's last group is taken for it (`[::1]` became host `:` port 1).
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    if https:
        return _HTTPSConnection(
            host, port, timeout=deadline_s, context=ssl.create_default_context()
        )
    return _HTTPConnection(host, port, timeout=deadline_s)


def post(url: str, body: bytes, headers: dict[str, str], deadline_s: float) -> Attempt:
    """One POST of `body` to `url`, over within `deadline_s` seconds whatever the receiver does.
    Every way it can fail (refused, reset, TLS, a malformed or oversized answer, a redirect, the
    deadline) is an Attempt with a reason; none raises, and no reason holds the URL."""
    problem = webhook_url_problem(url)
    if problem:
        return Attempt(False, None, f"refused URL: {problem}")
    parts = urlsplit(url)
    conn = connection(url, deadline_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    outcome: list[int | BaseException] = []

    def exchange() -> None:
        try:
            conn.request("POST", path, body=body, headers=headers)
            outcome.append(conn.getresponse().status)  # status and headers: the body is not read
        except BaseException as exc:  # every error of the receiver's making is a reason
            outcome.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=exchange, name="ai-usage-webhook", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        _abort(conn)
        thread.join(1.0)
        return Attempt(False, None, f"no complete answer within the {deadline_s:g}s deadline")
    got = outcome[0] if outcome else RuntimeError("no outcome")
    if isinstance(got, BaseException):
        return Attempt(False, None, _reason(got))
    if 200 <= got < 300:
        return Attempt(True, got, None)
    if 300 <= got < 400:
        return Attempt(False, got, f"HTTP {got}: a redirect, not followed")
    return Attempt(False, got, f"HTTP {got}")


def _abort(conn: _HTTPConnection | _HTTPSConnection) -> None:
    # The flag first, then the socket: a connect() that finishes after this sees the flag.
    conn.aborted = True
    sock = conn.sock
    if sock is not None:
        # The plain socket's shutdown, even under TLS: SSLSocket.shutdown would drop the
        # TLS object the exchange's thread may be reading with. The thread closes it.
        with contextlib.suppress(OSError):  # closed already
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failed exchange. Part of an error's text can come from the
    receiver (a malformed status line): non-printable characters are shown as escapes."""
    name = type(exc).__name__
    if isinstance(exc, http.client.BadStatusLine) and not isinstance(
        exc, http.client.RemoteDisconnected
    ):
        name = "malformed status line (BadStatusLine)"
    elif isinstance(exc, http.client.LineTooLong):
        name = "answer line too long (LineTooLong)"
    elif isinstance(exc, ConnectionRefusedError):
        name = "connection refused (ConnectionRefusedError)"
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror  # without the errno prefix
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if len(shown) > _REASON_CHARS:
        shown = shown[: _REASON_CHARS - 3] + "..."
    return f"{name}: {shown}" if shown else name
