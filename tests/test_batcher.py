"""The Batcher: batch caps, ack only after a successful write, backoff while the write fails."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from worker.consumer.batcher import Batcher
from worker.ledger.ingest import WriteResult


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.failing = False

    def __call__(self, payloads: list[Any]) -> WriteResult:
        if self.failing:
            raise ConnectionError("database down")
        self.batches.append(payloads)
        return WriteResult(received=len(payloads), inserted=len(payloads))


def make(sink: Sink, clock: Clock, **kw: Any) -> Batcher:
    opts: dict[str, Any] = {
        "max_events": 10,
        "max_bytes": 10_000,
        "max_wait_s": 0.5,
        "retry_max_s": 4.0,
        "clock": clock,
    }
    opts.update(kw)
    return Batcher(sink, **opts)


def test_writes_when_full_and_acks_after_write() -> None:
    sink, clock, acked = Sink(), Clock(), []
    b = make(sink, clock)
    for i in range(9):
        b.add([i], 10, lambda i=i: acked.append(i))
    assert sink.batches == [] and acked == []
    b.add([9], 10, lambda: acked.append(9))
    assert sink.batches == [list(range(10))]
    assert acked == list(range(10))


def test_writes_when_oldest_is_due() -> None:
    sink, clock, acked = Sink(), Clock(), []
    b = make(sink, clock)
    b.add(["a"], 1, lambda: acked.append("a"))
    clock.now = 0.4
    b.tick()
    assert acked == []
    clock.now = 0.5
    b.tick()
    assert sink.batches == [["a"]] and acked == ["a"]


def test_byte_cap_and_whole_messages() -> None:
    sink, clock = Sink(), Clock()
    b = make(sink, clock, max_bytes=100)
    b.add([1, 2, 3], 60, lambda: None)
    b.add([4, 5], 60, lambda: None)  # 120 bytes: full; the batch is split at message bounds
    assert sink.batches == [[1, 2, 3], [4, 5]]


def test_a_message_larger_than_the_cap_is_written_in_parts_and_acked_once() -> None:
    sink, clock, acked = Sink(), Clock(), []
    b = make(sink, clock, max_events=3)
    calls: list[int] = []

    def acknowledge(acks: list[Any]) -> None:
        calls.append(len(acks))
        for ack in acks:
            ack()

    b._acknowledge = acknowledge
    b.add(list(range(7)), 70, lambda: acked.append("big"))
    # One transaction per part, each of at most max_events; one acknowledgement, after the last.
    assert sink.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert acked == ["big"] and calls == [0, 0, 1]


def test_a_part_that_fails_keeps_the_whole_message_unacked() -> None:
    sink, clock, acked = Sink(), Clock(), []
    b = make(sink, clock, max_events=3)
    b.add(list(range(6)), 60, lambda: acked.append("big"))
    assert sink.batches == [[0, 1, 2], [3, 4, 5]] and acked == ["big"]
    sink.batches.clear()
    acked.clear()
    sink.failing = True
    b.add(list(range(10, 16)), 60, lambda: acked.append("second"))
    assert acked == [] and b.held_events == 6
    sink.failing = False
    clock.now = 5.0
    b.tick()
    assert acked == ["second"] and b.held_events == 0


def test_unwritten_hands_back_each_message_once() -> None:
    sink, clock = Sink(), Clock()
    b = make(sink, clock, max_events=3)
    sink.failing = True
    b.add(list(range(7)), 70, "big")
    b.add([9], 1, "small")
    assert b.unwritten() == ["big", "small"] and b.held_events == 0


def test_failed_write_keeps_messages_unacked_and_backs_off() -> None:
    sink, clock, acked = Sink(), Clock(), []
    b = make(sink, clock)
    sink.failing = True
    for i in range(10):
        b.add([i], 1, lambda i=i: acked.append(i))
    assert acked == [] and b.pending_events == 10
    # During backoff nothing is attempted, even when more arrives.
    b.add([10], 1, lambda: acked.append(10))
    clock.now = 0.4
    b.tick()
    assert sink.batches == []
    sink.failing = False
    clock.now = 0.6
    b.tick()
    assert [e for batch in sink.batches for e in batch] == list(range(11))
    assert sorted(acked) == list(range(11)) and b.pending_events == 0


def test_backoff_grows_and_is_capped() -> None:
    sink, clock = Sink(), Clock()
    b = make(sink, clock, retry_max_s=2.0)
    sink.failing = True
    b.add([1], 1, lambda: None)
    delays = []
    for _ in range(6):
        clock.now += 1000
        start = clock.now
        b.flush()
        delays.append(b._retry_at - start)
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


class ManualExecutor:
    """Runs submitted work only when the test says so."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Future[Any], Any, tuple[Any, ...]]] = []

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.jobs.append((future, fn, args))
        return future

    def run_all(self) -> None:
        for future, fn, args in self.jobs:
            try:
                future.set_result(fn(*args))
            except Exception as exc:
                future.set_exception(exc)
        self.jobs.clear()


def test_writer_thread_acks_only_when_its_write_is_done() -> None:
    sink, clock, acked, pool = Sink(), Clock(), [], ManualExecutor()
    b = make(sink, clock, executor=pool, prepare=lambda payloads: list(payloads))
    for i in range(10):
        b.add([i], 1, lambda i=i: acked.append(i))
    assert len(pool.jobs) == 1 and acked == []  # submitted, not yet written
    for i in range(10, 15):
        b.add([i], 1, lambda i=i: acked.append(i))
    b.tick()
    assert acked == []
    pool.run_all()
    b.tick()  # settles the finished write on the consumer's thread
    assert acked == list(range(10))
    clock.now = 1.0
    b.tick()
    pool.run_all()
    assert b.drain()
    assert acked == list(range(15)) and sink.batches == [list(range(10)), list(range(10, 15))]


def test_writer_thread_failure_puts_the_batch_back() -> None:
    sink, clock, acked, pool = Sink(), Clock(), [], ManualExecutor()
    b = make(sink, clock, executor=pool)
    sink.failing = True
    for i in range(10):
        b.add([i], 1, lambda i=i: acked.append(i))
    pool.run_all()
    b.tick()
    assert acked == [] and b.pending_events == 10  # back in the queue, unacknowledged
    sink.failing = False
    clock.now = 5.0
    b.tick()
    pool.run_all()
    assert b.drain() and sorted(acked) == list(range(10))


def test_real_thread_pool() -> None:
    sink, clock, acked = Sink(), Clock(), []
    with ThreadPoolExecutor(1) as pool:
        b = make(sink, clock, executor=pool)
        for i in range(95):
            b.add([i], 1, lambda i=i: acked.append(i))
        assert b.drain()
    assert sorted(acked) == list(range(95))
    assert sorted(e for batch in sink.batches for e in batch) == list(range(95))
