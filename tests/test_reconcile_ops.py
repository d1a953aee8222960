"""Reconciliation in operation: the CLI's errors and exit codes, the admin key never logged,
stored or printed, the `ai-usage check` line, the Beat task and its drift gauges. Rows are
written by the ledger's own write_batch into the real PostgreSQL (the worker path is
tests/test_reconcile_e2e.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import httpx2
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from tests.conftest import ROOT
from tests.fake_provider_apis import FakeProviderApis
from tests.reconcile_helpers import (
    RECONCILE_TABLES,
    anthropic_event,
    anthropic_saw,
    clear_runs,
    days_ago,
    no_runs_left,  # noqa: F401 - a fixture, used by pytestmark
    options,
)
from worker.cli import main
from worker.health.reconcile import check_reconcile
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer
from worker.ledger.reconcile import (
    FetchError,
    options_from_settings,
    reconcile,
    reconcile_configured,
)
from worker.settings import get_settings, load_settings

SECRET = "sk-ant-admin01-THIS-MUST-NEVER-SHOW-UP"
HAIKU = "claude-3-5-haiku-20241022"
pytestmark = pytest.mark.usefixtures("no_runs_left")


@pytest.fixture
def fake() -> Iterator[FakeProviderApis]:
    with FakeProviderApis(anthropic_key=SECRET) as f:
        yield f


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake: FakeProviderApis) -> Iterator[None]:
    """The CLI's and the task's settings pointed at the fake."""
    monkeypatch.setenv("ANTHROPIC_ADMIN_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url)
    monkeypatch.delenv("AI_USAGE_RECONCILE_SCOPE", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def seed(db: Engine, tenant: uuid.UUID, fake: FakeProviderApis, missed: int = 0) -> dt.date:
    """Three days ago (past the 48 h lag): one Haiku call stored; the provider saw it and
    `missed` more."""
    day = days_ago(3, hour=1)
    e = anthropic_event(tenant, HAIKU, day, uncached=1000, output=100)
    assert write_batch(db, [e], Pricer()).counts()["inserted"] == 1
    anthropic_saw(fake, [e] * (1 + missed), HAIKU)
    clear_runs(db)
    return day.date()


def dump_reconcile_tables(db: Engine) -> str:
    with db.connect() as conn:
        return "\n".join(
            str(row[0])
            for table in RECONCILE_TABLES
            for row in conn.execute(text(f"SELECT t::text FROM {table} t"))
        )


def test_exit_codes_and_the_key_never_shown(
    db: Engine,
    tenant: uuid.UUID,
    fake: FakeProviderApis,
    env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    day = seed(db, tenant, fake).isoformat()
    args = ["reconcile", "--provider", "anthropic", "--from", day, "--to", day]
    assert main([*args, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    header, *lines = out.strip().splitlines()  # CSV lines end with CRLF
    assert header == "day,model,measure,metered,reported,status,detail"
    assert len(lines) == 7 and all(",match," in line for line in lines)

    # A call the provider saw and we did not: exit 1.
    anthropic_saw(fake, [anthropic_event(tenant, HAIKU, days_ago(3, 1), uncached=500)], HAIKU)
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "under_metered" in out and err == ""

    # Usage errors (2), each one line naming the flag or setting.
    assert main([*args, "--workspace-id", "wrkspc_1", "--project-id", "proj_1"]) == 2
    assert "--project-id: anthropic has no project_ids" in capsys.readouterr().err
    assert main([*args[:-2], "--to", "2000-01-01"]) == 2
    assert "is before --from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_day:
        main([*args[:-2], "--to", "yesterday"])
    assert bad_day.value.code == 2
    monkeypatch.setenv("ANTHROPIC_ADMIN_API_KEY", "sk-ant-admin01-WRONG")
    get_settings.cache_clear()
    assert main(args) == 2
    assert "HTTP 401: invalid x-api-key" in capsys.readouterr().err
    monkeypatch.delenv("ANTHROPIC_ADMIN_API_KEY")
    get_settings.cache_clear()
    assert main(args) == 2
    assert "ANTHROPIC_ADMIN_API_KEY is not set" in capsys.readouterr().err

    # The provider unreachable: 3, after the deadline.
    monkeypatch.setenv("ANTHROPIC_ADMIN_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AI_USAGE_RECONCILE_DEADLINE_S", "1")
    get_settings.cache_clear()
    assert main(args) == 3
    assert "deadline" in capsys.readouterr().err

    # The key is sent (the fake checked it) but never stored or printed.
    assert SECRET not in dump_reconcile_tables(db)
    assert SECRET not in repr(load_settings())
    with db.connect() as conn:
        outcomes = conn.execute(
            text("SELECT outcome, error FROM ai_usage_reconcile_runs ORDER BY id")
        ).all()
    assert [o for o, _ in outcomes] == ["ok", "ok", "failed", "failed"]
    assert "HTTP 401" in outcomes[2][1]


def test_the_key_is_never_logged(
    db: Engine,
    tenant: uuid.UUID,
    fake: FakeProviderApis,
    env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed(db, tenant, fake)
    caplog.set_level(logging.DEBUG)  # httpx2's and httpcore2's own debug lines included
    fake.fail_next("/v1/organizations/cost_report", 503)
    assert (
        len(reconcile_configured(db, load_settings(AI_USAGE_RECONCILE_PROVIDERS="anthropic"))) == 1
    )
    wrong = load_settings(ANTHROPIC_ADMIN_API_KEY="sk-ant-admin01-wrong-but-secret")
    outcome = reconcile_configured(
        db, wrong.model_copy(update={"reconcile_providers": "anthropic"})
    )
    assert outcome[0].error is not None and "HTTP 401" in outcome[0].error
    assert caplog.records, "nothing was logged: the test would prove nothing"
    assert "reconcile anthropic" in caplog.text and "HTTP 401" in caplog.text
    assert SECRET not in caplog.text and "wrong-but-secret" not in caplog.text
    assert "wrong-but-secret" not in dump_reconcile_tables(db)


def test_a_runs_options_never_show_the_key() -> None:
    # A traceback with locals, or a log line of the options, prints their repr.
    settings = load_settings(ANTHROPIC_ADMIN_API_KEY="sk-ant-admin01-shown-nowhere")
    options = options_from_settings(settings, "anthropic")
    assert options.admin_key == "sk-ant-admin01-shown-nowhere"
    assert "shown-nowhere" not in repr(options) and "shown-nowhere" not in str(options)


def test_check_warns_while_a_judged_day_drifts(
    db: Engine, tenant: uuid.UUID, fake: FakeProviderApis, env: None
) -> None:
    settings = load_settings(AI_USAGE_RECONCILE_PROVIDERS="anthropic,openai")
    day = seed(db, tenant, fake, missed=1)
    assert [c.line() for c in check_reconcile(db, settings)] == [
        "WARN reconcile      anthropic: has never run (is beat running?)",
        "WARN reconcile      openai: has never run (is beat running?)",
    ]
    reconcile(db, "anthropic", day, day, options(fake, "anthropic"))
    anthropic_line = check_reconcile(db, settings)[0]
    assert anthropic_line.status == "warn"
    assert f"anthropic: 3 rows drift on 1 days ({day} to {day}; {HAIKU})" in anthropic_line.detail
    # The provider's late correction arrives; a later run of the day clears the warning.
    fake.anthropic_usage.pop()
    fake.anthropic_costs[2:] = []
    reconcile(db, "anthropic", day, day, options(fake, "anthropic"))
    assert (
        check_reconcile(db, settings)[0]
        .line()
        .startswith("OK   reconcile      anthropic: no judged day drifts")
    )
    # A failed run after it is said.
    with pytest.raises(FetchError):
        reconcile(db, "anthropic", day, day, replace(options(fake, "anthropic"), admin_key="sk-x"))
    assert "anthropic: last run" in check_reconcile(db, settings)[0].detail


def test_the_beat_task_sets_the_drift_gauges(
    db: Engine,
    tenant: uuid.UUID,
    fake: FakeProviderApis,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(db, tenant, fake, missed=1)  # the provider saw twice what we stored
    monkeypatch.setenv("AI_USAGE_RECONCILE_PROVIDERS", "anthropic")
    get_settings.cache_clear()
    from worker.consumer.tasks import reconcile as task

    summary = task.run()
    assert summary["anthropic"]["drifting"] == 3
    gauge = "ai_usage_reconcile_drift_ratio"
    for measure in ("input_tokens", "output_tokens", "cost_usd"):
        value = REGISTRY.get_sample_value(gauge, {"provider": "anthropic", "measure": measure})
        assert value == pytest.approx(-0.5), measure
    assert (
        REGISTRY.get_sample_value(gauge, {"provider": "anthropic", "measure": "web_searches"}) == 0
    )
    rows = REGISTRY.get_sample_value("ai_usage_reconcile_drifting_rows", {"provider": "anthropic"})
    assert rows == 3


def test_beat_schedules_the_task_only_when_providers_are_named() -> None:
    code = (
        "import json, worker.consumer.config as c;"
        " s = c.beat_schedule.get('ai-usage-reconcile');"
        " print(json.dumps(s and [s['task'], str(s['schedule'])]))"
    )
    seen = []
    for providers in ("anthropic,openai", ""):
        env = {**os.environ, "AI_USAGE_RECONCILE_PROVIDERS": providers}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        seen.append(json.loads(done.stdout))
    assert seen[0][0] == "ai_usage.reconcile" and "30 6" in seen[0][1]
    assert seen[1] is None
    bad = {**os.environ, "AI_USAGE_RECONCILE_PROVIDERS": "anthropic,gemini"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=bad, capture_output=True, text=True
    )
    assert done.returncode != 0 and "AI_USAGE_RECONCILE_PROVIDERS" in done.stderr


class Broken(httpx2.BaseTransport):
    """A transport that fails in a way no retry knows (a bug, say)."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError("boom\nsecond line")


def test_a_run_that_breaks_is_recorded_failed(db: Engine, fake: FakeProviderApis) -> None:
    day = days_ago(3).date()
    with pytest.raises(RuntimeError):
        reconcile(
            db, "anthropic", day, day, replace(options(fake, "anthropic"), transport=Broken())
        )
    with db.connect() as conn:
        run = conn.execute(text("SELECT outcome, error FROM ai_usage_reconcile_runs")).one()
    assert tuple(run) == ("failed", "RuntimeError: boom")
