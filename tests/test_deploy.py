"""Deployment files agree with each other and with the README."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT
from worker.settings import WORKER_ARGS


def procfile() -> dict[str, str]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, _, command = line.partition(":")
            out[name.strip()] = command.strip()
    return out


def compose() -> dict[str, dict[str, object]]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_procfile_has_release_worker_and_beat() -> None:
    p = procfile()
    assert p["release"] == "alembic upgrade head"
    assert p["worker"] == "celery -A worker.celery_app " + " ".join(WORKER_ARGS)
    assert p["beat"].startswith("celery -A worker.celery_app beat")


def test_compose_commands_match_the_procfile() -> None:
    p, c = procfile(), compose()
    assert c["migrate"]["command"] == p["release"]
    assert c["worker"]["command"] == p["worker"]
    assert c["beat"]["command"] == p["beat"]


def test_compose_ordering_and_health() -> None:
    c = compose()
    assert "--appendonly yes" in str(c["redis"]["command"])
    assert "--maxmemory-policy noeviction" in str(c["redis"]["command"])
    for name in ("postgres", "redis", "worker", "beat"):
        assert "healthcheck" in c[name], name
    assert c["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("worker", "beat"):
        deps = c[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}  # type: ignore[index]
        assert deps["redis"] == {"condition": "service_healthy"}  # type: ignore[index]
    assert c["flower"]["profiles"] == ["flower"]


def test_readme_shows_the_same_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in procfile().values():
        assert command in readme
    assert "make run" in readme and "make test" in readme
