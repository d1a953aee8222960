"""The upgrade canary: every kombu internal the worker's transport relies on
(worker.consumer.kombu_internals.KOMBU_INTERNALS) still exists, with the signature and, for the
methods it overrides or calls, the source reviewed against this transport. A kombu upgrade
that changes one fails here, naming it, before it can break ingestion in production."""

from __future__ import annotations

import hashlib
import inspect

import kombu
import pytest

from worker.consumer.kombu_internals import KOMBU_INTERNALS, Internal

#: sha256[:16] of each method's source, per reviewed kombu version (5.6.2, 5.7.0). When a new
#: kombu changes one: read the change, adapt worker/consumer/transport.py if needed, run the
#: broker and fault suites (`make test` and `make test-oldest`), then add the new hash here.
REVIEWED: dict[str, set[str]] = {
    "Channel._brpop_start": {"f2f311d862e9db9b", "06723d707ddf2240"},
    "Channel._brpop_read": {"9a9f7f5a6ad96f48", "c42518699709f2df"},
    "Channel._create_client": {"30a3e9ee7712e54f", "dae92bc4075dafb9"},
    "Channel._do_restore_message": {"fccdf81a0220c560", "8b430df94e45b5b0"},
    "Channel._q_for_pri": {"f3997660680dd00f"},
    "QoS._remove_from_indices": {"980a109d54ad9136"},
    "QoS.restore_by_tag": {"58e161d81b6fe18d"},
    "QoS.append": {"b388f0cd6485c28a"},
    "QoS.ack": {"0714292b916fecb2"},
    "Channel.basic_consume": {"34e0da85e689ff98"},
}
VALUES = {"unacked_key": "unacked", "unacked_index_key": "unacked_index", "sep": "\x06\x16"}
SIGNATURES = {
    "Channel._brpop_start": "(self, timeout=None)",
    "Channel._brpop_read": "(self, **options)",
    "Channel._create_client": "(self, asynchronous=False)",
    "Channel._do_restore_message": "(self, payload, exchange, routing_key, pipe, leftmost=False)",
    "Channel._q_for_pri": "(self, queue, pri)",
    "QoS._remove_from_indices": "(self, delivery_tag, pipe=None)",
    "QoS.restore_by_tag": "(self, tag, client=None, leftmost=False)",
    "QoS.append": "(self, message, delivery_tag)",
    "QoS.ack": "(self, delivery_tag)",
    "Channel.basic_consume": "(self, queue, *args, **kwargs)",
    "Channel._flush_brpop_reauth": "(self)",
}


def _key(internal: Internal) -> str:
    return f"{internal.owner.__name__}.{internal.name}"


def _newer_than(version: str, since: str) -> bool:
    return tuple(map(int, version.split(".")[:2])) >= tuple(map(int, since.split(".")[:2]))


@pytest.mark.parametrize("internal", KOMBU_INTERNALS, ids=_key)
def test_kombu_internal_is_as_reviewed(internal: Internal) -> None:
    check(internal)


def check(internal: Internal) -> None:
    """Fail, naming the internal, unless it is as reviewed."""
    where = f"kombu {kombu.__version__}: {internal.owner.__module__}.{_key(internal)}"
    present = hasattr(internal.owner, internal.name)
    if internal.since and not _newer_than(kombu.__version__, internal.since):
        pytest.skip(f"{where} only exists from kombu {internal.since}")
    assert present, f"{where} is gone; worker.consumer.transport uses it ({internal.use})"
    value = getattr(internal.owner, internal.name)
    if internal.name in VALUES:
        assert value == VALUES[internal.name], f"{where} is now {value!r} ({internal.use})"
        return
    if not callable(value):
        return
    key = _key(internal)
    signature = str(inspect.signature(value))
    if key in SIGNATURES:
        assert signature == SIGNATURES[key], f"{where} signature changed to {signature}"
    if key in REVIEWED:
        digest = hashlib.sha256(inspect.getsource(value).encode()).hexdigest()[:16]
        assert digest in REVIEWED[key], (
            f"{where} changed (source {digest}) since it was reviewed against"
            f" worker.consumer.transport ({internal.use}); read the change, adapt the"
            " transport, run `make test` and `make test-oldest`, then add the hash to REVIEWED"
        )


def test_the_canary_notices_a_change() -> None:
    """Proof that the canary can fail: a channel whose method's source differs from the
    reviewed one, and a value that changed, are reported by name."""
    from kombu.transport import redis as kombu_redis

    class Channel(kombu_redis.Channel):  # type: ignore[misc]  # a kombu that changed
        def _q_for_pri(self, queue, pri):  # type: ignore[no-untyped-def]  # same signature
            return queue

        unacked_key = "unacked2"

    with pytest.raises(AssertionError, match="Channel._q_for_pri changed"):
        check(Internal(Channel, "_q_for_pri", "test"))
    with pytest.raises(AssertionError, match="unacked2"):
        check(Internal(Channel, "unacked_key", "test"))
    with pytest.raises(AssertionError, match="is gone"):
        check(Internal(Channel, "_no_such_method", "test"))
