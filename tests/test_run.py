"""`make run`: the pipeline comes up on embedded servers, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.conftest import AI_USAGE, ROOT, wait_for


def test_run_comes_up_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env["AI_USAGE_RUN_DIR"] = str(tmp_path / "run")
    out = open(tmp_path / "out.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [AI_USAGE, "run", "--events", "200"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (
                b"pipeline running" in (tmp_path / "out.log").read_bytes()
                or proc.poll() is not None
            ),
            240,
            interval=0.5,
            what="pipeline running",
        )
        text = (tmp_path / "out.log").read_text()
        assert "200 of 200 events landed" in text, text
        assert "AI usage for" in text
        descendants = psutil.Process(proc.pid).children(recursive=True)
        postmaster = int((tmp_path / "run" / "postgres" / "postmaster.pid").read_text().split()[0])
        assert len(descendants) >= 3  # redis, worker (and its pool), beat
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    assert "nothing left running" in (tmp_path / "out.log").read_text()
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == "zombie"
