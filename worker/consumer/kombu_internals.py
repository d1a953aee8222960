"""The kombu internals the worker's transport (worker.consumer.transport) relies on.

kombu's Redis transport has no public seam for how a channel waits, takes and restores, so the
subclasses override or call these names. Each is listed with its use; the upgrade canary
(tests/test_transport_canary.py) checks that each still exists with the signature, and for the
overridden methods the source, reviewed for the supported kombu versions.
"""

from __future__ import annotations

from dataclasses import dataclass

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual


@dataclass(frozen=True)
class Internal:
    """A kombu internal this transport relies on, and how; `since` marks one that only newer
    kombu versions have (used when present)."""

    owner: type
    name: str
    use: str
    since: str | None = None


#: Every kombu name the transport uses that is not kombu's documented API. The canary test
#: checks each one exists with the signature (and, for the methods overridden here, the
#: source) reviewed for the supported kombu versions.
KOMBU_INTERNALS: tuple[Internal, ...] = (
    Internal(kombu_redis.Channel, "_brpop_start", "overridden: send the BLMOVE wait"),
    Internal(kombu_redis.Channel, "_brpop_read", "overridden: read the wait's reply, take"),
    Internal(kombu_redis.Channel, "_in_poll", "set while a wait is outstanding (the poller)"),
    Internal(kombu_redis.Channel, "_closing", "read: no take while the channel closes"),
    Internal(kombu_redis.Channel, "_create_client", "called: the cached client's pool"),
    Internal(kombu_redis.Channel, "_do_restore_message", "called: put a message back"),
    Internal(kombu_redis.Channel, "_q_for_pri", "called: a queue's list per priority"),
    Internal(kombu_redis.QoS, "_remove_from_indices", "called: ZREM + HDEL of a tag"),
    Internal(kombu_redis.QoS, "restore_by_tag", "overridden: set aside what cannot be restored"),
    Internal(virtual.QoS, "append", "called: in-memory bookkeeping of a delivered message"),
    Internal(virtual.QoS, "ack", "called: in-memory acknowledgement"),
    Internal(kombu_redis.Channel, "basic_consume", "overridden: remember each queue's callback"),
    Internal(kombu_redis.Channel, "unacked_key", "the hash of unacknowledged messages ('unacked')"),
    Internal(kombu_redis.Channel, "unacked_index_key", "their index by time ('unacked_index')"),
    Internal(kombu_redis.Channel, "sep", "joins a queue name and a priority in a list's key"),
    Internal(
        kombu_redis.Channel,
        "_brpop_sent_at",
        "set when the wait is sent: the poller drops a wait overdue on a half-open socket",
        since="5.7",
    ),
    Internal(
        kombu_redis.Channel,
        "_flush_brpop_reauth",
        "called after the wait's reply: sends a pending re-authentication",
        since="5.7",
    ),
)
