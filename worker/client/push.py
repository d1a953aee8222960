"""LPUSH of envelopes to the ai_usage queue with as few GIL hand-offs as one round trip allows.

Every blocking call the publishing thread makes (a socket send, a poll, a recv, a wait on a
lock) releases the GIL, and taking it back is where the application pays: while the thread
waits for the GIL, each release by an application thread (a hash, a read, any I/O) wakes it,
and it mostly loses the race and sleeps again, a context switch on each side. In the bench's
application loop (5c: each request hashes 8 kB), that was 0.6 to 0.96 futile wake-ups per
event recorded, and 13.5 to 19.7 us of the application's CPU per event.

redis-py's `lpush` sends a command in three socket writes or more (the header, each large
value, the trailing CRLF: `send_packed_command` writes each item of `pack_command`), each a
poll and a send under a socket timeout. Here a round's command (one LPUSH, every message of the
round: atomic, so a retry repeats all or none of it, and the worker keeps one row per event id
either way) is joined in one pass and written with one `sendall`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def push(client: Any, queue: str, envelopes: Sequence[Sequence[str]]) -> None:
    """LPUSH `envelopes` (each given as the pieces it is made of) to `queue`; the first is
    consumed first. A redis-py client gets one socket write for the whole command, on its own
    connection pool and retry policy; any other client (a cluster client, say) its `lpush`."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "get_connection"):
        client.lpush(queue, *("".join(e) for e in envelopes))
        return
    conn = pool.get_connection()  # no arguments: redis-py >= 5.3 (the range's floor)
    try:
        packed = [_packed(conn, queue, envelopes)]

        def send() -> Any:
            conn.send_packed_command(packed)
            return conn.read_response()  # raises the server's error reply, if any

        # As redis-py's own execute_command: a stale pooled connection is reconnected.
        conn.retry.call_with_retry(send, lambda error: conn.disconnect())
    finally:
        pool.release(conn)


def _packed(conn: Any, queue: str, envelopes: Sequence[Sequence[str]]) -> bytes:
    """The RESP command LPUSH queue *envelopes, as one bytes object."""
    parts = [f"*{2 + len(envelopes)}\r\n$5\r\nLPUSH\r\n${len(queue)}\r\n{queue}\r\n"]
    for pieces in envelopes:
        parts.append(f"${sum(map(len, pieces))}\r\n")
        parts.extend(pieces)
        parts.append("\r\n")
    text = "".join(parts)
    if text.isascii():  # then a length in characters is one in bytes (isascii() is O(1))
        return text.encode()
    # A label outside ASCII: redis-py counts the bytes.
    return b"".join(conn.pack_command("LPUSH", queue, *("".join(e) for e in envelopes)))
