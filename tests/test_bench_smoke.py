"""The benchmark harness runs end to end (quick mode, tiny sizes, its own embedded servers) and
writes every figure. No timing is asserted: this only proves `make bench` works."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.results import FIGURE_KEYS, TARGETS
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    # No URLs: the harness starts and destroys embedded servers of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    argv = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--n",
        "300",
        "--latency-samples",
        "200",
        "--rollup-rows",
        "20000",
        "--soak-seconds",
        "4",
        "--output",
        str(output),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its workers and servers
        out, _ = proc.communicate(timeout=60)
        pytest.fail(
            f"the benchmark did not finish in 240 s:\n{out.decode(errors='replace')[-4000:]}"
        )
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "Targets" in text

    result = json.loads(output.read_text())
    figures = result["figures"]
    assert set(FIGURE_KEYS) <= set(figures)
    for key in FIGURE_KEYS:
        value = figures[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value >= 0, (key, value)
    statuses = {t["key"]: t for t in result["targets"]}
    assert set(statuses) == {t.key for t in TARGETS}
    for target in statuses.values():
        assert isinstance(target["value"], int | float), target
        assert target["status"] in ("held", "missed"), target
    for key, value in result["ratios"].items():
        assert isinstance(value, int | float), (key, value)
    machine = result["meta"]["machine"]
    for key in ("cpu_count", "cpu_model", "memory_total_mb", "python", "postgres", "redis"):
        assert machine[key], key
    assert result["meta"]["mode"] == "quick"
