"""The Python client's buffer, publishing and helpers. Redis is a fakeredis server that can be
switched off, so "broker down" is real to the client's publishing code."""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry

from tests.conftest import wait_for
from worker.client import UsageClient, extract_usage
from worker.client.envelope import (
    EMBED_ESCAPED,
    QUEUE,
    RECORD_BATCH,
    batch_envelope,
    escape_json,
    redis_envelope,
)
from worker.client.errors import ConfigError, InvalidEvent
from worker.client.push import push
from worker.settings import get_settings

TENANT = str(uuid.uuid4())


class FakeBroker:
    """A fakeredis server the client really publishes to; it can be switched off."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=self.server)

    def client(self, **kw: Any) -> UsageClient:
        return UsageClient(redis_client=fakeredis.FakeRedis(server=self.server), **kw)

    def down(self) -> None:
        self.server.connected = False

    def up(self) -> None:
        self.server.connected = True

    def messages(self) -> list[tuple[str, list[Any], dict[str, Any]]]:
        """(task, args, kwargs) of each queued message, decoded as the worker decodes them."""
        out = []
        queued: list[bytes] = self.redis.lrange("ai_usage", 0, -1)  # type: ignore[assignment]
        for raw in reversed(queued):
            envelope = json.loads(raw)
            assert envelope["content-type"] == "application/json"
            assert envelope["properties"]["delivery_info"]["routing_key"] == "ai_usage"
            args, kwargs, embed = json.loads(envelope["body"])
            assert embed["callbacks"] is None
            out.append((envelope["headers"]["task"], args, kwargs))
        return out

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for task, args, kwargs in self.messages():
            out.extend(args[0] if task == "ai_usage.record_batch" else [kwargs])
        return out


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


def record(client: UsageClient, **over: Any) -> uuid.UUID:
    fields: dict[str, Any] = {
        "tenant_id": TENANT,
        "operation": "op",
        "model": "gpt-4o",
        "input_tokens": 3,
        "output_tokens": 4,
    }
    fields.update(over)
    return client.record(**fields)


def test_background_batches_and_publishes_every_event(broker: FakeBroker) -> None:
    client = broker.client(batch_size=10, flush_interval_ms=20)
    ids = {record(client) for _ in range(35)}
    assert client.flush(5)
    events = broker.events()
    assert {uuid.UUID(e["id"]) for e in events} == ids and len(events) == 35
    # The wire form leaves out fields at their default (success "success", no user, ...).
    assert all(e["total_tokens"] == 7 and e.get("success", "success") == "success" for e in events)
    assert client.close(1)


def test_overflow_drops_and_counts_each_event(broker: FakeBroker) -> None:
    broker.down()
    registry = CollectorRegistry()
    client = broker.client(
        max_queue=10,
        batch_size=1000,
        flush_interval_ms=60_000,
        registry=registry,
    )
    for _ in range(25):
        record(client)
    assert client.dropped == 15
    assert client.pending() == 10
    assert registry.get_sample_value("ai_usage_client_events_dropped_total") == 15
    assert registry.get_sample_value("ai_usage_client_buffer_depth") == 10
    client.close(0.1)


def test_broker_down_then_up_delivers_the_buffer(broker: FakeBroker) -> None:
    broker.down()
    client = broker.client(batch_size=20, flush_interval_ms=10, retry_max_s=0.05)
    ids = {record(client) for _ in range(50)}
    assert not client.flush(0.3)  # the deadline holds while the broker is down
    assert client.publish_failures > 0 and client.dropped == 0
    broker.up()
    assert client.flush(5)
    assert {uuid.UUID(e["id"]) for e in broker.events()} == ids
    assert len(broker.events()) == 50


def test_flush_and_close_respect_their_deadline(broker: FakeBroker) -> None:
    broker.down()
    client = broker.client(batch_size=5, flush_interval_ms=10, retry_max_s=0.05)
    for _ in range(12):
        record(client)
    started = time.monotonic()
    assert client.flush(0.2) is False
    assert client.close(0.2) is False
    assert time.monotonic() - started < 3
    # Counted, and logged, never silent (by the thread as it gives up, which under load can
    # come after close() has stopped waiting for it).
    wait_for(lambda: client.dropped == 12, 10, what="12 drops counted")


def test_publish_errors_never_reach_the_caller() -> None:
    tried: list[str] = []

    def boom(task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        tried.append(task)
        raise ConnectionError("broker down")

    client = UsageClient(publisher=boom, batch_size=1, flush_interval_ms=1, retry_max_s=0.01)
    ids = {record(client) for _ in range(20)}  # none of these raises
    # The thread did try, and failed, while the callers went on: the errors stayed with it.
    wait_for(lambda: client.publish_failures >= 3, 10, what="failed publish attempts")
    ids.add(record(client))
    assert len(ids) == 21 and set(tried) == {"ai_usage.record_batch"}
    assert client.published == 0 and client.dropped == 0
    assert client.close(0.05) is False  # what it could not publish is reported, not hidden
    wait_for(lambda: client.dropped == 21, 10, what="21 drops counted")


def test_sync_mode_publishes_one_record_message_and_raises_broker_errors(
    broker: FakeBroker,
) -> None:
    client = broker.client(mode="sync")
    event_id = record(client, cost_usd=0.25)
    ((task, args, kwargs),) = broker.messages()
    assert task == "ai_usage.record" and args == []
    assert kwargs["id"] == str(event_id) and kwargs["cost_usd"] == 0.25
    broker.down()
    with pytest.raises(Exception):
        record(client)


def test_invalid_input_raises_at_the_call_site_naming_the_field(broker: FakeBroker) -> None:
    client = broker.client()
    with pytest.raises(InvalidEvent, match="^input_tokens: "):
        record(client, input_tokens=-1)
    with pytest.raises(InvalidEvent, match="^tenant_id: "):
        record(client, tenant_id="nope")
    with pytest.raises(InvalidEvent, match="^total_tokens: "):
        record(client, total_tokens=1)
    assert client.pending() == 0
    client.close(0.1)


def test_extract_usage_from_sdk_shapes() -> None:
    # SDK responses as dicts (read by their provider-specific keys).
    anthropic = {
        "model": "claude-3-5-sonnet-20241022",
        "usage": {"input_tokens": 11, "output_tokens": 22},
    }
    chat = {"usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}
    responses = {"usage": {"input_tokens": 7, "output_tokens": 8}}
    assert extract_usage(anthropic) == (11, 22)
    assert extract_usage(chat) == (5, 6)
    assert extract_usage(responses) == (7, 8)
    assert extract_usage({}) is None
    # An object of no SDK's type, however alike its attributes, is not read (issue 24).
    assert extract_usage(SimpleNamespace(usage=SimpleNamespace(**chat["usage"]))) is None


def test_track_usage_times_and_records_failures(broker: FakeBroker) -> None:
    client = broker.client(mode="sync")
    with client.track_usage(tenant_id=TENANT, operation="summarise") as call:
        time.sleep(0.01)
        call.response({"model": "gpt-4o", "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
    with (
        pytest.raises(RuntimeError),
        client.track_usage(tenant_id=TENANT, operation="summarise", model="gpt-4o"),
    ):
        raise RuntimeError("provider timeout")

    @client.track(tenant_id=TENANT, operation="draft")
    def ask() -> Any:
        return {
            "model": "claude-3-5-haiku-20241022",
            "usage": {"input_tokens": 1, "output_tokens": 2},
        }

    ask()
    ok, failed, decorated = sorted(
        broker.events(), key=lambda e: e["operation"] + e.get("success", "success")
    )[::-1]
    assert (
        ok.get("success", "success") == "success"
        and ok["input_tokens"] == 5
        and ok["duration_ms"] >= 10
    )
    assert ok["model"] == "gpt-4o"
    assert failed["success"] == "failure" and failed["input_tokens"] == 0
    assert decorated["operation"] == "draft" and decorated["output_tokens"] == 2


def test_close_publishes_a_held_back_partial_batch(broker: FakeBroker) -> None:
    for _ in range(20):  # close() racing the thread at different points of its loop
        client = broker.client(batch_size=1000, flush_interval_ms=60_000)
        ids = {record(client) for _ in range(7)}
        assert client.close(2)
        assert ids <= {uuid.UUID(e["id"]) for e in broker.events()}
    assert len(broker.events()) == 140


def test_the_client_reads_only_its_own_variable(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, redis_url: str
) -> None:
    # An application's own settings, each of which the worker's Settings refuses (so a client
    # that read them would fail), and URLs that lead nowhere (so one that used them would hang).
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@192.0.2.1/app")
    monkeypatch.setenv("LOG_LEVEL", "CRITICAL")
    monkeypatch.setenv("REDIS_URL", "redis://192.0.2.1:1/0")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://192.0.2.1:1/0")
    monkeypatch.delenv("AI_USAGE_BROKER_URL", raising=False)
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    with pytest.raises(ConfigError, match="^broker_url: not given, and AI_USAGE_BROKER_URL is not"):
        UsageClient(mode="sync")

    monkeypatch.setenv("AI_USAGE_BROKER_URL", redis_url)
    queue = redis.Redis.from_url(redis_url)
    queue.delete("ai_usage")
    record(UsageClient(mode="sync"))
    background = UsageClient(flush_interval_ms=10)
    record(background)
    assert background.flush(5) and background.close(1)
    assert queue.llen("ai_usage") == 2
    queue.delete("ai_usage")
    queue.close()


def test_full_batches_go_several_to_one_lpush_in_order(redis_url: str) -> None:
    # 1,005 events at batch_size 10 on a real Redis: full batches are pushed several messages
    # to one LPUSH (up to PUSH_EVENTS), the partial batch waits for the interval.
    broker = redis.Redis.from_url(redis_url)
    broker.delete(QUEUE)

    def lpushes() -> int:
        return int(broker.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0))

    before = lpushes()
    client = UsageClient(redis_url, batch_size=10, flush_interval_ms=60_000)
    try:
        ids = [record(client) for _ in range(1005)]
        wait_for(lambda: client.pending() == 5, timeout=10, what="the full batches published")
        sizes = [
            len(json.loads(json.loads(raw)["body"])[0][0]) for raw in broker.lrange(QUEUE, 0, -1)
        ]
        assert sizes == [10] * 100
        assert lpushes() - before < 100  # one LPUSH a message would be 100
        assert client.flush(5)
        events = []
        for raw in reversed(broker.lrange(QUEUE, 0, -1)):  # consumed from the right
            events.extend(json.loads(json.loads(raw)["body"])[0][0])
        # The values of one LPUSH keep the order they were recorded in.
        assert [uuid.UUID(e["id"]) for e in events] == ids
        assert client.published == 1005
    finally:
        assert client.close(1)
        broker.delete(QUEUE)
        broker.close()


def test_push_sends_every_envelope_in_order_and_raises_the_servers_error(redis_url: str) -> None:
    broker = redis.Redis.from_url(redis_url)
    queue = f"push-test-{uuid.uuid4().hex}"
    try:
        # Envelopes in pieces of every size; one round all ASCII (the one-pass encoding), one
        # with labels outside it (redis-py counts the bytes).
        values = [f"envelope {i} " + "x" * (i * 997 % 20_000) for i in range(40)]
        wide = ["modèle é", "模型 " * 500, "\u00e9 ascii escape"]
        for round_ in (values[:1], values[1:], wide):
            push(broker, queue, [[v[: len(v) // 2], v[len(v) // 2 :]] for v in round_])
        taken = [broker.rpop(queue) for _ in range(len(values) + len(wide))]
        assert [v.decode() for v in taken if isinstance(v, bytes)] == values + wide
        assert broker.llen(queue) == 0
        broker.set(queue, "not a list")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            push(broker, queue, [["a"], ["b"]])
        push(broker, queue + "-after", [["a"]])  # the pooled connection still works
        assert broker.llen(queue + "-after") == 1
    finally:
        broker.delete(queue, queue + "-after")
        broker.close()


def test_push_uses_a_clients_own_lpush_without_a_connection_pool() -> None:
    calls: list[tuple[Any, ...]] = []

    class Minimal:
        def lpush(self, *args: Any) -> None:
            calls.append(args)

    push(Minimal(), "q", [["a", "1"], ["b"]])
    assert calls == [("q", "a1", "b")]


def test_a_batch_envelope_joins_into_the_envelope_of_its_body() -> None:
    events = [escape_json(json.dumps({"n": i, "label": 'é\t"q"'})) for i in range(3)]
    joined = json.loads("".join(batch_envelope(events)))
    whole = json.loads(
        redis_envelope(RECORD_BATCH, "[[[" + ",".join(events) + "]],{}," + EMBED_ESCAPED + "]", 3)
    )
    fresh = {"id", "root_id", "ai_usage_sent_at", "correlation_id", "delivery_tag"}

    def fixed(envelope: dict[str, Any]) -> dict[str, Any]:
        return {
            k: {n: v for n, v in part.items() if n not in fresh} if isinstance(part, dict) else part
            for k, part in envelope.items()
        }

    assert fixed(joined) == fixed(whole)
    assert json.loads(joined["body"])[0][0] == [json.loads(json.loads(f'"{e}"')) for e in events]
    assert (
        joined["headers"]["ai_usage_events"] == 3
        and joined["headers"]["id"] != whole["headers"]["id"]
    )
