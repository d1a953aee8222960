"""Faults 2 and 3: PostgreSQL stops for 30 s, Redis restarts (AOF on), in the middle of a run.
The same worker process rides both out; nothing whose publish was confirmed is lost."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import TYPE_CHECKING

import pytest
import redis

from tests.conftest import wait_for
from tests.faults.support import (
    RECORD_BATCH,
    PacedSender,
    Stack,
    good_event,
    producer_app,
    send,
)
from worker.client import UsageClient

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults

PER_MESSAGE = 100


def test_postgres_down_30s(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(2)
    tenants = [stack.tenant(f"pg-{i}") for i in range(3)]
    events = [good_event(rng.choice(tenants), rng) for _ in range(30_000)]
    ids = [e["id"] for e in events]
    batches = [events[i : i + PER_MESSAGE] for i in range(0, len(events), PER_MESSAGE)]
    worker = stack.start_worker()
    assert worker.proc is not None
    pid = worker.proc.pid
    sender = PacedSender(producer_app(stack.redis_url), batches, per_second=8).start()

    wait_for(lambda: stack.rows() >= 5_000, 120, what="5,000 rows before the outage")
    stack.engine.dispose()
    stack.pg.stop("fast")
    time.sleep(30)
    during = stack.broker_backlog()
    stack.pg.start()
    back = time.monotonic()

    sender.join(120)
    got = stack.wait_landed(ids, timeout=180)
    cleared_s = time.monotonic() - back
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="queue and unacked drained")
    log = worker.log_path.read_text(errors="replace")
    fault_summary.add("PostgreSQL down 30 s", got)
    assert worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
    assert "not written" in log, "the outage was not noticed by the worker"
    assert sum(during) > 0, "the worker held or queued nothing during the outage"
    assert got.rows == len(events) and got.distinct == len(events), got
    assert got.duplicates == 0 and got.lost == 0 and got.table_rows == len(events), got
    assert cleared_s < 120, f"backlog took {cleared_s:.0f}s to clear"


class _Publishers:
    """Two producer threads against Redis: the sync client (one `ai_usage.record` per event,
    returns once Redis holds it) and raw `record_batch` send_task calls. Each remembers which
    publishes were confirmed and which raised."""

    def __init__(self, url: str, tenants: list[uuid.UUID], rate: float) -> None:
        self.url, self.tenants, self.rate = url, tenants, rate
        self.confirmed: list[str] = []
        self.unconfirmed: list[str] = []
        self._stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._sync_client, daemon=True),
            threading.Thread(target=self._batches, daemon=True),
        ]

    def start(self) -> _Publishers:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()

    def _sync_client(self) -> None:
        rng = random.Random(3)
        client = UsageClient(self.url, mode="sync")
        while not self._stop.is_set():
            event = good_event(rng.choice(self.tenants), rng)
            try:
                client.record(**event)
                self.confirmed.append(event["id"])
            except Exception:
                self.unconfirmed.append(event["id"])
            time.sleep(1 / self.rate)
        client.close()

    def _batches(self) -> None:
        rng = random.Random(4)
        app = producer_app(self.url)
        while not self._stop.is_set():
            batch = [good_event(rng.choice(self.tenants), rng) for _ in range(PER_MESSAGE)]
            try:
                send(app, RECORD_BATCH, [batch])
                self.confirmed.extend(e["id"] for e in batch)
            except Exception:
                self.unconfirmed.extend(e["id"] for e in batch)
                time.sleep(0.5)
            time.sleep(10 / self.rate)


def test_redis_restart(stack: Stack, fault_summary: Summary) -> None:
    tenants = [stack.tenant(f"redis-{i}") for i in range(3)]
    worker = stack.start_worker(AI_USAGE_VISIBILITY_TIMEOUT="10")
    assert worker.proc is not None
    pid = worker.proc.pid
    pubs = _Publishers(stack.redis_url, tenants, rate=100).start()

    wait_for(lambda: stack.rows() >= 3_000, 120, what="3,000 rows before the restart")
    held = redis.Redis.from_url(stack.redis_url).hlen("unacked")
    stack.redis.stop()  # SIGTERM: a clean shutdown, the AOF is flushed
    time.sleep(5)
    stack.redis.start()  # same port, same data folder
    wait_for(lambda: stack.rows() >= 6_000, 120, what="rows after the restart")
    pubs.stop()
    # A last lone event: it fills no batch, so only the batcher's timer can write it.
    probe = good_event(tenants[0])
    send(producer_app(stack.redis_url), RECORD_BATCH, [[probe]])
    pubs.confirmed.append(probe["id"])

    stack.wait_landed(pubs.confirmed, timeout=90)
    probe_landed = stack.landed([probe["id"]]).distinct
    # A refused publish that did reach Redis may still be on its way (or held unacknowledged
    # up to the 10 s visibility timeout): count the rest only once nothing is left to come.
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="queue and unacked drained")
    got = stack.landed(pubs.confirmed)
    extra = stack.landed(pubs.unconfirmed)
    log = worker.log_path.read_text(errors="replace")
    fault_summary.add(
        f"Redis restart (AOF; held {held} msgs; {len(pubs.unconfirmed)} publishes refused)",
        got,
        sent=got.sent + len(pubs.unconfirmed),
    )
    assert worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
    assert "Unrecoverable error" not in log, log[-3000:]
    assert probe_landed, "after the reconnect the batcher no longer writes partial batches"
    assert got.lost == 0, got
    assert got.rows == got.sent and got.duplicates == 0, got
    # A refused publish may or may not have reached Redis; it is never stored twice, and
    # nothing but the sent events is stored.
    assert extra.duplicates == 0, extra
    assert got.table_rows == got.rows + extra.rows, (got, extra)
