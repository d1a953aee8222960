"""`python -m bench [--quick] [--n N] [--output PATH] [--database-url URL --redis-url URL]`.

Runs every phase in one process against the same servers, prints a table and writes the JSON.
Without URLs (nor BENCH_DATABASE_URL / BENCH_REDIS_URL) it starts embedded PostgreSQL and
Redis in a temporary folder and destroys them at the end; with URLs it uses a throwaway
database and Redis db number on them. Worker subprocesses are stopped whatever happens."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from bench import (
    data,
    latency,
    memory,
    procs,
    results,
    rollup,
    scale,
    scaledata,
    scaleout,
    throughput,
    writepath,
)
from bench.servers import ROOT, describe_machine, open_stack
from worker.settings import Settings

T = TypeVar("T")
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
#: A quick run's figures are not comparable with a full run's: they must not replace them.
QUICK_OUTPUT = ROOT / "bench" / "results" / "quick.json"
TENANTS = 100
DESCRIPTION = (
    "Benchmark of the ai_usage pipeline: write limit, naive baseline, our pipeline (end to end,"
    " worker alone at 1 and 2 processes, single-event messages), the write path, request-path"
    " cost, rollups and reports, worker memory. Prints a table, writes JSON."
)
#: The sections, in run order; --only runs a subset (the limit always runs: ratios need it).
SECTIONS = (
    "naive",
    "ours",
    "latency",
    "scaleout",
    "writepath",
    "single",
    "memory",
    "rollup",
    "scale",
)
#: What runs without --only: `scale` loads tens of millions of rows (issue 27), so it runs only
#: when asked for (`--only scale`).
DEFAULT_SECTIONS = SECTIONS[:-1]


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM / SIGHUP, so that every finally runs."""


#: Sizes of each mode; --n caps naive_n and queued_n, the other options replace one size.
DEFAULTS: dict[str, dict[str, float]] = {
    "full": {
        "n": 100_000,
        "naive_n": 20_000,
        "queued_n": 20_000,
        "latency_samples": 10_000,
        "rollup_rows": 10_000_000,
        "report_reps": 30,
        "soak_seconds": 300,
    },
    "quick": {
        "n": 5000,
        "naive_n": 500,
        "queued_n": 1000,
        "latency_samples": 1000,
        "rollup_rows": 100_000,
        "report_reps": 10,
        "soak_seconds": 0,
    },
}


@dataclass
class Plan:
    mode: str
    n: int  # events of (1), (3) and the worker-alone drain
    naive_n: int  # events of (2)
    queued_n: int  # messages of (4) and of the no-op drain
    latency_samples: int
    rollup_rows: int
    report_reps: int
    soak_seconds: float
    soak_rate: int
    scale_rows: list[int]
    scale_events: int
    scale_prune_rows: int


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    full, quick = DEFAULTS["full"], DEFAULTS["quick"]
    p = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="small sizes, no memory soak (< 60 s)")
    p.add_argument(
        "--n",
        type=int,
        help=f"events of (1), (3); also caps --naive-n and --queued-n (default {full['n']:,.0f},"
        f" quick {quick['n']:,.0f})",
    )
    for name, what in (
        ("naive_n", "events of the naive baseline (2)"),
        ("queued_n", "messages queued in advance for (4) and the no-op drain"),
        ("latency_samples", "calls timed per latency figure (5)"),
        ("rollup_rows", "rows this month at the largest of the three sizes of (6)"),
        ("soak_seconds", "length of the memory soak (7); 0 skips it"),
    ):
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=float if name == "soak_seconds" else int,
            help=f"{what} (default {full[name]:,.0f}, quick {quick[name]:,.0f})",
        )
    p.add_argument("--soak-rate", type=int, default=2000, help="events/s during the soak (2000)")
    p.add_argument(
        "--scale-rows",
        default="10M,30M",
        help="sizes of the month for the scale section, increasing (default 10M,30M)",
    )
    p.add_argument(
        "--scale-prune-rows",
        type=int,
        default=10_000_000,
        help="rows of the closed month the scale section prunes (default 10,000,000; 0 skips)",
    )
    p.add_argument(
        "--scale-events",
        type=int,
        default=200_000,
        help="new events per ingest run of the scale section (default 200,000)",
    )
    p.add_argument(
        "--output",
        type=Path,
        help=f"JSON file (default {DEFAULT_OUTPUT.relative_to(ROOT)},"
        f" {QUICK_OUTPUT.relative_to(ROOT)} with --quick)",
    )
    p.add_argument(
        "--only",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all but"
        " scale);"
        " ratios whose figures were not measured are skipped",
    )
    p.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="PostgreSQL server (or BENCH_DATABASE_URL): a throwaway database is made on it",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL"),
        help="Redis server (or BENCH_REDIS_URL): an empty db number is used, then flushed",
    )
    a = p.parse_args(argv)
    mode = "quick" if a.quick else "full"
    if a.output is None:
        a.output = QUICK_OUTPUT if a.quick else DEFAULT_OUTPUT
    d = DEFAULTS[mode]

    def size(name: str) -> float:
        given = getattr(a, name)
        return float(given) if given is not None else d[name]

    n = int(a.n or d["n"])
    rollup_rows = int(size("rollup_rows"))
    plan = Plan(
        mode=mode,
        n=n,
        naive_n=int(a.naive_n or min(n, d["naive_n"])),
        # Capped by n too: (4) and the no-op drain must be compared on the same count.
        queued_n=min(n, int(a.queued_n or d["queued_n"])),
        latency_samples=int(size("latency_samples")),
        rollup_rows=rollup_rows,
        report_reps=int(d["report_reps"]),
        soak_seconds=size("soak_seconds"),
        soak_rate=a.soak_rate,
        scale_rows=[],
        scale_events=a.scale_events,
        scale_prune_rows=a.scale_prune_rows,
    )
    try:
        plan.scale_rows = scale.parse_sizes(a.scale_rows)
    except ValueError as exc:
        p.error(str(exc))
    if plan.scale_events < scaledata.BATCH:
        p.error(f"--scale-events must be at least {scaledata.BATCH}")
    unknown = sorted(set(a.only or ()) - set(SECTIONS))
    if unknown:
        p.error(
            f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    for name in ("n", "naive_n", "queued_n", "latency_samples", "rollup_rows"):
        if getattr(plan, name) < 10:
            p.error(f"--{name.replace('_', '-')} must be at least 10")
    return a, plan


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal must not cut the cleanup short.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(f"signal {signum}")


def _notes(plan: Plan, machine: dict[str, Any]) -> list[str]:
    notes = [
        f"N={plan.n} events for (1) and (3); {plan.naive_n} for (2); {plan.queued_n} queued"
        " messages for (4) and the no-op drain.",
        f"Latency: {plan.latency_samples} calls per figure, back to back; the same calls paced"
        f" {latency.PACE_S * 1e6:.0f} us apart are in details.latency.*.paced.",
    ]
    full = DEFAULTS["full"]
    if plan.rollup_rows != full["rollup_rows"]:
        notes.append(
            f"Scaled down: rollups and reports use {plan.rollup_rows // 100}, "
            f"{plan.rollup_rows // 10} and {plan.rollup_rows} rows, not"
            f" {full['rollup_rows'] // 100:,.0f} to {full['rollup_rows']:,.0f}."
        )
    if plan.soak_seconds <= 0:
        notes.append("Memory soak skipped: the RSS figures are null.")
    elif plan.soak_seconds != full["soak_seconds"]:
        notes.append(
            f"Memory soak of {plan.soak_seconds:g} s instead of {full['soak_seconds']:g} s."
        )
    pg = machine["postgres"]
    if pg["fsync"] == "off" or pg["synchronous_commit"] == "off":
        notes.append(
            f"PostgreSQL runs with fsync={pg['fsync']},"
            f" synchronous_commit={pg['synchronous_commit']}"
            " (embedded default): commits are cheap, which favours the per-event baseline (2)."
        )
    if (machine["cpu_count"] or 0) <= 2:
        notes.append("Harness, workers, PostgreSQL and Redis share the CPUs: figures are noisy.")
    return notes


def _ours_batched(
    stack: Any, workdir: Path, evs: list[dict[str, Any]], limit_once: Callable[[], float]
) -> dict[str, Any]:
    """One end-to-end run, after the limit measured again (its ratio is to that limit)."""
    limit = limit_once()
    worker = procs.ours(stack, workdir).start()
    try:
        out = throughput.ours_batched(stack, worker, evs)
    finally:
        worker.stop()
    out["round_limit_rows_per_s"] = limit
    out["over_round_limit"] = out["events_per_s"] / limit
    return out


def _median_of(runs: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The run of (3) whose events/s is the median of `runs`, with every run's rate, and the
    median of the runs' ratios to the limit measured before each."""
    done = sorted((fn() for _ in range(runs)), key=lambda r: float(r["events_per_s"]))
    middle = dict(done[len(done) // 2])
    middle["runs_events_per_s"] = [round(float(r["events_per_s"]), 1) for r in done]
    middle["runs_over_round_limit"] = [round(r["over_round_limit"], 3) for r in done]
    middle["over_round_limit"] = statistics.median(r["over_round_limit"] for r in done)
    middle["round_limit_rows_per_s"] = statistics.median(r["round_limit_rows_per_s"] for r in done)
    return middle


def run(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="aiu-bench-"))
    raw: dict[str, Any] = {}
    phases: dict[str, float] = {}
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def phase(name: str, fn: Callable[[], T]) -> T:
        _say(f"{name} ...")
        t0 = time.perf_counter()
        value = fn()
        phases[name] = round(time.perf_counter() - t0, 2)
        _say(f"{name}: done in {phases[name]:.1f}s")
        return value

    try:
        with open_stack(args.database_url, args.redis_url, workdir) as stack:
            _say(f"servers ready ({time.perf_counter() - started:.1f}s)")
            machine = describe_machine(stack)
            tenants = data.make_tenants(stack, TENANTS)
            evs = data.events(plan.n, tenants)
            priced = data.priced(evs)
            batch = int(Settings.model_fields["batch_max_events"].default)
            raw["limit"] = phase("(1) limit", lambda: throughput.limit(stack, priced, batch))
            # (3) and (3b) measure it again before each of their runs, for their ratios.
            again = throughput.limit_once(stack, priced, batch)
            wanted = set(args.only or DEFAULT_SECTIONS)
            if "naive" in wanted:
                raw["naive"] = phase(
                    "(2) naive",
                    lambda: throughput.naive(stack, workdir, priced[: plan.naive_n], tenants),
                )
            if "ours" in wanted:
                raw["ours_batched"] = phase(
                    "(3) ours, client batches, median of 3",
                    lambda: _median_of(3, lambda: _ours_batched(stack, workdir, evs, again)),
                )
            if "latency" in wanted:
                raw["latency"] = phase(
                    "(5) request path",
                    lambda: latency.request_path(stack, tenants, plan.latency_samples),
                )
                raw["dropping"] = phase(
                    "(5b) record() on the drop path",
                    lambda: latency.dropping(tenants, plan.latency_samples),
                )
                raw["app"] = phase(
                    "(5c) application throughput with and without the client",
                    lambda: latency.app_throughput(stack, tenants),
                )
            if "scaleout" in wanted:
                per_message = int(throughput.client_defaults()["batch_size"])
                raw["scaleout"] = phase(
                    "(3b) worker alone at 1 and 2 processes, 3 alternating runs",
                    lambda: scaleout.worker_alone(stack, workdir, evs, per_message, again),
                )
            if "writepath" in wanted:
                raw["writepath"] = phase(
                    "(3c) write path: fingerprints, redeliveries",
                    lambda: writepath.write_path(stack, evs[: min(len(evs), 20_000)], batch),
                )
            if "single" in wanted:
                queued = evs[: plan.queued_n]
                raw["ours_single"] = phase(
                    "(4) ours, single-event messages",
                    lambda: throughput.ours_single(stack, workdir, queued),
                )
                raw["noop"] = phase(
                    "(4) Celery no-op drain",
                    lambda: throughput.noop_drain(stack, workdir, plan.queued_n),
                )
            if "memory" in wanted and plan.soak_seconds > 0:
                raw["memory"] = phase(
                    "(7) memory soak",
                    lambda: memory.soak(stack, workdir, tenants, plan.soak_seconds, plan.soak_rate),
                )
            if "rollup" in wanted:
                raw["rollups"] = phase(
                    "(6) rollups and report",
                    lambda: rollup.rollups(stack, tenants, plan.rollup_rows, plan.report_reps),
                )
            if "scale" in wanted:
                raw["scale"] = phase(
                    "(8) scale: ingest, our additions and report --by user as the month grows",
                    lambda: scale.scale(
                        stack,
                        plan.scale_rows,
                        plan.scale_events,
                        prune_rows=plan.scale_prune_rows,
                    ),
                )
            machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        procs.stop_all()
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "meta": {
            "mode": plan.mode,
            "plan": vars(plan),
            "started_at": started_at,
            "duration_s": round(time.perf_counter() - started, 1),
            "phase_seconds": phases,
            "machine": machine,
            "notes": _notes(plan, machine),
        },
        **results.evaluate(raw),
        "details": raw,
    }


def main(argv: list[str] | None = None) -> int:
    args, plan = parse(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        result = run(args, plan)
    except (Interrupted, KeyboardInterrupt) as exc:
        _say(f"interrupted ({exc or 'Ctrl-C'}); everything started was stopped")
        return 130
    except procs.BenchError as exc:
        _say(f"failed: {exc}")
        return 1
    results.write_json(result, args.output)
    print(results.table(result))
    print(f"\nJSON: {args.output}")
    return 0
