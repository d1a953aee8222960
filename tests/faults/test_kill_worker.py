"""Fault 1: the worker is killed with SIGKILL (its whole process group) while events are ingested.

Messages the worker took but had not acknowledged stay in Redis ("unacked") and come back once
the visibility timeout passed; writes are idempotent by event id, so nothing doubles.

One window is not covered by Redis: kombu consumes with BRPOP, and a message that BRPOP
already removed from the list but whose reply the worker has not yet read is in neither the
list nor "unacked". A worker killed then loses that message (up to one message, here 100
events, per kill). The kill test below therefore kills while no publish is in transit (the
producer pauses for the instant of the kill, the queue is drained into the worker); the
second test reproduces the window deterministically and is expected to fail until the
product closes it (see its reason).
"""

from __future__ import annotations

import os
import random
import signal
import time

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

pytestmark = pytest.mark.faults

EVENTS = 50_000
PER_MESSAGE = 100
#: The smallest the settings allow: a killed worker's messages are restorable 10 s later.
VISIBILITY_S = 10
#: Rows stored before each kill.
KILL_AT = (8_000, 20_000, 32_000)


def test_kill_9_worker_three_times(stack: Stack, fault_summary) -> None:
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
        wait_for(lambda t=threshold: stack.rows() >= t, 180, what=f"{threshold} rows stored")
        while True:
            # Nothing in transit: the queue is drained into the worker, which still holds
            # unacknowledged messages (in its batcher, or in the middle of a write).
            sender.pause()
            wait_for(lambda: stack.broker_backlog()[0] == 0, 60, interval=0.01, what="drained")
            held = stack.broker_backlog()[1]
            if held:
                break
            sender.resume()
            time.sleep(0.2)
        held_at_kill.append(held)
        worker.kill()
        sender.resume()
        # Past the visibility timeout, the next worker restores the killed one's messages when
        # its consumer starts (else only at kombu's sweep, about every 100 s).
        time.sleep(VISIBILITY_S + 2)
        worker = stack.start_worker(env)

    sender.join(180)
    got = stack.wait_landed(ids, timeout=240)
    # Everything is acknowledged once stored, and nothing is left in the queue.
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="queue and unacked drained")
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    fault_summary.add(f"kill -9 worker x3 (held {held_at_kill} msgs)", got)
    assert got.rows == EVENTS, got
    assert got.distinct == EVENTS, got
    assert got.duplicates == 0 and got.lost == 0, got
    assert got.table_rows == EVENTS, got


@pytest.mark.xfail(
    strict=True,
    reason="product bug: kombu's Redis transport consumes with BRPOP; a message popped by a"
    " BRPOP whose reply the worker has not read yet is in neither the queue nor 'unacked',"
    " so kill -9 loses it (one message per kill). Reported with the fault suite (issue 6).",
)
def test_kill_9_with_message_in_brpop_reply(stack: Stack, fault_summary) -> None:
    """A worker is frozen (SIGSTOP) while its BRPOP is outstanding, one message is published
    (Redis hands it to that BRPOP), then the worker is killed. The event must still land."""
    tenant = stack.tenant("limbo")
    env = stack.env(AI_USAGE_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    worker = stack.start_worker(env)
    app = producer_app(stack.redis_url)
    time.sleep(2)
    sent: list[str] = []
    for _ in range(30):
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        event = good_event(tenant)
        send(app, RECORD_BATCH, [[event]])
        sent.append(event["id"])
        time.sleep(0.3)
        if stack.broker_backlog() == (0, 0):
            break  # popped by the frozen worker's BRPOP, recorded nowhere in Redis
        # BRPOP had timed out (it is re-issued every second): let it run and try again.
        os.killpg(worker.proc.pid, signal.SIGCONT)
        time.sleep(1.3)
    else:
        pytest.fail("the message was never caught in a BRPOP reply")
    worker.kill()
    time.sleep(VISIBILITY_S + 2)
    stack.start_worker(env)
    got = stack.wait_landed(sent, timeout=120)
    fault_summary.add("kill -9 with a message in BRPOP reply", got)
    assert got.lost == 0, f"{got.lost} of {got.sent} events lost: {got}"
