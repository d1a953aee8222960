"""Node.js producers (docs/recording/other-languages.md): celery-node with task protocol 1 and 2 and
celery-ts (protocol 2) send events the way the manual says, to a real worker, and every event
lands priced. The npm packages (versions pinned by tests/node/package-lock.json) are installed by
this test into a temporary folder, never into the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import ROOT, WorkerProcess, wait_for
from tests.factories import event

NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        NODE is None or NPM is None,
        reason="node and npm are needed to run the Node.js producers (not found on PATH)",
    ),
]
SOURCES = ROOT / "tests" / "node"
PRODUCERS = [("celery-node", "1"), ("celery-node", "2"), ("celery-ts", "2")]


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("node")
    for name in ("package.json", "package-lock.json", "producer.js"):
        shutil.copy(SOURCES / name, folder / name)
    assert NPM is not None
    out = subprocess.run(
        [NPM, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=folder, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"npm ci failed (is the npm registry reachable?)\n{out.stderr}"
    yield folder


def priced_ids(engine: Engine, ids: list[str]) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id::text FROM ai_usage_logs"
                " WHERE id = ANY(CAST(:ids AS uuid[])) AND cost_usd > 0"
            ),
            {"ids": ids},
        )
        return set(rows.scalars())


def test_node_producers_land_every_event_priced(
    node_project: Path,
    db: Engine,
    tenant: uuid.UUID,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    sent: dict[str, list[str]] = {}
    for library, protocol in PRODUCERS:
        events = [
            event(tenant, model="gpt-4o", provider="openai", operation=f"{library}-v{protocol}")
            for _ in range(5)
        ]
        assert NODE is not None
        out = subprocess.run(
            [NODE, "producer.js", library, protocol, redis_url],
            cwd=node_project, input=json.dumps(events), capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, f"{library} v{protocol}: {out.stdout}{out.stderr}"
        assert out.stdout.strip() == "sent 4 messages"  # 3 records and one batch of 2
        sent[f"{library} v{protocol}"] = [e["id"] for e in events]
    every = [i for ids in sent.values() for i in ids]
    wait_for(lambda: priced_ids(db, every) == set(every), 60, what="every Node event priced")
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ai_usage_dead_letters")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM ai_usage_logs")).scalar() == len(every)
