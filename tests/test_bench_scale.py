"""The scale section's options and figures (bench/scale.py), without loading anything: sizes
parsed or refused by name, its figures and target read at the largest size, and a run without
the section keeping the figures and targets it had."""

from __future__ import annotations

import itertools

import pytest

from bench import cli, results
from bench.scale import _fingerprint_plan, _trigger_plan, parse_sizes


def test_sizes_are_parsed_with_suffixes_and_refused_by_name() -> None:
    assert parse_sizes("1M,3M") == [1_000_000, 3_000_000]
    assert parse_sizes("500k, 2.5M,30000000") == [500_000, 2_500_000, 30_000_000]
    for bad, words in (
        ("3M,1M", "increasing"),
        ("1M,1M", "increasing"),
        ("lots", "'lots' is not a row count"),
        ("10", "under 1000"),
        ("", "increasing"),
    ):
        with pytest.raises(ValueError, match="--scale-rows") as info:
            parse_sizes(bad)
        assert words in str(info.value)


def test_scale_runs_only_when_asked() -> None:
    assert "scale" not in cli.DEFAULT_SECTIONS and "scale" in cli.SECTIONS
    _, plan = cli.parse(["--only", "scale", "--scale-rows", "1M,3M", "--scale-prune-rows", "0"])
    assert (plan.scale_rows, plan.scale_prune_rows) == ([1_000_000, 3_000_000], 0)
    with pytest.raises(SystemExit):
        cli.parse(["--scale-events", "10"])


def test_figures_and_target_are_read_at_the_largest_size() -> None:
    raw = {
        "scale": {
            "largest": 3_000_000,
            "sizes": {
                "0": {"v7_rows_per_s": 60_000.0},
                "1000000": {"v7_over_empty": 0.99, "v7_rows_per_s": 1.0},
                "3000000": {
                    "v7_over_empty": 0.84,
                    "v7_rows_per_s": 42_000.0,
                    "v7_empty_rows_per_s": 50_000.0,
                },
            },
        }
    }
    out = results.evaluate(raw)
    assert out["figures"]["scale_largest_rows"] == 3_000_000
    assert out["figures"]["scale_v7_largest_rows_per_s"] == 42_000
    assert out["figures"]["scale_v7_empty_rows_per_s"] == 50_000
    (target,) = [t for t in out["targets"] if t["key"] == "scale_v7_largest_over_empty"]
    assert (target["value"], target["status"]) == (0.84, "missed")
    assert "(8) ingest at the largest size" in results.table(
        {**out, "meta": {"mode": "full", "machine": _machine()}}
    )


def test_a_run_without_the_section_is_unchanged() -> None:
    out = results.evaluate({})
    assert {t["key"] for t in out["targets"]} == {t.key for t in results.TARGETS}
    assert not any(k.startswith("scale_") for k in out["figures"])


def _machine() -> dict[str, object]:
    return {
        "cpu_count": 2,
        "cpu_model": "x",
        "memory_total_mb": 1,
        "python": "3",
        "postgres": {"server_version": "15", "fsync": "on", "synchronous_commit": "on"},
        "redis": "7",
        "servers": "given",
    }


def test_the_fingerprint_pass_alternates_and_swaps_the_lead() -> None:
    batches = list(range(40))
    plan = _fingerprint_plan(batches)
    names = [v for v, _ in plan]
    assert [b for _, b in plan] == batches  # every batch once, in the ids' order
    assert names.count("full") == names.count("no_fingerprint") == 20
    pairs = [tuple(names[i : i + 2]) for i in range(0, 40, 2)]
    assert all(set(p) == {"full", "no_fingerprint"} for p in pairs)
    leads = [p[0] for p in pairs]
    assert leads.count("full") == leads.count("no_fingerprint") == 10


def test_the_trigger_pass_switches_only_between_blocks() -> None:
    batches = list(range(40))
    plan = _trigger_plan(batches, block=5)
    names = [v for v, _ in plan]
    assert [b for _, b in plan] == batches
    assert names.count("full") == names.count("no_delta_trigger") == 20
    # Each switch's invalidation lands on a block's first store: as often on either kind.
    firsts = [names[0]] + [b for a, b in itertools.pairwise(names) if a != b]
    assert firsts.count("full") == firsts.count("no_delta_trigger") == 4
