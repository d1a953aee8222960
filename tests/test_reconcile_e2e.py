"""Reconciliation end to end: events sent through a real worker into a real PostgreSQL, the
provider's side served by the fake of its report API, each status proven."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from tests.conftest import WorkerProcess, count_rows, wait_for
from tests.fake_provider_apis import AnthropicUsage, FakeProviderApis, OpenAIUsage
from tests.reconcile_helpers import (
    anthropic_event,
    anthropic_saw,
    clear_runs,
    days_ago,
    no_runs_left,  # noqa: F401 - a fixture, used by pytestmark
    openai_event,
    openai_saw,
    options,
    statuses,
)
from worker.ledger.reconcile import MEASURES, Scope, latest_rows, reconcile

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_runs_left")]

SONNET_ALIAS = "claude-sonnet-4-0"  # what our producers recorded
SONNET_DATED = "claude-sonnet-4-20250514"  # what Anthropic reports: the same price entry
HAIKU = "claude-3-5-haiku-20241022"


@pytest.fixture
def fake() -> Iterator[FakeProviderApis]:
    with FakeProviderApis() as f:
        yield f


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("some-other-service", broker=redis_url, set_as_current=False)
    app.conf.task_serializer = "json"
    yield app
    app.close()


def send(db: Engine, producer: Celery, events: list[dict[str, Any]]) -> None:
    before = count_rows(db)
    producer.send_task("ai_usage.record_batch", args=[events], queue="ai_usage")
    wait_for(lambda: count_rows(db) == before + len(events), 60, what="events stored")
    assert count_rows(db, "ai_usage_dead_letters") == 0


def test_anthropic_match_under_metered_provisional_and_scope(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    start_worker: Callable[..., WorkerProcess],
    fake: FakeProviderApis,
) -> None:
    clear_runs(db)
    start_worker()
    d1, d2, today = days_ago(5), days_ago(4), days_ago(0, hour=0)
    matched = [
        anthropic_event(
            tenant, SONNET_ALIAS, d1, uncached=500, read=200, w5=100, w1=200, output=500, web=2
        ),
        anthropic_event(tenant, SONNET_ALIAS, d1, uncached=3000, output=100),
        anthropic_event(tenant, HAIKU, d1, uncached=400, output=50),
        anthropic_event(tenant, SONNET_ALIAS, d2, uncached=700, read=1000, output=80),
    ]
    haiku_d2 = anthropic_event(tenant, HAIKU, d2, uncached=900, output=120)
    late = anthropic_event(tenant, HAIKU, today, uncached=300, output=30)
    send(db, producer, [*matched, haiku_d2, late])
    # The provider saw all that, and on d2 two Haiku calls more than we stored.
    anthropic_saw(fake, [e for e in matched if e["model"] == SONNET_ALIAS], SONNET_DATED)
    anthropic_saw(fake, [e for e in matched if e["model"] == HAIKU], HAIKU)
    anthropic_saw(fake, [haiku_d2, haiku_d2, haiku_d2], HAIKU)
    # Today the provider has reported only part of it yet (its batches lag).
    anthropic_saw(fake, [anthropic_event(tenant, HAIKU, today, uncached=100, output=10)], HAIKU)

    first = reconcile(db, "anthropic", d1.date(), today.date(), options(fake, "anthropic"))
    rows = first.rows
    every = set(MEASURES["anthropic"])
    # Events that match the provider's buckets: match on every measure, alias or dated id.
    assert statuses(rows, d1.date(), SONNET_DATED) == dict.fromkeys(every, "match")
    assert statuses(rows, d1.date(), HAIKU) == dict.fromkeys(every, "match")
    assert statuses(rows, d2.date(), SONNET_DATED) == dict.fromkeys(every, "match")
    # Web searches are billed on a line of their own: compared per day, not per model.
    assert statuses(rows, d1.date(), "(web search)") == {"cost_usd": "match"}
    # Missed calls: under_metered on that model and those measures only.
    missed = statuses(rows, d2.date(), HAIKU)
    assert {m for m, s in missed.items() if s != "match"} == {
        "input_tokens",
        "output_tokens",
        "cost_usd",
    }
    assert {missed[m] for m in ("input_tokens", "output_tokens", "cost_usd")} == {"under_metered"}
    haiku_input = next(
        r for r in rows if (r.day, r.model, r.measure) == (d2.date(), HAIKU, "input_tokens")
    )
    assert [haiku_input.metered, haiku_input.reported] == [Decimal(900), Decimal(2700)]
    # Within the lag: provisional, not a false alarm.
    assert set(statuses(rows, today.date(), HAIKU).values()) == {"provisional"}
    assert {r.status for r in first.drifting()} == {"under_metered"}
    with db.connect() as conn:
        raw = conn.execute(
            text(
                "SELECT count(*), min(fetched_at) FROM ai_usage_reconcile_buckets WHERE run_id = :r"
            ),
            {"r": first.run_id},
        ).one()
    assert raw[0] == first.raw_results > 0 and raw[1] is not None

    # The late data arrives; a later run judges the day, and the history keeps both verdicts.
    anthropic_saw(fake, [anthropic_event(tenant, HAIKU, today, uncached=200, output=20)], HAIKU)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    second = reconcile(
        db, "anthropic", today.date(), today.date(), options(fake, "anthropic"), now=later
    )
    assert statuses(second.rows, today.date(), HAIKU) == dict.fromkeys(every, "match")
    with db.connect() as conn:
        history = conn.execute(
            text(
                "SELECT run_id, status FROM ai_usage_reconcile_results"
                " WHERE day = :d AND measure = 'output_tokens' ORDER BY run_id"
            ),
            {"d": today.date()},
        ).all()
        current = latest_rows(conn, "anthropic", since=today.date())
        judged = latest_rows(conn, since=d1.date(), until=d2.date())
    assert [tuple(h) for h in history] == [
        (first.run_id, "provisional"),
        (second.run_id, "match"),
    ]
    assert {r["status"] for r in current} == {"match"}
    assert {r["day"] for r in judged} == {d1.date(), d2.date()}
    assert sum(r["status"] == "under_metered" for r in judged) == 3
    assert set(current[0]) == {
        "provider",
        "day",
        "model",
        "measure",
        "metered",
        "reported",
        "status",
    }

    # Another application's calls on our organisation's key-less report: an unscoped run
    # counts them; a run scoped to our key leaves them out (and cannot judge cost per key).
    fake.anthropic_usage.append(
        AnthropicUsage(
            d1.date(), SONNET_DATED, uncached_input_tokens=50_000, api_key_id="apikey_01other"
        )
    )
    whole = reconcile(db, "anthropic", d1.date(), d1.date(), options(fake, "anthropic"))
    assert statuses(whole.rows, d1.date(), SONNET_DATED)["input_tokens"] == "under_metered"
    ours = reconcile(
        db,
        "anthropic",
        d1.date(),
        d1.date(),
        options(fake, "anthropic", scope=Scope(api_key_ids=("apikey_01ours",))),
    )
    scoped = statuses(ours.rows, d1.date(), SONNET_DATED)
    assert scoped.pop("cost_usd") == "not_covered"
    assert set(scoped.values()) == {"match"} and not ours.drifting()


def test_openai_match_and_price_mismatch_through_the_cli(
    db: Engine,
    tenant: uuid.UUID,
    producer: Celery,
    start_worker: Callable[..., WorkerProcess],
    fake: FakeProviderApis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clear_runs(db)
    # The operator's price for gpt-4o is wrong (double the real one).
    overrides = tmp_path / "prices.json"
    overrides.write_text(
        json.dumps(
            [
                {
                    "model": "gpt-4o",
                    "effective_from": "2020-01-01",
                    "input_per_mtok": 5.0,
                    "output_per_mtok": 20.0,
                }
            ]
        )
    )
    start_worker({"AI_USAGE_PRICE_OVERRIDES": str(overrides)})
    d1 = days_ago(3)

    minis = [
        openai_event(tenant, "gpt-4o-mini", d1, 1200, 1024, 90),
        openai_event(tenant, "gpt-4o-mini", d1, 300, 0, 40),
    ]
    fours = [openai_event(tenant, "gpt-4o", d1, 5000, 0, 700)]
    send(db, producer, minis + fours)
    openai_saw(fake, minis, "gpt-4o-mini-2024-07-18")
    openai_saw(fake, fours, "gpt-4o-2024-08-06")
    # Another project of the organisation, outside this application's scope.
    fake.openai_usage.append(
        OpenAIUsage(
            d1.date(), "gpt-4o-mini-2024-07-18", 10**6, 0, 10**5, 40, project_id="proj_other"
        )
    )

    monkeypatch.setenv("OPENAI_ADMIN_KEY", fake.openai_key)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_url)
    monkeypatch.setenv("AI_USAGE_RECONCILE_SCOPE", "openai:project_id=proj_ours")
    from worker.cli import main
    from worker.settings import get_settings

    get_settings.cache_clear()
    try:
        day = d1.date().isoformat()
        code = main(
            ["reconcile", "--provider", "openai", "--from", day, "--to", day, "--format", "json"]
        )
        out = json.loads(capsys.readouterr().out)
        code_table = main(["reconcile", "--provider", "openai", "--from", day, "--to", day])
        table = capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    assert code == 1 and code_table == 1
    assert (out["provider"], out["from"], out["to"]) == ("openai", day, day)
    assert out["scope"] == {"project_ids": ["proj_ours"]}
    by = {(r["model"], r["measure"]): r for r in out["rows"]}
    for measure in MEASURES["openai"]:
        assert by[("gpt-4o-mini-2024-07-18", measure)]["status"] == "match", measure
    assert by[("gpt-4o-mini-2024-07-18", "requests")]["metered"] == "2"
    # Quantities match, our price does not: price_mismatch, and only on cost.
    four = {m: by[("gpt-4o-2024-08-06", m)]["status"] for m in MEASURES["openai"]}
    assert four.pop("cost_usd") == "price_mismatch"
    assert set(four.values()) == {"match"}
    assert "price_mismatch" in table and "gpt-4o-2024-08-06" in table
    assert fake.openai_key not in table + json.dumps(out)
