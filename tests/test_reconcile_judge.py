"""The verdicts on given figures (no HTTP): the tolerance's edge, each status, what a report
cannot cover, model matching by price entry; and the scope setting."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from worker.ledger.reconcile import ConfigurationError, Row, Scope, parse_scope
from worker.ledger.reconcile.compare import Judging, judge
from worker.ledger.reconcile.core import ProviderReport
from worker.ledger.reconcile.metered import Metered

DAY = dt.date(2026, 11, 2)
LATER = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
JUDGING = Judging(Decimal("0.5"), dt.timedelta(hours=48), LATER)


def ours(cost: str = "1", unpriced: int = 0, **values: int) -> Metered:
    return Metered({k: Decimal(v) for k, v in values.items()}, Decimal(cost), unpriced)


def theirs(
    cost: str = "1", model: str = "claude-3-5-haiku-20241022", **values: int
) -> ProviderReport:
    report = ProviderReport()
    report.add(DAY, model, {k: v for k, v in values.items()})
    report.add_cost(DAY, model, Decimal(cost))
    return report


def status(rows: list[Row], measure: str) -> str:
    return next(r.status for r in rows if r.measure == measure)


@pytest.mark.parametrize(
    ("metered", "reported", "expected"),
    [
        (1000, 1000, "match"),
        (1005, 1000, "match"),  # 0.5% exactly: within
        (995, 1000, "match"),
        (1006, 1000, "over_metered"),
        (994, 1000, "under_metered"),
        (0, 0, "match"),
        (1, 0, "over_metered"),
        (0, 1, "under_metered"),
    ],
)
def test_tolerance_edges(metered: int, reported: int, expected: str) -> None:
    rows = judge(
        "anthropic",
        {(DAY, "claude-3-5-haiku-latest"): ours(output_tokens=metered)},
        theirs(output_tokens=reported),
        JUDGING,
    )
    assert status(rows, "output_tokens") == expected


def test_alias_and_dated_id_are_one_model() -> None:
    rows = judge(
        "anthropic",
        {(DAY, "claude-3-5-haiku-latest"): ours(input_tokens=10, output_tokens=5)},
        theirs(input_tokens=10, output_tokens=5),
        JUDGING,
    )
    assert {r.model for r in rows} == {"claude-3-5-haiku-20241022"}
    assert {r.status for r in rows} == {"match"}


@pytest.mark.parametrize(
    ("provider", "ours_name", "their_name"),
    [
        ("anthropic", "claude-sonnet-4-0", "claude-sonnet-4-20250514"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1-20250805"),
        ("openai", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        # Newer than the price data: alias and dated id are still one model.
        ("anthropic", "claude-nova-7", "claude-nova-7-20270301"),
        ("openai", "gpt-9-mini-2027-02-01", "gpt-9-mini"),
    ],
)
def test_a_model_is_one_row_whichever_name_each_side_uses(
    provider: str, ours_name: str, their_name: str
) -> None:
    report = ProviderReport()
    report.add(DAY, their_name, {"input_tokens": 10, "output_tokens": 5, "requests": 1})
    report.add_cost(DAY, their_name, Decimal(1))
    rows = judge(
        provider,
        {(DAY, ours_name): ours(input_tokens=10, output_tokens=5, requests=1)},
        report,
        JUDGING,
    )
    assert {r.model for r in rows} == {their_name}
    assert {r.status for r in rows} == {"match"}


def test_cost_alone_differing_is_a_price_mismatch_not_missed_calls() -> None:
    rows = judge(
        "anthropic",
        {(DAY, "claude-3-5-haiku-20241022"): ours(cost="2", input_tokens=10)},
        theirs(cost="1", input_tokens=10),
        JUDGING,
    )
    assert status(rows, "cost_usd") == "price_mismatch"
    rows = judge(
        "anthropic",
        {(DAY, "claude-3-5-haiku-20241022"): ours(cost="0.5", input_tokens=5)},
        theirs(cost="1", input_tokens=10),
        JUDGING,
    )
    assert (status(rows, "input_tokens"), status(rows, "cost_usd")) == (
        "under_metered",
        "under_metered",
    )


def test_web_searches_are_judged_per_day_not_in_a_models_cost() -> None:
    # Both reports bill web searches on a line naming no model; our rows hold them in each
    # call's cost. Tokens cost $0.004 and $0.001, three searches $0.03 across two models.
    report = ProviderReport()
    for model, cost in (("gpt-4o-2024-08-06", "0.004"), ("gpt-4.1-2025-04-14", "0.001")):
        report.add(DAY, model, {"requests": 1, "input_tokens": 10})
        report.add_cost(DAY, model, Decimal(cost))
    report.add_web_search(DAY, Decimal("0.03"))
    mine = {
        (DAY, "gpt-4o"): Metered(
            {"requests": Decimal(1), "input_tokens": Decimal(10), "web_searches": Decimal(2)},
            Decimal("0.024"),
            web_search_usd=Decimal("0.02"),
        ),
        (DAY, "gpt-4.1"): Metered(
            {"requests": Decimal(1), "input_tokens": Decimal(10), "web_searches": Decimal(1)},
            Decimal("0.011"),
            web_search_usd=Decimal("0.01"),
        ),
    }
    rows = judge("openai", mine, report, JUDGING)
    assert {r.status for r in rows} == {"match"}
    web = [r for r in rows if r.model == "(web search)"]
    assert [(r.measure, r.metered, r.reported) for r in web] == [
        ("cost_usd", Decimal("0.03"), Decimal("0.03"))
    ]
    # Searches we did not record: the day's web search row says so, the models' costs match.
    report.web_search_usd[DAY] = Decimal("0.05")
    rows = judge("openai", mine, report, JUDGING)
    assert [(r.model, r.status) for r in rows if r.status != "match"] == [
        ("(web search)", "under_metered")
    ]


def test_what_a_report_cannot_cover_is_declared() -> None:
    report = theirs(input_tokens=10)
    report.cost_gaps[(DAY, "claude-3-5-haiku-20241022")] = "Priority Tier"
    report.add_unattributed(DAY, "Code Execution Usage", Decimal("0.3"), "names no model")
    rows = judge(
        "anthropic",
        {(DAY, "claude-3-5-haiku-20241022"): ours(cost="9", input_tokens=10)},
        report,
        JUDGING,
    )
    cost = [r for r in rows if r.measure == "cost_usd"]
    assert [(r.model, r.status) for r in cost] == [
        ("Code Execution Usage", "not_covered"),
        ("claude-3-5-haiku-20241022", "not_covered"),
    ]
    unpriced = judge(
        "anthropic",
        {(DAY, "claude-3-5-haiku-20241022"): ours(cost="0", unpriced=2, input_tokens=10)},
        theirs(input_tokens=10),
        JUDGING,
    )
    assert status(unpriced, "cost_usd") == "not_covered"


def test_a_model_only_we_recorded_is_over_metered() -> None:
    rows = judge(
        "openai",
        {(DAY, "gpt-4o"): ours(requests=3, input_tokens=30)},
        ProviderReport(),
        JUDGING,
    )
    assert [r.measure for r in rows] == [
        "requests",
        "input_tokens",
        "cache_read_tokens",
        "output_tokens",
        "cost_usd",
    ]
    assert [r.status for r in rows] == [
        "over_metered",
        "over_metered",
        "match",
        "match",
        "over_metered",
    ]


def test_the_lag_ends_48_hours_after_the_day() -> None:
    end = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(0), dt.UTC)
    lag = dt.timedelta(hours=48)
    assert Judging(Decimal("0.5"), lag, end + lag - dt.timedelta(seconds=1)).provisional(DAY)
    assert not Judging(Decimal("0.5"), lag, end + lag).provisional(DAY)


def test_scope_setting() -> None:
    text = "anthropic:workspace_id=wrkspc_1, api_key_id=apikey_1 ,openai:project_id=proj_1"
    assert parse_scope(text, "anthropic") == Scope(("apikey_1",), ("wrkspc_1",), ())
    assert parse_scope(text, "openai") == Scope(("apikey_1",), (), ("proj_1",))
    assert parse_scope("", "openai").is_empty()
    with pytest.raises(ConfigurationError, match="^AI_USAGE_RECONCILE_SCOPE: expected"):
        parse_scope("team=7", "openai")
    with pytest.raises(ConfigurationError, match="unknown provider 'gemini'"):
        parse_scope("gemini:api_key_id=k", "openai")
    with pytest.raises(ConfigurationError, match="^--workspace-id: openai has no workspace_ids"):
        Scope(workspace_ids=("w",)).check("openai")
