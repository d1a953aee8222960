"""Fault 1: the worker is killed with SIGKILL (its whole process group) while events are ingested.

Messages the worker took but had not acknowledged stay in Redis ("unacked") and come back once
the visibility timeout passed; writes are idempotent by event id, so nothing doubles.

kombu consumes with BRPOP, which removes a message from the list before the worker has read
the reply: a worker killed in between lost that message, in neither the list nor "unacked".
The worker now waits without popping and takes messages with a script that records them as
unacknowledged in the same step (worker/consumer/transport.py). The first test kills at whatever moment
the threshold is reached, with the producer still sending; the second reproduces the old
window deterministically.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import wait_for
from tests.faults.support import (
    RECORD_BATCH,
    PacedSender,
    Stack,
    good_event,
    producer_app,
    send,
)

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults

EVENTS = 50_000
PER_MESSAGE = 100
#: The smallest the settings allow: a killed worker's messages are restorable 10 s later.
VISIBILITY_S = 10
#: Rows stored before each kill.
KILL_AT = (8_000, 20_000, 32_000)


def test_kill_9_worker_three_times(stack: Stack, fault_summary: Summary) -> None:
    rng = random.Random(1)
    tenants = [stack.tenant(f"kill-{i}") for i in range(3)]
    events = [good_event(rng.choice(tenants), rng) for _ in range(EVENTS)]
    ids = [e["id"] for e in events]
    batches = [events[i : i + PER_MESSAGE] for i in range(0, EVENTS, PER_MESSAGE)]
    # Batches of 20 messages, written when full or 5 s old: a worker always holds some
    # messages it has not acknowledged.
    env = stack.env(
        AI_USAGE_VISIBILITY_TIMEOUT=str(VISIBILITY_S),
        AI_USAGE_BATCH_MAX_EVENTS="2000",
        AI_USAGE_BATCH_MAX_WAIT_MS="5000",
    )

    worker = stack.start_worker(env)
    sender = PacedSender(producer_app(stack.redis_url), batches, per_second=25).start()
    held_at_kill: list[int] = []
    for threshold in KILL_AT:
        wait_for(
            functools.partial(lambda t: stack.rows() >= t, threshold),
            180,
            what=f"{threshold} rows stored",
        )
        # No pause: the producer keeps publishing, the worker is wherever it happens to be.
        held_at_kill.append(stack.broker_backlog()[1])
        worker.kill()
        # Past the visibility timeout, the next worker restores the killed one's messages when
        # its consumer starts (else at the worker's unacked sweep).
        time.sleep(VISIBILITY_S + 2)
        worker = stack.start_worker(env)

    sender.join(180)
    got = stack.wait_landed(ids, timeout=240)
    # Everything is acknowledged once stored, and nothing is left in the queue.
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="queue and unacked drained")
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    fault_summary.add(f"kill -9 worker x3 (held {held_at_kill} msgs)", got)
    # Each kill found messages held unacknowledged: the restore path was exercised every time.
    assert all(held_at_kill), held_at_kill
    assert got.rows == EVENTS, got
    assert got.distinct == EVENTS, got
    assert got.duplicates == 0 and got.lost == 0, got
    assert got.table_rows == EVENTS, got


def test_kill_9_while_waiting_for_a_message(stack: Stack, fault_summary: Summary) -> None:
    """An idle worker is frozen (SIGSTOP) while its wait for a message is outstanding, one
    message is published, and the worker is killed before it runs again. With kombu's BRPOP,
    Redis handed the message to the frozen worker's socket and it was gone; now it must still
    be in the queue, and land once another worker starts. Five rounds."""
    tenant = stack.tenant("limbo")
    env = stack.env(AI_USAGE_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    app = producer_app(stack.redis_url)
    sent: list[str] = []
    backlogs: list[tuple[int, int]] = []
    for _ in range(5):
        worker = stack.start_worker(env)
        assert stack.wait_landed(sent, timeout=60).lost == 0
        # Acknowledged too (the ack follows the commit): nothing of the last round is held.
        wait_for(lambda: stack.broker_backlog() == (0, 0), 30, what="last round acknowledged")
        time.sleep(1.5)  # idle, so its wait is outstanding (it is re-sent every second)
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        event = good_event(tenant)
        send(app, RECORD_BATCH, [[event]])
        sent.append(event["id"])
        time.sleep(0.3)
        backlogs.append(stack.broker_backlog())
        worker.kill()
    stack.start_worker(env)
    got = stack.wait_landed(sent, timeout=60)
    fault_summary.add("kill -9 x5 while waiting for a message", got)
    # Killed while frozen, the worker had taken nothing: each message was still queued.
    assert backlogs == [(1, 0)] * 5, backlogs
    assert got.lost == 0 and got.duplicates == 0 and got.rows == len(sent), got
