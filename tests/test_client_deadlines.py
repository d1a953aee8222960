"""The client keeps its deadlines whatever Redis does, its counts are final when close()
returns, and a burst of drops is a summary, not one log line per event."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from worker.client import UsageClient


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def record(client: UsageClient, n: int) -> None:
    tenant = uuid.uuid4()
    for _ in range(n):
        client.record(tenant_id=tenant, operation="x", model="gpt-4o", input_tokens=1,
                      output_tokens=1)  # fmt: skip


@pytest.mark.parametrize("timeout", [1.0, 2.0])
def test_close_keeps_its_deadline_with_a_hung_redis_and_the_counts_are_final(
    hung_redis: str, timeout: float
) -> None:
    client = UsageClient(hung_redis, batch_size=500, flush_interval_ms=10, max_queue=10_000)
    record(client, 3000)
    time.sleep(0.2)  # the thread is now stuck in its first LPUSH
    started = time.monotonic()
    client.close(timeout=timeout)
    took = time.monotonic() - started
    assert took <= timeout + 0.2, took
    assert (client.dropped, client.published, client.pending()) == (3000, 0, 0)
    time.sleep(2.5)  # the stuck socket call times out meanwhile: nothing changes
    assert (client.dropped, client.published, client.pending()) == (3000, 0, 0)


def test_flush_keeps_its_deadline_with_a_hung_redis(hung_redis: str) -> None:
    client = UsageClient(hung_redis, batch_size=100, flush_interval_ms=10)
    record(client, 250)
    started = time.monotonic()
    assert client.flush(timeout=0.5) is False
    assert time.monotonic() - started <= 0.7
    client.close(timeout=0.2)
    assert client.dropped == 250


def test_a_burst_of_drops_is_one_summary_line(
    hung_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = UsageClient(hung_redis, batch_size=500, flush_interval_ms=10, max_queue=1_000)
    with caplog.at_level(logging.WARNING, logger="worker.client.publisher"):
        record(client, 60_000)
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert client.dropped >= 58_000
    assert 1 <= len(drops) <= 2, [r.getMessage() for r in drops]  # per 10 s, not per event
    client.close(timeout=0.2)
