"""Errors raised by ai-usage-worker.

Permanent errors (bad input) are dead-lettered; transient errors (a server is down) are retried.
"""

from __future__ import annotations


class AIUsageError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AIUsageError):
    """Raised when a setting is missing or malformed; the message names the variable."""


class InvalidEvent(AIUsageError, ValueError):
    """Raised when a usage event fails validation; the message names the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TransientError(AIUsageError):
    """Raised when a dependency (database or broker) is unavailable and the work should be retried."""
