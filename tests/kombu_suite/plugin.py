"""Runs kombu's own Redis transport tests against the worker's transport.

Loaded as a pytest plugin (`-p tests.kombu_suite.plugin`) beside t/unit/transport/test_redis.py
of kombu's sdist (see `make kombu-suite`): before kombu's test module is imported, the names
kombu.transport.redis.{Channel, QoS, Transport, SentinelChannel, SentinelTransport} are pointed
at worker.consumer.transport's subclasses, so every channel, QoS and transport kombu's tests
build or derive from is ours. The tests of the BRPOP wait this transport replaces are
deselected, each with its reason (NOT_APPLICABLE); everything else must pass as kombu wrote it.
"""

from __future__ import annotations

import pytest
from kombu.transport import redis as kombu_redis

from worker.consumer import transport as ours

#: kombu tests of what this transport deliberately does otherwise.
NOT_APPLICABLE = {
    "test_brpop_read_raises": "our wait is BLMOVE, not BRPOP: no message is popped by the wait",
    "test_brpop_read_gives_None": "ditto: an empty wait leads to a take, not to BRPOP's reply",
    "test_brpop_start_but_no_queues": "ditto",
    "test_poll_error": "the wait's reply is parsed as BLMOVE's",
    "test_put_priority": "kombu's mock client has no EVALSHA for the take script",
    # These consume through kombu's mock client, which has neither BLMOVE nor EVALSHA; the
    # same flows run on a real Redis in tests/test_e2e.py and tests/faults/test_broker.py.
    "test_publish__consume": "consumes through the mock client (no BLMOVE, no EVALSHA)",
    "test_close_in_poll": "ditto: the wait it closes on is BLMOVE",
    # kombu 5.7's tests of its BRPOP wait.
    "test_brpop_start_sends_keys_and_timeout": "our wait is BLMOVE on one queue, not BRPOP",
    "test_brpop_start_prefixes_keys": "ditto: BLMOVE, its key prefixed by Channel._key",
    "test_brpop_start_records_send_time": (
        "mocks kombu's _queue_cycle; our wait takes its queue from active_queues in turn (and"
        " sets _brpop_sent_at too, for kombu's overdue-wait check)"
    ),
    "test_brpop_health_drop_resets_in_poll": "ditto: mocks _queue_cycle to start the wait",
}


def pytest_configure(config: pytest.Config) -> None:
    kombu_redis.QoS = ours.QoS
    kombu_redis.Channel = ours.Channel
    kombu_redis.Transport = ours.Transport
    kombu_redis.SentinelChannel = ours.SentinelChannel
    kombu_redis.SentinelTransport = ours.SentinelTransport


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = NOT_APPLICABLE.get(getattr(item, "originalname", item.name))
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))
