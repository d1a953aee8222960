"""One line of `ai-usage check`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.logs import redact
from worker.textsafe import visible

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        """The check as one line: the detail may quote a provider's error or model names, so
        it is shown by the rule for untrusted text (a newline in it cannot forge a check)."""
        return redact(visible(f"{self.status.upper():<4} {self.name:<14} {self.detail}"))


def first_line(exc: Exception) -> str:
    """The first line of an error's message, for a check's one line."""
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
