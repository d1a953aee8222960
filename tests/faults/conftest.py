"""Fixtures of the fault suite: a throwaway PostgreSQL + Redis per test (never the shared
services), worker subprocesses against them, and the summary table printed at the end."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Landed
from tests.faults.support import Stack, build_stack


@dataclass
class SummaryRow:
    fault: str
    sent: int
    landed: int
    duplicates: int
    dead_lettered: int
    lost: int


class Summary:
    """Rows of the table printed after the suite (and written to AI_USAGE_FAULTS_SUMMARY)."""

    HEADER = ("fault", "events sent", "landed", "duplicates", "dead-lettered", "lost")

    def __init__(self) -> None:
        self.rows: list[SummaryRow] = []

    def add(
        self,
        fault: str,
        got: Landed | None = None,
        *,
        sent: int | None = None,
        dead_lettered: int = 0,
        lost: int | None = None,
    ) -> None:
        """One line. `sent` counts every event sent (good and bad); `got` is what landed of the
        good ones; `lost` defaults to good events that did not land."""
        landed = got.distinct if got else 0
        self.rows.append(
            SummaryRow(
                fault,
                sent if sent is not None else (got.sent if got else 0),
                landed,
                got.duplicates if got else 0,
                dead_lettered,
                lost if lost is not None else (got.lost if got else 0),
            )
        )

    def render(self) -> str:
        cells = [self.HEADER] + [
            (r.fault, *(str(v) for v in (r.sent, r.landed, r.duplicates, r.dead_lettered, r.lost)))
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.HEADER))]
        lines = []
        for n, row in enumerate(cells):
            lines.append(
                "| "
                + " | ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
                + " |"
            )
            if n == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


@pytest.fixture(scope="session")
def fault_summary(request: pytest.FixtureRequest) -> Iterator[Summary]:
    summary = Summary()
    yield summary
    if not summary.rows:
        return
    table = summary.render()
    target = os.environ.get("AI_USAGE_FAULTS_SUMMARY")
    if target:
        Path(target).write_text(table + "\n", encoding="utf-8")
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None:
        return
    # Session teardown runs under output capture: lift it, or the table is swallowed.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_sep("=", "fault suite summary")
        for line in table.splitlines():
            reporter.write_line(line)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Throwaway PostgreSQL and Redis (AOF on) for one test, with the database at head."""
    s = build_stack(tmp_path / "stack")
    try:
        yield s
    finally:
        s.close()
