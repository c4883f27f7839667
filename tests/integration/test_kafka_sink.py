"""The Kafka sink, driven by the real dispatcher and log, against librdkafka's mock cluster.

The broker here is NOT a real Kafka: no Kafka-API broker can be installed on the machines
these tests run on, so they use the mock cluster built into librdkafka (the C library in
the `confluent-kafka` wheel), a real TCP server speaking the Kafka protocol, in its own
process (tests/support/kafka_mock.py). It auto-creates topics on first produce and does not
check idempotent-producer sequence numbers the way Kafka does, so these tests show what the
sink sends and how it survives an outage, not how a real broker behaves.

What is checked is read back by an independent aiokafka consumer: value bytes, key,
headers, per-object order, and after outages that every event arrived, counted by its
`event-id` header.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from relay import sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.queue.log import LogEntry
from relay.sinks.formats import render
from relay.sinks.kafka import KafkaSink
from tests.support.kafka_mock import MockKafka
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PRODUCE = 0  # Kafka API key of Produce requests
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
MESSAGE_TOO_LARGE = 10


@pytest.fixture
async def kafka() -> AsyncIterator[MockKafka]:
    mock = await MockKafka.start()
    yield mock
    await mock.stop()


def unique_topic() -> str:
    return f"relay-test-{uuid.uuid4().hex[:10]}"


def env(bootstrap: str, topic: str, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_KAFKA_ENABLE_T": "on",
        "RUSTFS_NOTIFY_KAFKA_BROKERS_T": bootstrap,
        "RUSTFS_NOTIFY_KAFKA_TOPIC_T": topic,
        "RUSTFS_NOTIFY_KAFKA_BACKOFF_MAX_T": "300ms",
        **{f"RUSTFS_NOTIFY_KAFKA_{k}_T": v for k, v in extra.items()},
    }


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    """Every record of `topic`, from the beginning to the end offsets (so duplicates show),
    read by a consumer that shares nothing with the relay."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        # without a group the consumer takes every partition once it has the metadata
        await eventually(consumer.assignment, timeout=timeout, interval=0.1)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        assert sum(ends.values()) >= expect, f"{ends} holds fewer than {expect} records"
        records = []
        async with asyncio.timeout(timeout):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def ids_of(records: list) -> list[str]:
    return [dict(r.headers)["event-id"].decode() for r in records]


def assert_per_object_order(records: list, events: list[Event]) -> None:
    """Within each object (= each Kafka key), event ids come in the order they were logged."""
    by_key: dict[bytes, list[str]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(dict(record.headers)["event-id"].decode())
    for key, got in by_key.items():
        expected = [e.event_id for e in events if f"{e.bucket}/{e.key}".encode() == key]
        assert got == expected, f"order for {key!r}"


async def feed(pipe: Pipeline, events: list[Event], stop: asyncio.Event) -> None:
    """Append 5 events every 50 ms until `stop` is set (then 20 more), into `events`."""
    tail = 4
    while tail:
        batch = [minio_event("b", f"k{n % 5}", n) for n in range(len(events), len(events) + 5)]
        await pipe.append(batch)
        events.extend(batch)
        await asyncio.sleep(0.05)
        if stop.is_set():
            tail -= 1


async def wait_down(pipe: Pipeline) -> None:
    await eventually(lambda: pipe.dispatcher.up is False, timeout=30)


async def test_kafka_mock_cluster_delivers_value_key_headers_in_order(
    tmp_path: Path, kafka: MockKafka
) -> None:
    topic = unique_topic()
    objects = ["2024/cat 1.jpg", "a+b%2Fc.txt", "plain"]
    events = [minio_event("photos", objects[n % 3], n) for n in range(30)]
    async with pipeline(tmp_path, env(kafka.bootstrap, topic, BATCH_SIZE="7")) as pipe:
        await pipe.append(events)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    records = await read_topic(kafka.bootstrap, topic, len(events))

    assert sorted(ids_of(records)) == sorted(e.event_id for e in events)  # each exactly once
    by_id = {e.event_id: e for e in events}
    for seq, record in enumerate(records, 1):
        event = by_id[dict(record.headers)["event-id"].decode()]
        assert record.key == f"photos/{event.key}".encode()
        assert dict(record.headers) == {
            "event-name": b"s3:ObjectCreated:Put",
            "event-id": event.event_id.encode(),
        }
        assert record.value == render(LogEntry(seq, 0.0, event), "minio")
        body = json.loads(record.value)
        assert body["Key"] == f"photos/{event.key}"
        assert body["Records"] == [json.loads(event.record)]
    assert_per_object_order(records, events)
    # one object → one partition
    assert all(
        len({r.partition for r in records if r.key == k}) == 1 for k in {r.key for r in records}
    )


async def test_kafka_mock_cluster_topic_template_and_gzip(tmp_path: Path, kafka: MockKafka) -> None:
    prefix = unique_topic()
    extra = {"COMPRESSION": "gzip", "FORMAT": "records"}
    events = [
        minio_event("b1", "x", 1),
        minio_event("b2", "y", 2, event="s3:ObjectRemoved:Delete"),
    ]
    async with pipeline(
        tmp_path, env(kafka.bootstrap, prefix + ".{bucket}.{event}", **extra)
    ) as pipe:
        assert isinstance(pipe.sink, KafkaSink) and pipe.sink.compression == "gzip"
        await pipe.append(events)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    created = await read_topic(kafka.bootstrap, f"{prefix}.b1.s3_ObjectCreated_Put", 1)
    removed = await read_topic(kafka.bootstrap, f"{prefix}.b2.s3_ObjectRemoved_Delete", 1)
    assert ids_of(created) == [events[0].event_id]
    assert ids_of(removed) == [events[1].event_id]
    assert dict(removed[0].headers)["event-name"] == b"s3:ObjectRemoved:Delete"
    assert json.loads(created[0].value) == {"Records": [json.loads(events[0].record)]}


async def test_kafka_mock_cluster_down_at_startup_then_up_delivers_each_once(
    tmp_path: Path, kafka: MockKafka
) -> None:
    """The relay starts while nothing accepts connections on the broker address, then the
    broker comes up on that very address.

    librdkafka cannot put a mock broker on a chosen port (there is no
    `test.mock.broker.port`), so the cluster is started first and set down at once: its
    port stays bound but refuses every connection, exactly what the client sees when no
    broker runs there. It is set up again later, on the same port."""
    await kafka.down()
    topic = unique_topic()
    events = [minio_event("b", f"k{n % 4}", n) for n in range(40)]
    async with pipeline(tmp_path, env(kafka.bootstrap, topic, TIMEOUT="2s")) as pipe:
        await pipe.append(events)
        await wait_down(pipe)
        await asyncio.sleep(1.0)  # a few more failed attempts while it is down
        stats = await pipe.log.read(lambda c: c.execute("SELECT count(*) FROM events").fetchone())
        assert stats == (len(events),)
        await kafka.up()
        await pipe.settled(timeout=60)
        assert pipe.dispatcher.up is True
        assert await pipe.dead_letters() == []
    records = await read_topic(kafka.bootstrap, topic, len(events))
    counts = Counter(ids_of(records))
    assert set(counts) == {e.event_id for e in events}  # none lost
    assert [i for i, n in counts.items() if n > 1] == []  # none twice
    assert_per_object_order(records, events)


async def test_kafka_mock_cluster_outage_mid_stream_loses_nothing(
    tmp_path: Path, kafka: MockKafka
) -> None:
    """The broker goes down (all connections closed, new ones refused) while events keep
    being appended, and comes back with its data. Nothing is lost; the producer that was
    waiting for acknowledgements is abandoned and replaced (aiokafka#1101)."""
    topic = unique_topic()
    events: list[Event] = []
    async with pipeline(tmp_path, env(kafka.bootstrap, topic, TIMEOUT="1s")) as pipe:
        sink = pipe.sink
        assert isinstance(sink, KafkaSink)
        feeding = asyncio.Event()
        feeder = asyncio.create_task(feed(pipe, events, feeding))
        await eventually(lambda: len(events) >= 50, timeout=30)
        await kafka.down()  # while events keep coming
        await wait_down(pipe)
        await asyncio.sleep(1.5)
        await kafka.up()
        await eventually(lambda: pipe.dispatcher.up is True, timeout=60)
        feeding.set()  # and still coming a little after the recovery
        await feeder
        await pipe.settled(timeout=60)
        assert await pipe.dead_letters() == []
        assert sink.abandoned >= 1
    records = await read_topic(kafka.bootstrap, topic, len(events))
    counts = Counter(ids_of(records))
    assert set(counts) == {e.event_id for e in events}  # zero lost
    duplicates = sum(n - 1 for n in counts.values())
    # At-least-once: an event whose acknowledgement was lost in the outage is sent again
    # by a new producer (a new idempotence session), so a few repeats are allowed; the
    # consumer drops them by event-id.
    assert duplicates <= 20, f"{duplicates} duplicates"


async def test_kafka_mock_cluster_out_of_order_sequence_rebuilds_the_producer(
    tmp_path: Path, kafka: MockKafka
) -> None:
    """aiokafka#1017: after OutOfOrderSequenceNumber an idempotent producer is stuck; the
    sink drops it and carries on with a new one."""
    topic = unique_topic()
    first = [minio_event("b", "k", 1)]
    later = [minio_event("b", "k", n) for n in range(2, 12)]
    async with pipeline(tmp_path, env(kafka.bootstrap, topic, TIMEOUT="2s")) as pipe:
        sink = pipe.sink
        assert isinstance(sink, KafkaSink)
        await pipe.append(first)
        await pipe.settled()
        await kafka.fail_next(PRODUCE, OUT_OF_ORDER_SEQUENCE_NUMBER)
        await pipe.append(later)
        await pipe.settled(timeout=60)
        assert await pipe.dead_letters() == []
        assert sink.abandoned == 1 and sink.builds == 2
    records = await read_topic(kafka.bootstrap, topic, 11)
    assert ids_of(records) == [e.event_id for e in first + later]


async def test_kafka_mock_cluster_message_too_large_is_dead_lettered(
    tmp_path: Path, kafka: MockKafka
) -> None:
    topic = unique_topic()
    async with pipeline(tmp_path, env(kafka.bootstrap, topic, BATCH_SIZE="1")) as pipe:
        await pipe.append([minio_event("b", "warmup", 0)])
        await pipe.settled()
        await kafka.fail_next(PRODUCE, MESSAGE_TOO_LARGE)
        big, after = minio_event("b", "big", 1), minio_event("b", "after", 2)
        await pipe.append([big, after])
        await pipe.settled()
        dead = await pipe.dead_letters()
    assert len(dead) == 1 and "MessageSizeTooLarge" in dead[0][1]
    records = await read_topic(kafka.bootstrap, topic, 2)
    assert big.event_id not in ids_of(records) and after.event_id in ids_of(records)


# -- configuration (no broker needed) ----------------------------------------------------------


def make(**extra: str) -> KafkaSink:
    specs, _ = load_sinks(env("127.0.0.1:9", "t", **extra), sinks.declared_options())
    sink = sinks.create(specs[0])
    assert isinstance(sink, KafkaSink)
    return sink


async def test_kafka_config_acks_and_idempotence() -> None:
    assert make().idempotent and make().acks == "all"
    assert make(ACKS="-1").idempotent
    one = make(ACKS="1")
    assert not one.idempotent and one.acks == 1


async def test_kafka_config_rejects_bad_topics_and_unavailable_codecs() -> None:
    with pytest.raises(ConfigError, match=r"RUSTFS_NOTIFY_KAFKA_TOPIC_T.*unknown placeholder"):
        make(TOPIC="events.{object}")
    with pytest.raises(ConfigError, match="only letters, digits"):
        make(TOPIC="my events/{bucket}")
    from aiokafka import codec

    if not codec.has_zstd():
        with pytest.raises(ConfigError, match="cramjam"):
            make(COMPRESSION="zstd")
    assert make(PRODUCER_COMPRESSION_CODEC="gzip").compression == "gzip"  # MinIO's key


async def test_kafka_config_sasl_and_secret_redaction() -> None:
    sink = make(SASL_USERNAME="relay", SASL_PASSWORD="s3cret", SASL_MECHANISM="SCRAM-SHA-512")
    assert sink.security_protocol == "SASL_PLAINTEXT"
    assert sink.sasl["sasl_mechanism"] == "SCRAM-SHA-512"
    with pytest.raises(ConfigError, match="SASL_PASSWORD"):
        make(SASL_ENABLE="on", SASL_USERNAME="relay")
    specs, _ = load_sinks(env("h:9092", "t", SASL_PASSWORD="s3cret"), sinks.declared_options())
    assert specs[0].redacted()["sasl_password"] == "***"
