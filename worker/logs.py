"""Logging: text or JSON lines (AI_USAGE_LOG_FORMAT), with secrets redacted from every line.

A log line may quote a producer's text (a dead letter's field name and reason, a model name):
in the text format every message is shown by the rule of worker.textsafe (controls, bidi and
zero-width characters as visible escapes), and the lines of a traceback each start with
TRACE_PREFIX, so no value can end a line or forge one that looks like a record. The JSON
format stays exact: json escapes every control."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from worker.settings import get_settings
from worker.textsafe import visible

# user:password@ in any URL, and password=... in DSNs and query strings.
_URL_SECRET = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_KV_SECRET = re.compile(r"(?P<key>password|passwd|secret|token)=(?P<value>[^&\s'\"]+)", re.I)
_STANDARD = set(vars(logging.makeLogRecord({})))


def redact(text: str) -> str:
    """`text` with passwords in URLs and key=value pairs replaced by ***."""
    text = _URL_SECRET.sub(r"\g<scheme>\g<user>:***@", text)
    return _KV_SECRET.sub(r"\g<key>=***", text)


#: Starts every line of a traceback or stack under a text record (a record's own line starts
#: with its timestamp).
TRACE_PREFIX = "  | "


class RedactingFormatter(logging.Formatter):
    """A text formatter that never prints a password, and prints each record as one line shown
    by the rule for untrusted text, followed by its traceback's lines (each under
    TRACE_PREFIX, each shown by the rule)."""

    def format(self, record: logging.LogRecord) -> str:
        # A copy: other handlers of the record format it their own way.
        safe = logging.makeLogRecord(vars(record))
        safe.msg, safe.args = visible(record.getMessage()), None
        safe.exc_info, safe.exc_text, safe.stack_info = None, None, None
        lines = [super().format(safe)]
        trace = []
        if record.exc_info:
            trace.append(self.formatException(record.exc_info))
        elif record.exc_text:
            trace.append(record.exc_text)
        if record.stack_info:
            trace.append(self.formatStack(record.stack_info))
        for block in trace:
            lines += [TRACE_PREFIX + visible(line) for line in block.splitlines()]
        return redact("\n".join(lines))


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
