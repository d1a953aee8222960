"""Figures, ratios and targets from the phases' raw results; the table and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    path: tuple[str, ...]  # where it is in the raw results


FIGURES = (
    Figure(
        "limit_rows_per_s",
        "(1) limit: COPY+INSERT ON CONFLICT (best of 4 runs)",
        "rows/s",
        ("limit", "rows_per_s"),
    ),
    Figure(
        "limit_batched_rows_per_s",
        "    best with a transaction per worker batch",
        "rows/s",
        ("limit", "batched", "rows_per_s"),
    ),
    Figure(
        "limit_direct_rows_per_s",
        "    COPY into the table (the worker's first try; not idempotent alone)",
        "rows/s",
        ("limit", "direct", "rows_per_s"),
    ),
    Figure(
        "naive_events_per_s",
        "(2) naive: one ORM task per event, default worker",
        "events/s",
        ("naive", "events_per_s"),
    ),
    Figure(
        "ours_batched_events_per_s",
        "(3) ours: client background mode -> worker",
        "events/s",
        ("ours_batched", "events_per_s"),
    ),
    Figure(
        "ours_batched_over_round_limit",
        "    (3) / the limit measured before each run (median of 3)",
        "",
        ("ours_batched", "over_round_limit"),
    ),
    Figure(
        "worker_alone_1_events_per_s",
        "    worker alone on a backlog, 1 process (median of 3)",
        "events/s",
        ("scaleout", "processes_1", "events_per_s"),
    ),
    Figure(
        "worker_alone_2_events_per_s",
        "    worker alone on a backlog, 2 processes (median of 3)",
        "events/s",
        ("scaleout", "processes_2", "events_per_s"),
    ),
    Figure(
        "worker_alone_best_events_per_s",
        "    worker alone, best process count",
        "events/s",
        ("scaleout", "best_events_per_s"),
    ),
    Figure(
        "worker_alone_best_over_round_limit",
        "    best count / the limit measured before each round (median of 3)",
        "",
        ("scaleout", "best_over_limit"),
    ),
    Figure(
        "limit_beside_drains_rows_per_s",
        "    the limit measured before each round (median of 3)",
        "rows/s",
        ("scaleout", "limit_rows_per_s"),
    ),
    Figure(
        "worker_alone_1_idle_share",
        "    1 process: share of the machine's cores idle (median)",
        "",
        ("scaleout", "processes_1", "idle_share"),
    ),
    Figure(
        "worker_alone_2_idle_share",
        "    2 processes: share of the machine's cores idle (median)",
        "",
        ("scaleout", "processes_2", "idle_share"),
    ),
    Figure(
        "worker_alone_1_cpu_us",
        "    1 process: CPU per event, all processes (median)",
        "us",
        ("scaleout", "processes_1", "cpu_us_per_event", "total"),
    ),
    Figure(
        "worker_alone_2_cpu_us",
        "    2 processes: CPU per event, all processes (median)",
        "us",
        ("scaleout", "processes_2", "cpu_us_per_event", "total"),
    ),
    Figure(
        "worker_alone_1_worker_cpu_us",
        "    1 process: of it in the worker",
        "us",
        ("scaleout", "processes_1", "cpu_us_per_event", "worker"),
    ),
    Figure(
        "worker_alone_1_postgres_cpu_us",
        "    1 process: of it in PostgreSQL",
        "us",
        ("scaleout", "processes_1", "cpu_us_per_event", "postgres"),
    ),
    Figure(
        "worker_alone_2_worker_cpu_us",
        "    2 processes: of it in the workers",
        "us",
        ("scaleout", "processes_2", "cpu_us_per_event", "worker"),
    ),
    Figure(
        "worker_alone_2_postgres_cpu_us",
        "    2 processes: of it in PostgreSQL",
        "us",
        ("scaleout", "processes_2", "cpu_us_per_event", "postgres"),
    ),
    Figure(
        "two_workers_ceiling",
        "    2/1 at most: 1 / (busy share at 1 process)",
        "",
        ("scaleout", "two_over_one_ceiling"),
    ),
    Figure(
        "worker_share_min",
        "    smallest share of one of 2 workers",
        "",
        ("scaleout", "share_min"),
    ),
    Figure(
        "store_fingerprint_us",
        "(3c) store, per event, with fingerprints",
        "us",
        ("writepath", "store_us_per_event", "fingerprint"),
    ),
    Figure(
        "store_no_fingerprint_us",
        "    store, per event, without fingerprints",
        "us",
        ("writepath", "store_us_per_event", "no_fingerprint"),
    ),
    Figure(
        "store_redelivery_us",
        "    store, per event, a redelivered batch",
        "us",
        ("writepath", "store_us_per_event", "redelivery"),
    ),
    Figure(
        "ours_single_events_per_s",
        "(4) ours: queued ai_usage.record messages",
        "events/s",
        ("ours_single", "events_per_s"),
    ),
    Figure(
        "celery_noop_tasks_per_s",
        "    Celery no-op drain, default worker",
        "tasks/s",
        ("noop", "tasks_per_s"),
    ),
    Figure(
        "record_background_p50_us",
        "(5) record() background p50",
        "us",
        ("latency", "record_background", "p50_us"),
    ),
    Figure(
        "record_background_p99_us",
        "    record() background p99",
        "us",
        ("latency", "record_background", "p99_us"),
    ),
    Figure(
        "record_sync_p50_us", "    record() sync p50", "us", ("latency", "record_sync", "p50_us")
    ),
    Figure(
        "record_sync_p99_us", "    record() sync p99", "us", ("latency", "record_sync", "p99_us")
    ),
    Figure(
        "apply_async_p50_us",
        "    apply_async(no-op) p50",
        "us",
        ("latency", "apply_async_noop", "p50_us"),
    ),
    Figure(
        "apply_async_p99_us",
        "    apply_async(no-op) p99",
        "us",
        ("latency", "apply_async_noop", "p99_us"),
    ),
    Figure(
        "record_dropping_p99_us",
        "    record() p99 on the drop path (buffer full, logged)",
        "us",
        ("dropping", "p99_us"),
    ),
    Figure(
        "app_without_client_rps",
        "    application requests/s without the client",
        "req/s",
        ("app", "without_client", "requests_per_s"),
    ),
    Figure(
        "app_with_client_rps",
        "    application requests/s with record() in each",
        "req/s",
        ("app", "with_client", "requests_per_s"),
    ),
    Figure(
        "app_with_client_stall_ms",
        "    longest application stall with the client",
        "ms",
        ("app", "with_client", "longest_stall_ms"),
    ),
    Figure(
        "rollup_2k_small_s",
        "(6) rollup after 2k new rows, month of big/100 rows",
        "s",
        ("rollups", "sizes", "small", "rollup_2k_new_s"),
    ),
    Figure(
        "rollup_2k_big_s",
        "    rollup after 2k new rows, month of big rows",
        "s",
        ("rollups", "sizes", "big", "rollup_2k_new_s"),
    ),
    Figure(
        "rollup_idle_big_s",
        "    rollup with nothing new, month of big rows",
        "s",
        ("rollups", "sizes", "big", "rollup_nothing_new_s"),
    ),
    Figure(
        "write_p99_ms",
        "    write p99 (500 events / 50 ms), no rollup",
        "ms",
        ("rollups", "write_without_rollup", "p99_ms"),
    ),
    Figure(
        "write_max_during_rollup_ms",
        "    longest write while rollups fold every 250 ms",
        "ms",
        ("rollups", "write_during_rollups", "max_ms"),
    ),
    Figure(
        "write_max_during_recompute_ms",
        "    longest write beside a whole-month recompute",
        "ms",
        ("rollups", "write_during_month_recompute", "max_ms"),
    ),
    Figure(
        "report_small_ms",
        "    monthly report, month of big/100 rows (median)",
        "ms",
        ("rollups", "sizes", "small", "report_ms", "monthly"),
    ),
    Figure(
        "report_big_ms",
        "    monthly report, month of big rows (median)",
        "ms",
        ("rollups", "sizes", "big", "report_ms", "monthly"),
    ),
    Figure(
        "report_by_model_big_ms",
        "    report --by model, big",
        "ms",
        ("rollups", "sizes", "big", "report_ms", "model"),
    ),
    Figure(
        "report_by_operation_big_ms",
        "    report --by operation, big",
        "ms",
        ("rollups", "sizes", "big", "report_ms", "operation"),
    ),
    Figure(
        "report_by_day_big_ms",
        "    report --by day, big",
        "ms",
        ("rollups", "sizes", "big", "report_ms", "day"),
    ),
    Figure(
        "report_by_user_big_ms",
        "    report --by user (one tenant, 7 days, from the log), big",
        "ms",
        ("rollups", "sizes", "big", "report_ms", "user"),
    ),
    Figure("worker_rss_start_mb", "(7) worker RSS at start", "MB", ("memory", "rss_start_mb")),
    Figure(
        "worker_rss_first_minute_mb",
        "    worker RSS after the first minute",
        "MB",
        ("memory", "rss_after_first_minute_mb"),
    ),
    Figure("worker_rss_end_mb", "    worker RSS at the end", "MB", ("memory", "rss_end_mb")),
    Figure("worker_rss_peak_mb", "    worker RSS peak", "MB", ("memory", "rss_peak_mb")),
)
FIGURE_KEYS = tuple(f.key for f in FIGURES)

_BIG = ("scale", "sizes", "largest")  # "largest" stands for the largest size's key
#: Figure 8 (bench/scale.py), only in a run with the `scale` section (`--only scale`).
SCALE_FIGURES = (
    Figure(
        "scale_largest_rows",
        "(8) rows in the table at the largest size",
        "rows",
        ("scale", "largest"),
    ),
    Figure(
        "scale_v7_empty_rows_per_s",
        "    ingest, client ids (v7), empty table in the same minutes",
        "rows/s",
        (*_BIG, "v7_empty_rows_per_s"),
    ),
    Figure(
        "scale_v7_largest_rows_per_s",
        "    ingest, client ids (v7), largest size",
        "rows/s",
        (*_BIG, "v7_rows_per_s"),
    ),
    Figure(
        "scale_v4_empty_rows_per_s",
        "    ingest, random v4 ids, empty table in the same minutes",
        "rows/s",
        (*_BIG, "v4_empty_rows_per_s"),
    ),
    Figure(
        "scale_v4_largest_rows_per_s",
        "    ingest, random v4 ids, largest size",
        "rows/s",
        (*_BIG, "v4_rows_per_s"),
    ),
    Figure(
        "scale_v7_largest_over_empty",
        "    v7: largest size / empty, median of the runs' ratios",
        "",
        (*_BIG, "v7_over_empty"),
    ),
    Figure(
        "scale_v4_largest_over_empty",
        "    v4: largest size / empty, median of the runs' ratios",
        "",
        (*_BIG, "v4_over_empty"),
    ),
    Figure(
        "scale_v7_largest_wal_mb",
        "    WAL per run, v7, largest size (median)",
        "MB",
        (*_BIG, "v7_wal_mb"),
    ),
    Figure(
        "scale_v4_largest_wal_mb",
        "    WAL per run, v4, largest size (median)",
        "MB",
        (*_BIG, "v4_wal_mb"),
    ),
    Figure(
        "scale_v7_largest_read_mb",
        "    disk read per run, v7, largest size (median)",
        "MB",
        (*_BIG, "v7_disk_read_mb"),
    ),
    Figure(
        "scale_v4_largest_read_mb",
        "    disk read per run, v4, largest size (median)",
        "MB",
        (*_BIG, "v4_disk_read_mb"),
    ),
    Figure(
        "scale_fingerprint_cost",
        "    ingest without / with the fingerprint",
        "",
        ("scale", "ours", "fingerprint_cost"),
    ),
    Figure(
        "scale_delta_trigger_cost",
        "    ingest without / with the delta trigger",
        "",
        ("scale", "ours", "delta_trigger_cost"),
    ),
    Figure(
        "scale_report_user_small_planned_s",
        "    report --by user, 1/15 tenant, from the per-user rollups (warm)",
        "s",
        ("scale", "report_user", "tenant_1_of_15", "planned_warm_s"),
    ),
    Figure(
        "scale_report_user_small_log_s",
        "    the same from the log, as before (warm)",
        "s",
        ("scale", "report_user", "tenant_1_of_15", "log_warm_s"),
    ),
    Figure(
        "scale_report_user_big_planned_s",
        "    report --by user, 1/3 tenant, from the per-user rollups (warm)",
        "s",
        ("scale", "report_user", "tenant_1_of_3", "planned_warm_s"),
    ),
    Figure(
        "scale_report_user_big_log_s",
        "    the same from the log, as before (warm)",
        "s",
        ("scale", "report_user", "tenant_1_of_3", "log_warm_s"),
    ),
    Figure(
        "scale_partitioned_over_plain",
        "    ingest, partitioned layout over the default, both empty, same seconds",
        "",
        ("scale", "layout_ingest", "partitioned_over_plain"),
    ),
    Figure(
        "scale_prune_s",
        "    prune of a closed month (rows: details.scale.prune.rows)",
        "s",
        ("scale", "prune", "prune_s"),
    ),
    Figure("scale_prune_wal_mb", "    WAL of the prune", "MB", ("scale", "prune", "prune_wal_mb")),
    Figure(
        "scale_prune_table_before_mb",
        "    table before the month's rows came",
        "MB",
        ("scale", "prune", "table_mb_before_month"),
    ),
    Figure(
        "scale_prune_table_after_vacuum_mb",
        "    table after the prune and VACUUM",
        "MB",
        ("scale", "prune", "table_mb_after_vacuum"),
    ),
    Figure(
        "scale_prune_left_behind_mb",
        "    what the month left behind (writer's rows subtracted)",
        "MB",
        ("scale", "prune", "left_behind_mb"),
    ),
    Figure(
        "scale_prune_write_p99_ratio",
        "    writer's p99 beside the prune / alone",
        "",
        ("scale", "prune", "write_p99_beside_over_alone"),
    ),
    Figure(
        "scale_prune_partitioned_s",
        "    the same month, partitioned layout: prune (DETACH CONCURRENTLY, DROP)",
        "s",
        ("scale", "prune_partitioned", "prune_s"),
    ),
    Figure(
        "scale_prune_partitioned_wal_mb",
        "    WAL of that prune",
        "MB",
        ("scale", "prune_partitioned", "prune_wal_mb"),
    ),
    Figure(
        "scale_prune_partitioned_left_behind_mb",
        "    what the month left behind there (writer's rows subtracted)",
        "MB",
        ("scale", "prune_partitioned", "left_behind_mb"),
    ),
    Figure(
        "scale_prune_partitioned_write_p99_ratio",
        "    its writer's p99 beside the prune / alone",
        "",
        ("scale", "prune_partitioned", "write_p99_beside_over_alone"),
    ),
)


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    numerator: str
    denominator: str | None  # None: the figure itself
    op: str  # ">=", "<=" or "within" (|value - 1| <= threshold)
    threshold: float


TARGETS = (
    # The two ratios to the limit, each run to the limit measured just before it (the
    # limit moves by a third on this box from minute to minute); the same runs over (1), the
    # best of four runs minutes earlier, are in "ratios" beside them.
    Target(
        "ours_batched_over_round_limit",
        "(3)/limit of its run",
        "ours_batched_over_round_limit",
        None,
        ">=",
        0.65,
    ),
    Target(
        "worker_alone_best_over_round_limit",
        "worker alone (best count)/limit of its round",
        "worker_alone_best_over_round_limit",
        None,
        ">=",
        0.85,
    ),
    Target(
        "two_workers_over_one",
        "2 workers / 1 worker",
        "worker_alone_2_events_per_s",
        "worker_alone_1_events_per_s",
        ">=",
        1.3,
    ),
    Target(
        "fingerprint_store_over_none",
        "store with/without fingerprints",
        "store_fingerprint_us",
        "store_no_fingerprint_us",
        "<=",
        1.15,
    ),
    Target(
        "ours_batched_over_naive",
        "(3)/(2)",
        "ours_batched_events_per_s",
        "naive_events_per_s",
        ">=",
        25,
    ),
    Target(
        "ours_single_over_noop",
        "(4)/no-op",
        "ours_single_events_per_s",
        "celery_noop_tasks_per_s",
        ">=",
        5,
    ),
    Target(
        "record_background_p99_us",
        "background record p99 (us)",
        "record_background_p99_us",
        None,
        "<=",
        50,
    ),
    Target(
        "app_with_over_without_client",
        "app throughput with/without client",
        "app_with_client_rps",
        "app_without_client_rps",
        ">=",
        0.7,
    ),
    Target(
        "apply_async_p99_over_record_p99",
        "apply_async p99 / record p99",
        "apply_async_p99_us",
        "record_background_p99_us",
        ">=",
        40,
    ),
    Target(
        "rollup_2k_big_over_small",
        "rollup(2k new) big / small month",
        "rollup_2k_big_s",
        "rollup_2k_small_s",
        "<=",
        1.5,
    ),
    Target(
        "write_stall_over_p99",
        "longest write in rollups / write p99",
        "write_max_during_rollup_ms",
        "write_p99_ms",
        "<=",
        2,
    ),
    Target(
        "report_big_over_small",
        "report latency large/small",
        "report_big_ms",
        "report_small_ms",
        "<=",
        1.5,
    ),
    Target(
        "rss_end_over_first_minute",
        "RSS end / after first minute",
        "worker_rss_end_mb",
        "worker_rss_first_minute_mb",
        "within",
        0.10,
    ),
)


#: Figure 8's target (issue 27), only when the section ran.
SCALE_TARGETS = (
    Target(
        "scale_v7_largest_over_empty",
        "(8) ingest at the largest size / empty, client ids",
        "scale_v7_largest_over_empty",
        None,
        ">=",
        0.85,
    ),
)


def _dig(raw: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = raw
    for part in path:
        if part == "largest" and isinstance(value, dict) and "largest" not in value:
            part = str(raw.get("scale", {}).get("largest"))
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def evaluate(raw: dict[str, Any]) -> dict[str, Any]:
    """{"figures", "ratios", "targets"} from the raw results of the phases."""
    figures = {f.key: _dig(raw, f.path) for f in FIGURES}
    if "scale" in raw:
        figures.update({f.key: _dig(raw, f.path) for f in SCALE_FIGURES})
    ratios: dict[str, float | None] = {
        key: None if num is None or not den else round(num / den, 4)
        for key, num, den in (
            (
                "ours_batched_over_limit",
                figures["ours_batched_events_per_s"],
                figures["limit_rows_per_s"],
            ),
            (
                "worker_alone_best_over_limit",
                figures["worker_alone_best_events_per_s"],
                figures["limit_rows_per_s"],
            ),
            # Over the rate of the worker's own first write, with no worker in the way.
            (
                "ours_batched_over_direct_copy",
                figures["ours_batched_events_per_s"],
                figures["limit_direct_rows_per_s"],
            ),
            (
                "worker_alone_best_over_direct_copy",
                figures["worker_alone_best_events_per_s"],
                figures["limit_direct_rows_per_s"],
            ),
            # 2 workers / 1 = these two, the cores kept busy and the CPU each event cost.
            (
                "two_workers_busy_over_one",
                None
                if figures["worker_alone_2_idle_share"] is None
                else 1 - figures["worker_alone_2_idle_share"],
                None
                if figures["worker_alone_1_idle_share"] is None
                else 1 - figures["worker_alone_1_idle_share"],
            ),
            (
                "two_workers_cost_one_over_two",
                figures["worker_alone_1_cpu_us"],
                figures["worker_alone_2_cpu_us"],
            ),
        )
    }
    targets: list[dict[str, Any]] = []
    for t in TARGETS + (SCALE_TARGETS if "scale" in raw else ()):
        num = figures[t.numerator]
        den = figures[t.denominator] if t.denominator else 1.0
        value = None if num is None or not den else num / den
        if t.denominator:
            ratios[t.key] = None if value is None else round(value, 4)
        if value is None:
            held = None
        elif t.op == ">=":
            held = value >= t.threshold
        elif t.op == "<=":
            held = value <= t.threshold
        else:
            held = abs(value - 1) <= t.threshold
        want = f"{t.op} {t.threshold:g}" if t.op != "within" else f"within {t.threshold:.0%} of 1"
        targets.append(
            {
                "key": t.key,
                "label": t.label,
                "value": None if value is None else round(value, 4),
                "target": want,
                "held": held,
                "status": {True: "held", False: "missed", None: "skipped"}[held],
            }
        )
    return {"figures": figures, "ratios": ratios, "targets": targets}


def _fmt(value: float | None) -> str:
    if value is None:
        return "skipped"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(result: dict[str, Any]) -> str:
    """The figures and the targets as text."""
    figures = result["figures"]
    width = max(len(f.label) for f in FIGURES + SCALE_FIGURES)
    lines = [f"ai-usage-worker benchmark ({result['meta']['mode']} mode)", ""]
    for f in FIGURES + (SCALE_FIGURES if "scale_largest_rows" in figures else ()):
        lines.append(f"{f.label:<{width}}  {_fmt(figures[f.key]):>12} {f.unit}")
    lines += ["", "Targets"]
    twidth = max(len(t["label"]) for t in result["targets"])
    for t in result["targets"]:
        status = t["status"].upper() if t["status"] == "missed" else t["status"]
        lines.append(f"{t['label']:<{twidth}}  {_fmt(t['value']):>10}  {t['target']:<18} {status}")
    machine = result["meta"]["machine"]
    lines += [
        "",
        f"{machine['cpu_count']} x {machine['cpu_model']}, {machine['memory_total_mb']} MB,"
        f" Python {machine['python']}, PostgreSQL {machine['postgres']['server_version']}"
        f" (fsync={machine['postgres']['fsync']},"
        f" synchronous_commit={machine['postgres']['synchronous_commit']}),"
        f" Redis {machine['redis']}; servers: {machine['servers']}",
    ]
    for note in result["meta"].get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """JSON has no inf or NaN: such floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=2, default=str, allow_nan=False) + "\n")
