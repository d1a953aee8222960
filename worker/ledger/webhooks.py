"""Signed webhook delivery of budget alerts.

Each POST carries the alert as JSON and `X-AI-Usage-Signature: sha256=<hex>`, the HMAC-SHA256 of
the exact body bytes under AI_USAGE_ALERT_WEBHOOK_SECRET, so that a receiver can check it came
from this pipeline (and, with the body's `alert_id`, drop a repeat). A delivery is attempted
up to `attempts` times with exponential backoff; any 2xx is success."""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

SIGNATURE_HEADER = "X-AI-Usage-Signature"
TIMEOUT_S = 5.0


def signature(secret: str, body: bytes) -> str:
    """The header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Whether `header` is the signature of `body` (constant time): what a receiver runs."""
    return hmac.compare_digest(signature(secret, body), header)


@dataclass
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
    secret: str,
    body: bytes,
    attempts: int,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST `body` to `url` until a 2xx answer or `attempts` tries."""
    error: str | None = None
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(  # noqa: S310 - the operator's configured URL
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body)},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
                if 200 <= response.status < 300:
                    return Delivery(True, attempt, None)
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt < attempts:
            sleep(backoff(attempt))
    return Delivery(False, attempts, error)
