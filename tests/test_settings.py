"""Settings: lazy, normalised, and failing with one line that names the variable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.client.errors import ConfigError
from worker.settings import Settings, load_settings, redact_url


@pytest.mark.parametrize("url", ["postgres://u:p@h:5432/d", "postgresql://u:p@h:5432/d"])
def test_database_url_is_normalised(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().sqlalchemy_url == "postgresql+psycopg2://u:p@h:5432/d"


def test_broker_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://a:6379/0")
    assert load_settings().broker_url == "redis://a:6379/0"
    monkeypatch.setenv("CELERY_BROKER_URL", "rediss://b:6380/1?ssl_cert_reqs=required")
    assert load_settings().broker_url == "rediss://b:6380/1?ssl_cert_reqs=required"


@pytest.mark.parametrize(
    "var,value",
    [
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "amqp://guest@localhost//"),
        ("AI_USAGE_BATCH_MAX_EVENTS", "lots"),
        ("AI_USAGE_VISIBILITY_TIMEOUT", "1"),
        ("AI_USAGE_LOG_FORMAT", "xml"),
    ],
)
def test_malformed_setting_names_the_variable(
    var: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(f"{var}: ")
    assert "\n" not in str(info.value)


def test_missing_urls_fail_when_needed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for var in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    with pytest.raises(ConfigError, match="^DATABASE_URL is not set"):
        _ = s.sqlalchemy_url
    with pytest.raises(ConfigError, match="^REDIS_URL is not set"):
        _ = s.broker_url


def test_cli_prints_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "mysql://nope/db", "REDIS_URL": "redis://x/0"}
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "report"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "ai-usage: configuration error: DATABASE_URL: Value error, expected a postgres:// or"
        " postgresql:// URL, got scheme 'mysql'"
    ]


def test_env_example_lists_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = [alias] if isinstance(alias, str) else list(alias.choices)  # type: ignore[union-attr]
        assert any(n in listed for n in names), name


def test_importing_the_app_connects_to_nothing() -> None:
    code = (
        "import worker.celery_app, worker.consumer.tasks, worker.client, worker.ledger.db, worker.cli;"
        "import sys; print('ok')"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgresql://u:p@192.0.2.1:1/x",
        "REDIS_URL": "redis://192.0.2.1:1/0",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_redact_url() -> None:
    assert redact_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_host_applications_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker deployed beside an application shares its environment: only AI_USAGE_* (and the
    # documented URLs) are ours, never a setting's bare field name.
    for var, value in {"LOG_LEVEL": "CRITICAL", "LOG_FORMAT": "pretty", "METRICS_PORT": "x",
                       "SCHEMA_MODE": "mine", "BATCH_MAX_EVENTS": "-1"}.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    s = load_settings()
    assert (s.log_level, s.log_format, s.metrics_port, s.schema_mode) == (
        "INFO",
        "text",
        0,
        "standalone",
    )
    monkeypatch.setenv("AI_USAGE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("AI_USAGE_SCHEMA", "host")
    assert (load_settings().log_level, load_settings().schema_mode) == ("DEBUG", "host")
