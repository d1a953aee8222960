"""The HTML report in a real headless Chromium (Debian's `chromium`; `make browser` installs
it): every chart drawn as server-side SVG and laid out, in the light and the dark colour
scheme, with a screenshot of each (kept in docs/reading/images/ when AI_USAGE_SCREENSHOTS=1); a month of 50
tenants and 20 models within 1 MB; the "metered vs provider" section."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import random
import re
import shutil
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import ROOT, make_tenant
from tests.fake_provider_apis import FakeProviderApis
from tests.reconcile_helpers import anthropic_event, anthropic_saw, clear_runs, days_ago
from tests.test_reconcile_ops import HAIKU, SECRET, seed
from worker.cli import main as cli
from worker.ledger.budgets import set_budget
from worker.ledger.months import add_months, month_start
from worker.ledger.rollups import run_rollup
from worker.settings import get_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make browser` installs Debian's)"
)
CHARTS = ("chart-tenants", "chart-daily", "chart-budgets")
# Appended to a copy of a page (its Content-Security-Policy removed, so that this one script
# runs): it records, on <body>, each chart's marks laid out inside the chart, the chart's own
# width, and the document's title (which a smuggled script would change).
MEASURE = """<script>
(function () {
  var out = {title: document.title, charts: {}};
  document.querySelectorAll('figure.chart').forEach(function (fig) {
    var svg = fig.querySelector('svg');
    var box = svg ? svg.getBoundingClientRect() : null;
    var marks = Array.prototype.filter.call(fig.querySelectorAll('rect.mark'), function (r) {
      // Laid out inside its chart; a bar of 0 is a line of height without width.
      var b = r.getBoundingClientRect();
      return box && (b.width > 0 || b.height > 0) && b.left >= box.left - 1 &&
        b.right <= box.right + 1 && b.top >= box.top - 1 && b.bottom <= box.bottom + 1;
    });
    out.charts[fig.id] = {drawn: marks.length,
                          width: svg ? Math.round(svg.getBoundingClientRect().width) : 0};
  });
  document.body.setAttribute('data-measured', JSON.stringify(out));
})();
</script>"""
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


def marks(page: str, chart: str) -> int:
    """The marks (bars, stacked segments) the page's SVG holds for `chart`."""
    part = page.split(f'id="{chart}"', 1)[1].split("</figure>", 1)[0]
    return len(re.findall(r'<rect class="mark ', part))


def measured(tmp: Path, page: Path, *flags: str) -> dict[str, Any]:
    """Chromium's layout of `page`: the marks with a box, per chart, and the title."""
    source = page.read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', source)
    assert csp is not None and "default-src 'none'" in csp.group()
    copy = tmp / f"measure-{page.name}"
    copy.write_text(
        source.replace(csp.group(), "").replace("</body>", MEASURE + "</body>"), encoding="utf-8"
    )
    dom = chromium(tmp, *flags, "--dump-dom", copy.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-measured="([^"]*)"', dom.stdout)
    assert found is not None, dom.stdout[-2000:]
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


@needs_chromium
def test_the_html_report_renders_in_chromium_in_both_colour_schemes(
    db: Engine, tmp_path: Path
) -> None:
    month = last_month_of_usage(db)
    page = tmp_path / "report.html"
    assert cli(["report", "--html", str(page), "--month", f"{month:%Y-%m}"]) == 0
    source = page.read_text(encoding="utf-8")
    assert "<script>" not in source and "<script src" not in source  # no script at all
    expected = {"chart-tenants": 3, "chart-budgets": 2}
    assert {c: marks(source, c) for c in expected} == expected
    assert marks(source, "chart-daily") >= 28 * 3  # a segment per priced model and day
    for scheme, flags in (
        ("light", []),
        ("dark", ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"]),
    ):
        dom = chromium(tmp_path, *flags, "--dump-dom", page.as_uri())
        assert dom.returncode == 0, dom.stderr[-2000:]
        consoles = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
        assert not [c for c in consoles if "rror" in c or "Uncaught" in c], consoles
        layout = measured(tmp_path, page, *flags)
        for chart in CHARTS:
            # Every mark has a box on screen, in a chart as wide as the page lets it be.
            assert layout["charts"][chart]["drawn"] == marks(source, chart), (chart, layout)
            assert layout["charts"][chart]["width"] > 600, (chart, layout)
        shot = tmp_path / f"report-{scheme}.png"
        taken = chromium(
            tmp_path, *flags, "--window-size=1100,1500", f"--screenshot={shot}", page.as_uri()
        )
        assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]
        if os.environ.get("AI_USAGE_SCREENSHOTS") == "1":
            (ROOT / "docs" / "reading" / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, ROOT / "docs" / "reading" / "images" / shot.name)


BIG_MODELS = [
    f"{family}-{size}-2026-0{v}"
    for family in ("claude", "gpt", "gemini", "llama", "mistral")
    for size, v in (("mini", 1), ("pro", 2), ("max", 3), ("nano", 4))
]


def a_month_of_50_tenants_and_20_models(db: Engine) -> dt.date:
    """Every one of 50 tenants calls each of 20 models on every day of last month; each tenant
    has a budget. Inserted in one statement, then rolled up."""
    month = add_months(month_start(dt.datetime.now(dt.UTC)), -1)
    tenants = [make_tenant(db, f"Tenant {i:02d} Example Holdings International") for i in range(50)]
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ai_usage_logs (id, tenant_id, operation, model, input_tokens,"
                " output_tokens, total_tokens, cost_usd, success, created_at)"
                " SELECT gen_random_uuid(), t, 'chat', m, 100, 20, 120,"
                " round((random() / 3)::numeric, 6), 'success', d + interval '12 hours'"
                " FROM unnest(CAST(:tenants AS uuid[])) t, unnest(CAST(:models AS text[])) m,"
                " generate_series(CAST(:first AS date), CAST(:last AS date), interval '1 day') d"
            ),
            {
                "tenants": [str(t) for t in tenants],
                "models": BIG_MODELS,
                "first": month,
                "last": add_months(month, 1) - dt.timedelta(days=1),
            },
        )
    run_rollup(db, wait=True)
    for i, tenant in enumerate(tenants):
        set_budget(db, tenant, Decimal(5 + i * 7), [50, 80, 100])
    return month


def test_a_month_of_50_tenants_and_20_models_is_within_1_mb(db: Engine, tmp_path: Path) -> None:
    assert len(BIG_MODELS) == 20
    month = a_month_of_50_tenants_and_20_models(db)
    page = tmp_path / "big.html"
    assert cli(["report", "--html", str(page), "--month", f"{month:%Y-%m}"]) == 0
    size = page.stat().st_size
    print(f"report --html, 50 tenants x 20 models: {size} bytes")
    assert size <= 1_000_000, size
    source = page.read_text(encoding="utf-8")
    days = (add_months(month, 1) - month).days
    assert marks(source, "chart-tenants") == 50 and marks(source, "chart-budgets") == 50
    assert marks(source, "chart-daily") == 20 * days
    assert "http://" not in source.replace("http://www.w3.org", "")  # nothing outside the file


def test_the_page_shows_the_months_reconciliation_drift_first(
    db: Engine, tenant: uuid.UUID, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ai-usage reconcile` against the fake Admin API (tests/fake_provider_apis.py), then the
    page: its "metered vs provider" rows are the run's verdicts, those that drift first."""
    clear_runs(db)
    with FakeProviderApis(anthropic_key=SECRET) as fake:
        monkeypatch.setenv("ANTHROPIC_ADMIN_API_KEY", SECRET)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url)
        monkeypatch.delenv("AI_USAGE_RECONCILE_SCOPE", raising=False)
        get_settings.cache_clear()
        try:
            day = seed(db, tenant, fake)
            run_rollup(db, wait=True)
            page = tmp_path / "r.html"
            month = ["--month", f"{day:%Y-%m}"]
            assert cli(["report", "--html", str(page), *month]) == 0
            assert 'id="reconciliation-none"' in page.read_text(encoding="utf-8")
            args = ["reconcile", "--provider", "anthropic", "--from", f"{day}", "--to", f"{day}"]
            assert cli(args) == 0
            # A call the provider saw and we did not: the day drifts.
            missed = anthropic_event(tenant, HAIKU, days_ago(3, 1), uncached=500)
            anthropic_saw(fake, [missed], HAIKU)
            assert cli(args) == 1
            assert cli(["report", "--html", str(page), *month]) == 0
        finally:
            get_settings.cache_clear()
            clear_runs(db)
    source = page.read_text(encoding="utf-8")
    table = source.split('id="reconciliation-table"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 7, rows  # Anthropic's seven measures for the one day and model
    drifting = [r for r in rows if 'class="differs"' in r]
    assert drifting and all("under_metered" in r for r in drifting), rows
    assert rows[: len(drifting)] == drifting  # those that drift first
    assert all('<bdi class="name" title="match">match</bdi>' in r for r in rows[len(drifting) :])
    assert f"7 rows, {len(drifting)} that drift" in source
