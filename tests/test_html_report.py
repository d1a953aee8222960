"""The HTML report in a real headless Chromium (Debian's `chromium`; `make browser` installs
it): every chart drawn as SVG, no script error, in the light and the dark colour scheme, and a
screenshot of each (kept in docs/ when AI_USAGE_SCREENSHOTS=1)."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import ROOT, make_tenant
from worker.cli import main as cli
from worker.ledger.budgets import set_budget
from worker.ledger.months import add_months, month_start
from worker.ledger.rollups import run_rollup

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make browser` installs Debian's)"
)
MODELS = ("claude-sonnet-4-5", "gpt-4o", "gemini-2.5-flash", "in-house-llm-v1")


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
            f"--user-data-dir={tmp / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def last_month_of_usage(db: Engine) -> dt.date:
    """Three tenants over last month, four models, one unpriced; budgets for two."""
    rng = random.Random(4)
    month = add_months(month_start(dt.datetime.now(dt.UTC)), -1)
    tenants = [make_tenant(db, name) for name in ("Acme Corp", "Initech", "Umbrella")]
    with db.begin() as conn:
        for day in range(28):
            for tenant in tenants:
                for model in MODELS:
                    n = rng.randint(0, 6)
                    for _ in range(n):
                        conn.execute(
                            text(
                                "INSERT INTO ai_usage_logs (id, tenant_id, operation, model,"
                                " input_tokens, output_tokens, total_tokens, cost_usd, success,"
                                " created_at) VALUES (:id, :t, 'chat', :m, 100, 20, 120, :c,"
                                " 'success', :at)"
                            ),
                            {
                                "id": uuid.uuid4(),
                                "t": tenant,
                                "m": model,
                                "c": None if model == "in-house-llm-v1" else rng.random() / 4,
                                "at": dt.datetime(
                                    month.year, month.month, day + 1, 12, tzinfo=dt.UTC
                                ),
                            },
                        )
    run_rollup(db, wait=True)
    set_budget(db, tenants[0], Decimal(20), [50, 80, 100])
    set_budget(db, tenants[1], Decimal(100), [80])
    return month


def test_the_html_report_renders_in_chromium_in_both_colour_schemes(
    db: Engine, tmp_path: Path
) -> None:
    month = last_month_of_usage(db)
    page = tmp_path / "report.html"
    assert cli(["report", "--html", str(page), "--month", f"{month:%Y-%m}"]) == 0
    for scheme, flags in (
        ("light", []),
        ("dark", ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"]),
    ):
        dom = chromium(tmp_path, *flags, "--dump-dom", page.as_uri())
        assert dom.returncode == 0, dom.stderr[-2000:]
        body = re.search(r"<body[^>]*>", dom.stdout)
        assert body is not None
        assert 'data-rendered="3"' in body.group(), body.group()
        assert 'data-js-errors="0"' in body.group(), body.group()
        consoles = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
        assert not [c for c in consoles if "rror" in c or "Uncaught" in c], consoles
        for chart in ("chart-tenants", "chart-daily", "chart-budgets"):
            part = dom.stdout.split(f'id="{chart}"', 1)[1].split('class="chart"', 1)[0]
            assert "main-svg" in part and 'class="point"' in part, chart
            bars = re.findall(r'<path[^>]*d="M[^"]+"[^>]*>', part)
            assert len(bars) >= 2, chart  # bars with a shape, not empty axes
        shot = tmp_path / f"report-{scheme}.png"
        taken = chromium(
            tmp_path, *flags, "--window-size=1100,1500", f"--screenshot={shot}", page.as_uri()
        )
        assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]
        if os.environ.get("AI_USAGE_SCREENSHOTS") == "1":
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copy(shot, ROOT / "docs" / shot.name)
