"""The client's event ids (issue 27): RFC 9562 UUIDv7, strictly increasing in one process, also
within a millisecond, across a clock step back and in a forked child; the worker still takes
any UUID as the idempotency key."""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.conftest import count_rows
from tests.factories import event as factory
from worker.client import envelope
from worker.client.envelope import new_id
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer


def ms_of(u: uuid.UUID) -> int:
    return u.int >> 80


def counter_of(u: uuid.UUID) -> int:
    return ((u.int >> 64) & 0xFFF) << 30 | ((u.int >> 32) & 0x3FFF_FFFF)


@pytest.fixture(autouse=True)
def _fresh_generator() -> Iterator[None]:
    """A test that moved the clock must not leave later ids stamped with its time."""
    yield
    envelope._last_ms = -1


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """time.time_ns as the envelope module sees it, set by the test (nanoseconds); an hour
    ahead, so that it is past every id made before."""
    now = [time.time_ns() + 3600 * 10**9]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    yield now


def test_version_variant_and_timestamp() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    for u in ids:
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= ms_of(u) <= after
        # A stdlib UUID like any other: parsing its text gives it back.
        assert uuid.UUID(str(u)) == u and isinstance(u, uuid.UUID)


def test_many_ids_strictly_increase_and_are_unique() -> None:
    ids = [new_id() for _ in range(200_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(a.bytes < b.bytes for a, b in itertools.pairwise(ids[:1001]))
    assert all(str(a) < str(b) for a, b in itertools.pairwise(ids[:1001]))
    assert len(set(ids)) == len(ids)


def test_within_one_millisecond_the_counter_counts(frozen_clock: list[int]) -> None:
    ids = [new_id() for _ in range(5000)]
    assert {ms_of(u) for u in ids} == {frozen_clock[0] // 1_000_000}
    counters = [counter_of(u) for u in ids]
    assert counters == list(range(counters[0], counters[0] + 5000))
    # Each millisecond's counter starts at a random value with its top bit clear.
    assert counters[0] < 1 << 41
    frozen_clock[0] += 1_000_000
    nxt = new_id()
    assert ms_of(nxt) == ms_of(ids[0]) + 1 and nxt > ids[-1]


def test_clock_stepping_back_keeps_order(frozen_clock: list[int]) -> None:
    first = new_id()
    frozen_clock[0] -= 5_000_000_000  # NTP steps the clock back 5 s
    later = [new_id() for _ in range(10)]
    assert all(ms_of(u) == ms_of(first) for u in later)
    assert [first, *later] == sorted([first, *later]) and len(set(later)) == 10


def test_counter_overflow_borrows_the_next_millisecond(frozen_clock: list[int]) -> None:
    first = new_id()
    envelope._counter = envelope._MAX_COUNTER  # as after 4 trillion ids this millisecond
    nxt = new_id()
    assert ms_of(nxt) == ms_of(first) + 1 and nxt > first and counter_of(nxt) < 1 << 41


def test_threads_get_unique_increasing_ids() -> None:
    out: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def work(mine: list[uuid.UUID]) -> None:
        mine.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=work, args=(o,)) for o in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [u for o in out for u in o]
    assert len(set(every)) == len(every)
    for o in out:
        assert o == sorted(o)


def test_forked_child_does_not_repeat_the_parents_ids(frozen_clock: list[int]) -> None:
    # The clock stands still in both processes: without a new seed and counter the child's
    # next ids would be exactly the parent's.
    new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, ",".join(str(new_id()) for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = [uuid.UUID(x) for x in f.read().split(",")]
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(50)]
    assert len(child) == 50 and not set(child) & set(parent)
    assert child == sorted(child)
    assert {counter_of(u) for u in child}.isdisjoint({counter_of(u) for u in parent})


event = functools.partial(factory, created_at="2025-06-01T12:00:00Z")


def test_worker_takes_v4_and_v7_ids_alike(db: Engine, tenant: uuid.UUID) -> None:
    v4 = [event(tenant, id=str(uuid.uuid4())) for _ in range(50)]
    v7 = [event(tenant, id=str(new_id())) for _ in range(50)]
    other = [event(tenant, id=str(uuid.uuid1())) for _ in range(5)]
    mixed = [e for pair in zip(v4, v7, strict=True) for e in pair] + other
    r = write_batch(db, mixed, Pricer())
    assert (r.inserted, r.duplicates, r.dead_lettered) == (105, 0, 0)
    again = write_batch(db, v4[:10] + v7[:10], Pricer())
    assert (again.inserted, again.duplicates) == (0, 20)
    assert count_rows(db) == 105
