"""The AMQP sink, driven by the real dispatcher and log, against RabbitMQ: the machine's
broker on 127.0.0.1:5672 (guest/guest), and for outage tests a private node the test starts,
stops and starts again (tests/support/rabbit.py).

Each test declares its own exchange, queue and binding (names unique to the run) through an
independent aio-pika connection, reads back what arrived through it, and deletes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from relay import metrics, sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.queue.log import LogEntry
from relay.sinks import redact
from relay.sinks.amqp import AmqpSink
from relay.sinks.base import Retryable
from relay.sinks.formats import render
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.rabbit import PrivateRabbit
from tests.support.relay_process import free_port
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672/"


def env(url: str, exchange: str, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_AMQP_ENABLE_T": "on",
        "RUSTFS_NOTIFY_AMQP_URL_T": url,
        "RUSTFS_NOTIFY_AMQP_EXCHANGE_T": exchange,
        "RUSTFS_NOTIFY_AMQP_ROUTING_KEY_T": "s3.{bucket}",
        "RUSTFS_NOTIFY_AMQP_BACKOFF_MAX_T": "300ms",
        **{f"RUSTFS_NOTIFY_AMQP_{k}_T": v for k, v in extra.items()},
    }


class Broker:
    """An independent connection to a broker, for declaring, binding and reading back."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.name = f"relay-test-{uuid.uuid4().hex[:10]}"  # exchange and queue
        self.made: list[tuple[str, str]] = []

    async def exchange(self, kind: str = "direct", durable: bool = False) -> None:
        await self.channel.declare_exchange(self.name, kind, durable=durable)
        self.made.append(("exchange", self.name))

    async def queue(self, routing_key: str = "s3.photos", durable: bool = False) -> None:
        queue = await self.channel.declare_queue(self.name, durable=durable)
        self.made.append(("queue", self.name))
        await queue.bind(self.name, routing_key)

    async def read(self, expect: int, timeout: float = 30.0) -> list[AbstractIncomingMessage]:
        """At least `expect` messages, then whatever else is in the queue (so repeats show)."""
        queue = await self.channel.get_queue(self.name)
        got: list[AbstractIncomingMessage] = []

        async def enough() -> bool:
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                got.append(message)
            return len(got) >= expect

        await eventually(enough, timeout=timeout, interval=0.1)
        return got

    async def cleanup(self) -> None:
        for kind, name in reversed(self.made):
            try:
                if kind == "queue":
                    await self.channel.queue_delete(name)
                else:
                    await self.channel.exchange_delete(name)
            except Exception:  # already gone, or the channel closed
                pass


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(SHARED_URL)
    b = Broker(await connection.channel())
    yield b
    await b.cleanup()
    await connection.close()


def ids_of(messages: list[AbstractIncomingMessage]) -> list[str]:
    return [m.message_id or "" for m in messages]


def assert_per_object_order(messages: list[AbstractIncomingMessage], events: list[Event]) -> None:
    key_of = {e.event_id: (e.bucket, e.key) for e in events}
    for obj in set(key_of.values()):
        got = [i for i in ids_of(messages) if key_of[i] == obj]
        assert got == [e.event_id for e in events if (e.bucket, e.key) == obj], obj


async def retry_error(pipe: Pipeline) -> str:
    errors = await pipe.retry_errors()
    return errors[0] if errors else ""


async def test_amqp_delivers_body_properties_headers_in_order(
    tmp_path: Path, broker: Broker
) -> None:
    await broker.exchange()
    await broker.queue("s3.photos")
    objects = ["2024/cat 1.jpg", "a+b%2Fc.txt", "plain"]
    events = [minio_event("photos", objects[n % 3], n) for n in range(30)]
    async with pipeline(tmp_path, env(SHARED_URL, broker.name, BATCH_SIZE="8")) as pipe:
        await pipe.append(events)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    got = await broker.read(len(events))

    assert sorted(ids_of(got)) == sorted(e.event_id for e in events)  # each exactly once
    by_id = {e.event_id: e for e in events}
    for message in got:
        event = by_id[message.message_id or ""]
        assert message.body == render(LogEntry(1, 0.0, event), "minio")
        assert json.loads(message.body)["Key"] == f"photos/{event.key}"
        assert message.headers == {
            "minio-bucket": "photos",
            "minio-event": "s3:ObjectCreated:Put",
            "event-id": event.event_id,
        }
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert message.routing_key == "s3.photos"
    assert_per_object_order(got, events)


async def test_amqp_strict_order_minio_delivery_mode_and_cloudevents(
    tmp_path: Path, broker: Broker
) -> None:
    await broker.exchange()
    await broker.queue("s3.photos")
    events = [minio_event("photos", f"k{n % 4}", n) for n in range(12)]
    extra = {"CONCURRENCY": "1", "DELIVERY_MODE": "1", "PERSISTENT": "on", "FORMAT": "cloudevents"}
    async with pipeline(tmp_path, env(SHARED_URL, broker.name, **extra)) as pipe:
        await pipe.append(events)
        await pipe.settled()
    got = await broker.read(len(events))
    assert ids_of(got) == [e.event_id for e in events]  # concurrency 1: the log's order
    assert {m.delivery_mode for m in got} == {aio_pika.DeliveryMode.NOT_PERSISTENT}  # MinIO's wins
    assert {m.content_type for m in got} == {"application/cloudevents+json"}
    assert json.loads(got[0].body)["id"] == events[0].event_id


async def test_amqp_unroutable_is_retried_until_a_queue_is_bound(
    tmp_path: Path, broker: Broker
) -> None:
    """MANDATORY is on by default: an event no queue is bound for comes back from the broker
    and is retried (never dropped, never dead-lettered), with an error saying what to do."""
    await broker.exchange()
    events = [minio_event("photos", "k", n) for n in range(3)]
    async with pipeline(tmp_path, env(SHARED_URL, broker.name)) as pipe:
        await pipe.append(events)
        await eventually(lambda: pipe.dispatcher.up is False, timeout=30)
        error = await eventually(lambda: retry_error(pipe), timeout=30)
        assert "unroutable" in error and "s3.photos" in error and "NO_ROUTE" in error
        assert await pipe.dead_letters() == []
        await broker.queue("s3.photos")  # the operator adds the binding
        await pipe.settled()
        assert await pipe.dead_letters() == []
    got = await broker.read(len(events))
    assert ids_of(got) == [e.event_id for e in events]


async def test_amqp_nack_is_retried_until_the_broker_accepts(
    tmp_path: Path, broker: Broker
) -> None:
    """A queue that is full with `x-overflow: reject-publish` makes RabbitMQ nack the
    publish: the event is retried, and arrives once the consumer made room."""
    await broker.exchange()
    queue = await broker.channel.declare_queue(
        broker.name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    broker.made.append(("queue", broker.name))
    await queue.bind(broker.name, "s3.photos")
    events = [minio_event("photos", "k", n) for n in range(3)]
    got: list[AbstractIncomingMessage] = []
    async with pipeline(tmp_path, env(SHARED_URL, broker.name, CONCURRENCY="1")) as pipe:
        await pipe.append(events)
        error = await eventually(lambda: retry_error(pipe), timeout=30)
        assert "refused" in error and "Nack" in error

        async def take_one() -> bool:  # make room for one more
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                got.append(message)
            return len(got) == len(events)

        await eventually(take_one, timeout=60, interval=0.1)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    assert ids_of(got) == [e.event_id for e in events]


async def test_amqp_a_full_queue_parks_its_object_while_the_others_go_on_in_order(
    tmp_path: Path, broker: Broker
) -> None:
    """One object has a queue of its own (routing key per bucket) with `x-max-length` and
    `x-overflow: reject-publish`, filled up: RabbitMQ nacks that object's publishes, and
    only those, in the middle of a batch that CONCURRENCY 4 lanes publish. The object is
    parked while every other object is delivered; once its queue is purged, its events
    arrive, in order. A lane stops at its first failure, so the layer sends nothing twice:
    the resend count stays what arrived twice, none."""
    await broker.exchange()
    await broker.queue("s3.open")
    room = 10
    full = await broker.channel.declare_queue(
        broker.name + "-held", arguments={"x-max-length": room, "x-overflow": "reject-publish"}
    )
    broker.made.append(("queue", full.name))
    await full.bind(broker.name, "s3.held")
    for _ in range(room):  # the test's channel confirms: the queue is full after this
        await broker.channel.default_exchange.publish(aio_pika.Message(b"filler"), full.name)
    events = [
        minio_event("held", "obj", n) if n % 6 == 3 else minio_event("open", f"k{n % 4}", n)
        for n in range(48)
    ]
    held = [e for e in events if e.bucket == "held"]
    others = [e for e in events if e.bucket != "held"]
    assert len(held) <= room
    config = env(SHARED_URL, broker.name, CONCURRENCY="4")
    async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
        before = resends(pipe.sink.name)
        await pipe.append(events)
        delivered = await broker.read(len(others))
        await eventually(lambda: parked(pipe), timeout=10)
        assert "refused" in await retry_error(pipe)  # the nack
        await full.declare()  # declared again, as it is: its message count now
        assert full.declaration_result.message_count == room  # only the fillers
        await full.purge()
        await pipe.settled()
        assert await pipe.dead_letters() == []
        arrived = await _drain(full, len(held))
        assert resends(pipe.sink.name) - before == 0
    got = ids_of(delivered) + ids_of(arrived)
    assert set(got) == {e.event_id for e in events}
    assert len(got) - len(set(got)) == 0
    for obj in {(e.bucket, e.key) for e in events}:
        mine = [e.event_id for e in events if (e.bucket, e.key) == obj]
        assert last_occurrence_order(got, mine) == mine, obj


def last_occurrence_order(received: list[str], ids: list[str]) -> list[str]:
    """`ids` in the order their last copies reached the target."""
    last = {event_id: position for position, event_id in enumerate(received)}
    return sorted(ids, key=lambda event_id: last[event_id])


def resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


async def parked(pipe: Pipeline) -> int:
    return await pipe.parked()


async def test_amqp_missing_exchange_is_retried_then_delivered(
    tmp_path: Path, broker: Broker
) -> None:
    events = [minio_event("photos", "k", n) for n in range(2)]
    async with pipeline(tmp_path, env(SHARED_URL, broker.name)) as pipe:
        await pipe.append(events)
        await eventually(lambda: pipe.dispatcher.up is False, timeout=30)
        await asyncio.sleep(0.5)
        assert await pipe.dead_letters() == []
        await broker.exchange()
        await broker.queue("s3.photos")
        await pipe.settled()
    assert ids_of(await broker.read(2)) == [e.event_id for e in events]


async def test_amqp_declares_the_exchange_when_asked(tmp_path: Path, broker: Broker) -> None:
    extra = {"DECLARE_EXCHANGE": "on", "EXCHANGE_TYPE": "topic", "ROUTING_KEY": "s3.{bucket}.x"}
    broker.made.append(("exchange", broker.name))  # the sink makes it; the test removes it
    async with pipeline(tmp_path, env(SHARED_URL, broker.name, **extra)) as pipe:
        sink = pipe.sink
        assert isinstance(sink, AmqpSink)
        await eventually(lambda: sink.connection.opened == 1, timeout=20)
        await broker.queue("s3.#")  # a topic pattern: the exchange is a topic exchange
        event = minio_event("photos", "k", 1)
        await pipe.append([event])
        await pipe.settled()
    got = await broker.read(1)
    assert ids_of(got) == [event.event_id] and got[0].routing_key == "s3.photos.x"


async def test_amqp_broker_down_at_startup_recovers_without_restart(tmp_path: Path) -> None:
    """Nothing listens on the broker's address when the relay starts; the broker comes up
    there later, and the sink recovers on its own (the initial connect is retried)."""
    rabbit = PrivateRabbit(tmp_path / "rabbit")
    events = [minio_event("photos", f"k{n % 3}", n) for n in range(20)]
    try:
        async with pipeline(tmp_path, env(rabbit.url, "relay-startup", TIMEOUT="2s")) as pipe:
            await pipe.append(events)
            await eventually(lambda: pipe.dispatcher.up is False, timeout=30)
            assert "cannot connect" in str(await _start_error(pipe.sink))
            await rabbit.start()
            connection = await aio_pika.connect(rabbit.url)
            channel = await connection.channel()
            await channel.declare_exchange("relay-startup", "direct", durable=True)
            queue = await channel.declare_queue("relay-startup", durable=True)
            await queue.bind("relay-startup", "s3.photos")
            await pipe.settled(timeout=60)
            assert await pipe.dead_letters() == []
            got = await _drain(queue, len(events))
            await connection.close()
    finally:
        await rabbit.kill()
    counts = Counter(ids_of(got))
    assert set(counts) == {e.event_id for e in events}
    assert max(counts.values()) == 1
    assert_per_object_order(got, events)


async def test_amqp_private_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """The broker is stopped while events are being appended and delivered, then started
    again (same data directory). At-least-once: every event arrives; repeats (an event
    whose confirmation was lost with the connection) are counted, not forbidden."""
    rabbit = await PrivateRabbit(tmp_path / "rabbit").start()
    try:
        connection = await aio_pika.connect(rabbit.url)
        channel = await connection.channel()
        await channel.declare_exchange("relay-outage", "direct", durable=True)
        queue = await channel.declare_queue("relay-outage", durable=True)
        await queue.bind("relay-outage", "s3.photos")
        await connection.close()

        events: list[Event] = []
        async with pipeline(tmp_path, env(rabbit.url, "relay-outage", TIMEOUT="2s")) as pipe:
            feeding = asyncio.Event()
            feeder = asyncio.create_task(feed(pipe, events, feeding))
            await eventually(lambda: len(events) >= 50, timeout=30)
            await rabbit.stop()  # while events keep coming
            await eventually(lambda: pipe.dispatcher.up is False, timeout=30)
            await asyncio.sleep(1.0)
            await rabbit.start()
            await eventually(lambda: pipe.dispatcher.up is True, timeout=60)
            feeding.set()  # and still coming a little after the restart
            await feeder
            await pipe.settled(timeout=90)
            assert await pipe.dead_letters() == []

        connection = await aio_pika.connect(rabbit.url)
        queue = await (await connection.channel()).get_queue("relay-outage")
        got = await _drain(queue, len(events))
        await connection.close()
    finally:
        await rabbit.stop()
    counts = Counter(ids_of(got))
    lost = {e.event_id for e in events} - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    assert not lost, f"{len(lost)} events lost ({duplicates} duplicates)"
    assert duplicates <= 50, f"{duplicates} duplicates"


async def feed(pipe: Pipeline, events: list[Event], stop: asyncio.Event) -> None:
    """Append 5 events every 50 ms until `stop` is set (then 20 more), into `events`."""
    tail = 4
    while tail:
        batch = [minio_event("photos", f"k{n % 5}", n) for n in range(len(events), len(events) + 5)]
        await pipe.append(batch)
        events.extend(batch)
        await asyncio.sleep(0.05)
        if stop.is_set():
            tail -= 1


async def _drain(queue: aio_pika.abc.AbstractQueue, expect: int) -> list[AbstractIncomingMessage]:
    got: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append(message)
        return len(got) >= expect

    await eventually(enough, timeout=30, interval=0.1)
    return got


async def _start_error(sink: object) -> BaseException | None:
    assert isinstance(sink, AmqpSink)
    try:
        await sink.start()
    except Retryable as exc:
        return exc
    return None


# -- configuration and secrets (no broker needed) ----------------------------------------------


def make(**extra: str) -> AmqpSink:
    url = extra.pop("URL", SHARED_URL)
    specs, _ = load_sinks(env(url, "x", **extra), sinks.declared_options())
    sink = sinks.create(specs[0])
    assert isinstance(sink, AmqpSink)
    return sink


async def test_amqp_config_credentials_and_delivery_mode() -> None:
    with pytest.raises(ConfigError, match=r"URL_T holds credentials.*USERNAME_T"):
        make(USERNAME="relay", PASSWORD="pw")
    sink = make(URL="amqp://127.0.0.1:5672/", USERNAME="relay", PASSWORD="pw")
    assert sink.url.user == "relay" and sink.url.password == "pw"
    assert "pw" not in sink.where
    assert make().delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert make(PERSISTENT="off").delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
    assert (
        make(PERSISTENT="off", DELIVERY_MODE="2").delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    )
    with pytest.raises(ConfigError, match="unknown placeholder"):
        make(ROUTING_KEY="s3.{key}")
    with pytest.raises(ConfigError, match="internal exchange"):
        make(INTERNAL="on")


async def test_amqp_password_is_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("aio_pika", "aiormq", "relay"):
        caplog.set_level(logging.DEBUG, logger=name)
    secret = "Sup3r-secret-pw"
    config = env(f"amqp://relay:{secret}@127.0.0.1:{free_port()}/", "x")  # nothing listens
    (spec,), _ = load_sinks(config, sinks.declared_options())
    assert spec.redacted()["url"] == "***"
    shown = redact.for_spec(spec)  # what the relay logs, stores and prints goes through it
    async with asyncio.timeout(30), pipeline(tmp_path, config) as pipe:
        sink = pipe.sink
        assert isinstance(sink, AmqpSink) and secret not in sink.where
        await pipe.append([minio_event("photos", "k", 1)])
        await eventually(lambda: pipe.dispatcher.up is False, timeout=20)
        error = await _start_error(sink)
        health = await sink.health()
    assert error is not None and "cannot connect" in str(error)
    assert secret not in shown(str(error))
    assert not health.ok and secret not in shown(health.detail)
    assert all(secret not in record.getMessage() for record in caplog.records)
    down = [r for r in caplog.records if r.getMessage() == "sink down"]
    assert down and all(secret not in r.error for r in down)  # type: ignore[attr-defined]
