"""Celery worker subprocesses, each in a process group of its own, always stopped: by `stop()`,
by `stop_all()` (the harness's finally), or at interpreter exit."""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import psutil

from bench.servers import ROOT, Stack
from worker.settings import WORKER_ARGS

CELERY = str(Path(sys.executable).parent / "celery")

_live: list[Worker] = []

#: The naive baseline's queue (bench/naive_app.py routes its tasks there by default).
NAIVE_QUEUE = "naive"


class BenchError(RuntimeError):
    """Raised when a phase cannot complete (a worker died, rows never landed, ...)."""


def worker_env(stack: Stack, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker: the run's servers, default AI_USAGE_* settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AI_USAGE_", "CELERY_", "BENCH_", "PROMETHEUS_"))
        and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")
    }
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        DATABASE_URL=stack.database_url,
        REDIS_URL=stack.redis_url,
        PYTHONPATH=os.pathsep.join(path),
        BENCH_READY_FILE=str(workdir / f"ready-{secrets.token_hex(4)}"),
        **extra,
    )
    return env


class Worker:
    """A `celery worker` subprocess. Ready when its log says "ready." (ours logs at INFO) or
    when it touches BENCH_READY_FILE (bench.naive_app's worker_ready hook)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}-{secrets.token_hex(3)}.log"
        self.ready_file = Path(env["BENCH_READY_FILE"])
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_at = 0.0  # perf_counter() at spawn
        self._spawned_wall = 0.0  # time.time() at spawn
        self.ready_at: float | None = None  # perf_counter() when it became ready

    def spawn(self) -> Worker:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.started_at = time.perf_counter()
        self._spawned_wall = time.time()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,  # no .env of the checkout is read
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _live.append(self)
        return self

    def _ready_wall(self) -> float | None:
        """time.time() at which the worker said it was ready, from its own record of it."""
        if self.ready_file.exists():
            return self.ready_file.stat().st_mtime
        for line in self.log_path.read_bytes().splitlines():
            if line.rstrip().endswith(b" ready."):
                try:
                    stamp = dt.datetime.strptime(line[:23].decode(), "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    return time.time()
                return stamp.timestamp()
        return None

    def is_ready(self) -> bool:
        """True once ready (`ready_at` is when it said so); raises if the worker died."""
        if self.ready_at is not None:
            return True
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} worker exited:\n{self.log_tail()}")
        wall = self._ready_wall()
        if wall is None:
            return False
        self.ready_at = self.started_at + max(0.0, wall - self._spawned_wall)
        return True

    def wait_ready(self, timeout: float = 90) -> Worker:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} worker not ready after {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def start(self, timeout: float = 90) -> Worker:
        return self.spawn().wait_ready(timeout)

    def tree_rss(self) -> int:
        """Resident bytes of the worker and all its children (pool processes)."""
        if self.proc is None:
            return 0
        total = 0
        try:
            main = psutil.Process(self.proc.pid)
            for p in (main, *main.children(recursive=True)):
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
        except psutil.NoSuchProcess:
            return 0
        return total

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown of the whole process group (SIGTERM), SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            # Pool children left behind by a dead main process are still in the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in _live:
            _live.remove(self)


def ours(stack: Stack, workdir: Path, **extra: str) -> Worker:
    """The product's worker, started as tests/conftest.py starts it (`extra`: settings)."""
    argv = [
        CELERY,
        "-A",
        "worker.celery_app",
        *WORKER_ARGS,
        "--hostname",
        f"bench-ours-{secrets.token_hex(3)}@%h",
    ]
    return Worker("ours", argv, worker_env(stack, workdir, **extra), workdir)


def naive(stack: Stack, workdir: Path) -> Worker:
    """bench.naive_app with Celery's defaults: prefork, concurrency = CPUs, prefetch 4."""
    argv = [
        CELERY,
        "-A",
        "bench.naive_app",
        "worker",
        "-Q",
        NAIVE_QUEUE,
        "--hostname",
        f"bench-naive-{secrets.token_hex(3)}@%h",
    ]
    return Worker("naive", argv, worker_env(stack, workdir), workdir)


def stop_all() -> None:
    for w in list(_live):
        w.stop(timeout=15)


atexit.register(stop_all)
