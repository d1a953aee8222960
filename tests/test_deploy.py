"""Deployment files agree with each other and with the README; compose is valid (`docker compose
config` where docker has compose, else the compose-spec schema check-jsonschema ships) and scales."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
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


def compose() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"
    ]
    return services


def test_procfile_has_release_worker_and_beat() -> None:
    p = procfile()
    assert p["release"] == "ai-usage migrate"  # works from the wheel, in any directory
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
        assert deps["migrate"] == {"condition": "service_completed_successfully"}
        assert deps["redis"] == {"condition": "service_healthy"}
    assert c["flower"]["profiles"] == ["flower"]


def test_readme_shows_the_same_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in procfile().values():
        assert command in readme
    assert "make run" in readme and "make test" in readme


def docker_compose() -> list[str] | None:
    """`docker compose` if this machine's docker has the compose plugin (no engine needed)."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    ok = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    return [docker, "compose"] if ok.returncode == 0 else None


def test_compose_file_is_valid() -> None:
    compose_cli = docker_compose()
    if compose_cli is not None:
        for profile in ([], ["--profile", "flower"]):
            out = subprocess.run(
                [*compose_cli, "-f", "docker-compose.yml", *profile, "config", "--quiet"],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
    # Always, docker or not: the compose-spec JSON schema (bundled in check-jsonschema, so
    # nothing is fetched), which refuses unknown keys and wrong types.
    check = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(check), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_schema_check_can_fail(tmp_path: Path) -> None:
    bad = (ROOT / "docker-compose.yml").read_text().replace("expose:", "exposes:")
    (tmp_path / "docker-compose.yml").write_text(bad)
    check = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(check), "--builtin-schema", "vendor.compose-spec", str(tmp_path / "docker-compose.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 1 and "'exposes' was unexpected" in out.stdout


def test_compose_scales_restarts_and_keeps_flower_local() -> None:
    c = compose()
    for name in ("postgres", "redis", "worker", "beat", "flower"):
        assert c[name]["restart"] == "unless-stopped", name
    # `--scale worker=3`: no fixed host port and no container name on a scaled service.
    for name in ("worker", "beat", "migrate"):
        assert "ports" not in c[name] and "container_name" not in c[name], name
    assert c["worker"]["expose"] == ["9808"]
    # Flower shows every payload and can shut workers down: the Docker host's loopback only.
    ports = c["flower"]["ports"]
    assert isinstance(ports, list) and ports and all(str(p).startswith("127.0.0.1:") for p in ports)


def test_image_installs_the_wheel_and_migrates_as_its_release_step() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    runs = [line for line in lines if line.startswith("RUN ")]
    assert any("pip wheel" in r and "--wheel-dir /dist" in r for r in runs)
    assert any('pip install "$(ls /dist/*.whl)[worker,redbeat]"' in r for r in runs)
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert not any(line.startswith("COPY") and "--from=build" not in line for line in final)
    assert lines[-1] == 'CMD ["ai-usage", "migrate"]'


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("worker/client/publisher.py", True),
        ("alembic/versions/x.py", True),
        (".env", False),
        (".venv/bin/python", False),
        (".git/HEAD", False),
        ("worker/__pycache__/x.pyc", False),
        ("tests/node/node_modules/x.js", False),
        (".run/postgres/PG_VERSION", False),
    ],
)
def test_dockerignore_keeps_secrets_and_state_out(path: str, sent: bool) -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert dockerignored(path, rules) is not sent


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule, simply: a pattern excluding a folder excludes what is in it, `**/` matches
    at any depth, the last matching rule wins and `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    anywhere = [
        "/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)
    ]
    excluded = False
    for rule in rules:
        pattern = rule.removeprefix("!")
        deep = pattern.startswith("**/")
        candidates = anywhere if deep else prefixes
        if any(fnmatch.fnmatchcase(c, pattern.removeprefix("**/")) for c in candidates):
            excluded = not rule.startswith("!")
    return excluded
