"""One line of `ai-usage check`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.logs import redact

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return redact(f"{self.status.upper():<4} {self.name:<14} {self.detail}")


def first_line(exc: Exception) -> str:
    """The first line of an error's message, for a check's one line."""
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
