"""Where the machine's CPU went during a measured stretch: by process group, and idle.

A drain that does not scale with a second worker is either short of CPU (no core idle: the
work per event is the cost) or waiting (cores idle: something serialises). `Meter` tells the
two apart: it reads every process's CPU time (psutil) and the machine's idle and steal time
at the start and at the end of the stretch, and charges each process to a group: the given
worker trees, PostgreSQL, Redis, this harness, or the rest."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

GROUPS = ("worker", "postgres", "redis", "bench", "other")


def _group(proc: psutil.Process, workers: set[int], me: int) -> str:
    if proc.pid in workers:
        return "worker"
    if proc.pid == me:
        return "bench"
    name = proc.info.get("name") or ""
    if name.startswith("postgres") or name == "postmaster":
        return "postgres"
    if name.startswith("redis-server"):
        return "redis"
    return "other"


def _tree(pids: Sequence[int]) -> set[int]:
    out: set[int] = set()
    for pid in pids:
        try:
            main = psutil.Process(pid)
            out.add(pid)
            out.update(c.pid for c in main.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return out


def _snapshot() -> dict[tuple[int, float], tuple[psutil.Process, float]]:
    """CPU seconds (user + system) of every process, keyed by (pid, create time)."""
    out: dict[tuple[int, float], tuple[psutil.Process, float]] = {}
    for proc in psutil.process_iter(["name", "create_time", "cpu_times"]):
        times = proc.info.get("cpu_times")
        created = proc.info.get("create_time")
        if times is None or created is None:
            continue
        out[(proc.pid, created)] = (proc, times.user + times.system)
    return out


@dataclass
class Meter:
    """Start it, do the work, `stop(events, worker_pids)`: CPU per event by group."""

    _t0: float = 0.0
    _procs: dict[tuple[int, float], tuple[psutil.Process, float]] = field(default_factory=dict)
    _machine: Any = None

    def start(self) -> Meter:
        self._procs = _snapshot()
        self._machine = psutil.cpu_times()
        self._t0 = time.perf_counter()
        return self

    def stop(self, events: int, worker_pids: Sequence[int]) -> dict[str, Any]:
        """Seconds of the stretch, CPU µs per event of each group, and the share of the
        machine's core time that was idle or stolen by the hypervisor."""
        wall = time.perf_counter() - self._t0
        machine = psutil.cpu_times()
        after = _snapshot()
        workers = _tree(worker_pids)
        me = psutil.Process().pid
        spent = dict.fromkeys(GROUPS, 0.0)
        for key, (proc, cpu) in after.items():
            before = self._procs.get(key, (proc, 0.0))[1]
            spent[_group(proc, workers, me)] += max(0.0, cpu - before)
        cores = psutil.cpu_count() or 1
        idle = machine.idle - self._machine.idle
        steal = getattr(machine, "steal", 0.0) - getattr(self._machine, "steal", 0.0)
        return {
            "seconds": round(wall, 4),
            "cpu_us_per_event": {g: round(s * 1e6 / max(events, 1), 2) for g, s in spent.items()},
            "idle_share": round(idle / (wall * cores), 4),
            "steal_share": round(steal / (wall * cores), 4),
        }
