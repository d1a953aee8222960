"""Logging: text or JSON lines (AI_USAGE_LOG_FORMAT), with secrets redacted from every line."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from worker.settings import get_settings

# user:password@ in any URL, and password=... in DSNs and query strings.
_URL_SECRET = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_KV_SECRET = re.compile(r"(?P<key>password|passwd|secret|token)=(?P<value>[^&\s'\"]+)", re.I)
_STANDARD = set(vars(logging.makeLogRecord({})))


def redact(text: str) -> str:
    """`text` with passwords in URLs and key=value pairs replaced by ***."""
    text = _URL_SECRET.sub(r"\g<scheme>\g<user>:***@", text)
    return _KV_SECRET.sub(r"\g<key>=***", text)


class RedactingFormatter(logging.Formatter):
    """A text formatter that never prints a password."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields (e.g. `batch`) are kept."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Install one stderr handler on the root logger."""
    settings = get_settings()
    handler = logging.StreamHandler(sys.stderr)
    if (fmt or settings.log_format) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
