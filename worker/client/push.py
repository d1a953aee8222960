"""LPUSH of envelopes to the ai_usage queue in as few GIL hand-offs as one round trip allows.

Every blocking call the publishing thread makes (a socket send, a poll, a recv, a wait on a
lock) releases the GIL, and taking it back is where the application pays: while the thread
waits for the GIL, each release by an application thread (a hash, a read, any I/O) wakes it,
and it mostly loses the race and sleeps again, a context switch on each side. Measured in the
bench's application loop (5c), which hashes 8 kB per request: about one such futile wake-up per
event recorded, 15-20 us of the application's CPU per event, most of it in the kernel.

redis-py's `lpush` sends a command in three socket writes or more (the header, each large
value, the trailing CRLF: `send_packed_command` writes each item of `pack_command`), each a
poll and a send with a socket timeout. Here the command is joined into one bytes object and
written with one `sendall`, and one call carries every message of a publishing round (one
LPUSH, many values: atomic, so a retry after an error repeats all or none of it; the worker
keeps one row per event id either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def push(client: Any, queue: str, envelopes: Sequence[str]) -> None:
    """LPUSH `envelopes` to `queue` (the first is consumed first). A redis-py client gets one
    socket write for the whole command, on its own connection pool and retry policy; any
    other client (a cluster client, say) gets its own `lpush`."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "get_connection"):
        client.lpush(queue, *envelopes)
        return
    conn = pool.get_connection()  # no arguments: redis-py >= 5.3 (the range's floor)
    try:
        packed = [b"".join(conn.pack_command("LPUSH", queue, *envelopes))]

        def send() -> Any:
            conn.send_packed_command(packed)
            return conn.read_response()  # raises the server's error reply, if any

        # As redis-py's own execute_command: a stale pooled connection is reconnected.
        conn.retry.call_with_retry(send, lambda error: conn.disconnect())
    finally:
        pool.release(conn)
