"""Fixtures of the conformance suite (`make test-integrations`): one real worker for the run,
and for each test a tenant of its own and a sync-mode UsageClient publishing to that worker's
Redis. The database, Redis and worker fixtures are the main suite's (tests/conftest.py)."""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.conftest import WorkerProcess, make_tenant
from tests.integrations.support import Case
from worker.client import UsageClient

# LiteLLM fetches its model cost map from GitHub when imported: no test touches the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


#: Warnings the frameworks give of themselves (the suite runs with filterwarnings=error, so a
#: warning of ours, or an unexpected one of theirs, still fails a test).
FRAMEWORK_WARNINGS = (
    # LiteLLM's own TypedDicts, built into pydantic models when its modules are imported.
    "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning",
    # LiteLLM's streaming handler reads pydantic's deprecated instance attributes.
    "ignore::DeprecationWarning:litellm.*",
    "ignore:Accessing the 'model_computed_fields' attribute on the instance:DeprecationWarning",
    "ignore:Accessing the 'model_fields' attribute on the instance:DeprecationWarning",
)


def pytest_configure(config: pytest.Config) -> None:
    for line in FRAMEWORK_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def running_worker(
    _environment: None, database_url: str, redis_url: str, tmp_root: Path
) -> Iterator[WorkerProcess]:
    """One real worker for the whole run: each test isolates by its own tenant (no table is
    emptied, no Redis db flushed under the running worker)."""
    env = {**os.environ, "AI_USAGE_BATCH_MAX_WAIT_MS": "100"}
    worker = WorkerProcess(env, tmp_root / "integrations-worker.log").start()
    yield worker
    worker.stop()


@pytest.fixture
def case(running_worker: WorkerProcess, engine: Engine, redis_url: str) -> Iterator[Case]:
    """A tenant of its own and a sync-mode client publishing to the running worker."""
    tenant: uuid.UUID = make_tenant(engine, f"conformance-{uuid.uuid4().hex[:8]}")
    usage = UsageClient(broker_url=redis_url, mode="sync")
    yield Case(tenant, usage, engine)
    usage.close()


#: The mutation check (tests/integrations/mutations.py): each entry breaks one trap's mapping
#: the way a naive integration gets it wrong; with AI_USAGE_MUTATION=<name>, the suite must fail.
MUTATIONS: dict[str, tuple[str, str, Callable[..., Any]]] = {
    # Reading `cache_creation` alone: 0 beside langchain-anthropic's ephemeral keys.
    "langchain-cache-creation": (
        "worker.client.integrations.langchain",
        "cache_writes",
        lambda details: (int(details.get("cache_creation") or 0), 0, 0),
    ),
    # Ignoring LiteLLM's cache_creation_token_details: 1-hour writes priced as 5-minute ones.
    "litellm-1h-split": ("worker.client.integrations.litellm", "cache_split", lambda _: (0, 0)),
}


@pytest.fixture(autouse=True)
def _mutation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply the mutation AI_USAGE_MUTATION names, if it is one of MUTATIONS."""
    found = MUTATIONS.get(os.environ.get("AI_USAGE_MUTATION", ""))
    if found is not None:
        module, name, broken = found
        monkeypatch.setattr(importlib.import_module(module), name, broken)
