"""The Kafka sink, driven by the real dispatcher and log, against two Kafka-protocol brokers.

- **Tansu** (tests/support/tansu.py): a real broker, written independently of Apache Kafka,
  started privately per test. What a broker does is tested here: delivery of value, key and
  headers in order, topic templates, gzip, outages, and per-object order while one topic
  refuses writes. Its in-memory engine grants no producer ids, so the sink runs against it
  with `ACKS=1` (idempotence off).
- **librdkafka's mock cluster** (tests/support/kafka_mock.py): a Kafka-protocol server built
  for librdkafka's own tests. It is where the idempotent producer (`ACKS=all`, the default)
  is tested, and where broker errors are injected on demand (OutOfOrderSequenceNumber,
  MessageSizeTooLarge): no real broker answers those when asked.

What both brokers can do is run against both (the test id names the broker). Where they
disagree, a test shows it and says so. What is checked is read back by an independent
aiokafka consumer: value bytes, key, headers, per-object order, and after outages that every
event arrived, counted by its `event-id` header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from relay import metrics, sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.queue.log import LogEntry
from relay.sinks import redact
from relay.sinks.base import Retryable
from relay.sinks.formats import render
from relay.sinks.kafka import MAX_REQUEST_BYTES, KafkaSink
from tests.support.kafka_mock import MockKafka
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.tansu import Tansu, tansu
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

PRODUCE = 0  # Kafka API key of Produce requests
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
MESSAGE_TOO_LARGE = 10
KAFKA_MESSAGE_MAX_BYTES = 1_048_588  # Apache Kafka's default message.max.bytes


# -- the two brokers ---------------------------------------------------------------------------


class OnTansu:
    name = "tansu"
    acks = "1"  # its memory engine grants no producer ids (test_tansu_refuses_…_idempotent_…)

    def __init__(self, broker: Tansu) -> None:
        self.broker = broker
        self.bootstrap = broker.bootstrap

    async def topics(self, *names: str) -> None:
        await self.broker.create_topics(*names)

    async def absent(self) -> None:
        """Nothing listens on the broker's address."""
        await asyncio.to_thread(self.broker.stop)

    async def present(self) -> None:
        await asyncio.to_thread(self.broker.start)

    async def outage(self) -> None:
        """Frozen (SIGSTOP): connections are accepted, nothing is answered, data is kept."""
        self.broker.pause()

    async def recover(self) -> None:
        self.broker.resume()


class OnMock:
    name = "mock"
    acks = "all"  # the idempotent producer, the sink's default

    def __init__(self, mock: MockKafka) -> None:
        self.mock = mock
        self.bootstrap = mock.bootstrap

    async def topics(self, *names: str) -> None:
        """The mock has no CreateTopics: a topic is created by its first record."""

    async def absent(self) -> None:
        """librdkafka cannot put a mock broker on a chosen port (there is no
        `test.mock.broker.port`): the broker is set down, its port stays bound and refuses
        every connection, exactly what a client sees when no broker runs there."""
        await self.mock.down()

    async def present(self) -> None:
        await self.mock.up()

    async def outage(self) -> None:
        """Every connection closed, new ones refused; the data is kept."""
        await self.mock.down()

    async def recover(self) -> None:
        await self.mock.up()


Broker = OnTansu | OnMock


@pytest.fixture(params=["tansu", "mock"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    if request.param == "tansu":
        with tansu(tmp_path) as server:
            yield OnTansu(server)
        return
    mock = await MockKafka.start()
    try:
        yield OnMock(mock)
    finally:
        await mock.stop()


@pytest.fixture
async def kafka() -> AsyncIterator[MockKafka]:
    mock = await MockKafka.start()
    yield mock
    await mock.stop()


# -- reading back ------------------------------------------------------------------------------


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


async def stored(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic` now, from the beginning (so duplicates show), read by a
    consumer that shares nothing with the relay: up to the end offsets, then until a fetch
    brings nothing more (Tansu reports a smaller end offset than it holds: see
    test_kafka_end_offset_after_a_batch)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    try:
        # without a group the consumer takes every partition once it has the metadata
        await eventually(consumer.assignment, timeout=timeout, interval=0.1)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        async with asyncio.timeout(timeout):
            while True:
                fetched = await consumer.getmany(timeout_ms=200)
                for batch in fetched.values():
                    records.extend(batch)
                behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
                if not fetched and not behind:
                    return records
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    """Every record of `topic`, which must hold at least `expect`."""
    records = await stored(bootstrap, topic, timeout)
    assert len(records) >= expect, f"{topic} holds {len(records)} records, fewer than {expect}"
    return records


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


def last_occurrence_order(records: list) -> dict[bytes, list[str]]:
    """Per object, its event ids in the order of their last copies in the partition: a
    resend after an earlier failed event repeats a later one, whose last copy then follows
    the failed one."""
    last: dict[bytes, dict[str, int]] = {}
    for record in sorted(records, key=lambda r: r.offset):
        last.setdefault(record.key, {})[dict(record.headers)["event-id"].decode()] = record.offset
    return {key: sorted(ids, key=ids.__getitem__) for key, ids in last.items()}


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


def padded(event: Event, size: int) -> Event:
    """The event with `size` more bytes in its record."""
    return dataclasses.replace(event, record=event.record[:-1] + b',"pad":"' + b"x" * size + b'"}')


def partition_of(key: str, partitions: int = 3) -> int:
    """The partition aiokafka's default partitioner puts the records of this key in."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), None))


async def wait_down(pipe: Pipeline) -> None:
    await eventually(lambda: pipe.dispatcher.up is False, timeout=30)


def resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


# -- what both brokers do ----------------------------------------------------------------------


async def test_kafka_delivers_value_key_headers_in_order(tmp_path: Path, broker: Broker) -> None:
    topic = unique_topic()
    await broker.topics(topic)
    objects = ["2024/cat 1.jpg", "a+b%2Fc.txt", "plain"]
    events = [minio_event("photos", objects[n % 3], n) for n in range(30)]
    extra = {"BATCH_SIZE": "7", "ACKS": broker.acks}
    async with pipeline(tmp_path, env(broker.bootstrap, topic, **extra)) as pipe:
        await pipe.append(events)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    records = await read_topic(broker.bootstrap, topic, len(events))

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


async def test_kafka_topic_template_and_gzip(tmp_path: Path, broker: Broker) -> None:
    prefix = unique_topic()
    created, removed = f"{prefix}.b1.s3_ObjectCreated_Put", f"{prefix}.b2.s3_ObjectRemoved_Delete"
    await broker.topics(created, removed)
    extra = {"COMPRESSION": "gzip", "FORMAT": "records", "ACKS": broker.acks}
    events = [
        minio_event("b1", "x", 1),
        minio_event("b2", "y", 2, event="s3:ObjectRemoved:Delete"),
    ]
    async with pipeline(
        tmp_path, env(broker.bootstrap, prefix + ".{bucket}.{event}", **extra)
    ) as pipe:
        assert isinstance(pipe.sink, KafkaSink) and pipe.sink.compression == "gzip"
        await pipe.append(events)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    created_records = await read_topic(broker.bootstrap, created, 1)
    removed_records = await read_topic(broker.bootstrap, removed, 1)
    assert ids_of(created_records) == [events[0].event_id]
    assert ids_of(removed_records) == [events[1].event_id]
    assert dict(removed_records[0].headers)["event-name"] == b"s3:ObjectRemoved:Delete"
    assert json.loads(created_records[0].value) == {"Records": [json.loads(events[0].record)]}


async def test_kafka_down_at_startup_then_up_delivers_each_once(
    tmp_path: Path, broker: Broker
) -> None:
    """The relay starts while nothing accepts connections on the broker's address, then a
    broker comes up on that very address (Tansu: a new process, empty, whose topic is
    created once it is up; the mock: see OnMock.absent)."""
    await broker.absent()
    topic = unique_topic()
    events = [minio_event("b", f"k{n % 4}", n) for n in range(40)]
    extra = {"TIMEOUT": "2s", "ACKS": broker.acks}
    async with pipeline(tmp_path, env(broker.bootstrap, topic, **extra)) as pipe:
        await pipe.append(events)
        await wait_down(pipe)
        assert await pipe.log.head() == len(events)
        await broker.present()
        await broker.topics(topic)
        await pipe.settled(timeout=60)
        assert pipe.dispatcher.up is True
        assert await pipe.dead_letters() == []
    records = await read_topic(broker.bootstrap, topic, len(events))
    counts = Counter(ids_of(records))
    assert set(counts) == {e.event_id for e in events}  # none lost
    assert [i for i, n in counts.items() if n > 1] == []  # none twice
    assert_per_object_order(records, events)


async def test_kafka_outage_mid_stream_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    """The broker fails while events keep being appended (Tansu: frozen, so requests go
    unanswered; the mock: all connections closed, new ones refused) and comes back with its
    data. Nothing is lost; the producer that was waiting for acknowledgements is dropped
    and replaced (aiokafka#1101)."""
    topic = unique_topic()
    await broker.topics(topic)
    events: list[Event] = []
    extra = {"TIMEOUT": "1s", "ACKS": broker.acks}
    async with pipeline(tmp_path, env(broker.bootstrap, topic, **extra)) as pipe:
        sink = pipe.sink
        assert isinstance(sink, KafkaSink)
        feeding = asyncio.Event()
        feeder = asyncio.create_task(feed(pipe, events, feeding))
        await eventually(lambda: len(events) >= 50, timeout=30)
        await broker.outage()  # while events keep coming
        await wait_down(pipe)
        logged_while_down = len(events) + 30
        await eventually(lambda: len(events) >= logged_while_down, timeout=30)
        await broker.recover()
        await eventually(lambda: pipe.dispatcher.up is True, timeout=60)
        feeding.set()  # and still coming a little after the recovery
        await feeder
        await pipe.settled(timeout=60)
        assert await pipe.dead_letters() == []
        assert sink.producer.dropped >= 1
    records = await read_topic(broker.bootstrap, topic, len(events))
    counts = Counter(ids_of(records))
    assert set(counts) == {e.event_id for e in events}  # zero lost
    duplicates = sum(n - 1 for n in counts.values())
    # At-least-once: an event whose acknowledgement was lost in the outage is sent again
    # by a new producer (a new idempotence session, or none with ACKS=1), so a few repeats
    # are allowed; the consumer drops them by event-id.
    assert duplicates <= 20, f"{duplicates} duplicates"


# events of 1.5 and 2 MiB: more than a NATS server takes in a message (max_payload, 1 MiB;
# the replicated log refuses them at ingest, tests/integration/test_jetstream_log.py)
@pytest.mark.parametrize("log_backend", ["sqlite"], indirect=True)
async def test_kafka_record_over_the_request_limit_is_dead_lettered_and_kafkas_limit_is_not_enforced(
    tmp_path: Path, broker: Broker
) -> None:
    """A record over the sink's request limit (2 MiB) is refused by the client itself,
    before any broker sees it: dead-lettered, and the events behind it flow.

    A record between Apache Kafka's default `message.max.bytes` (1 MiB) and that limit is
    refused by a real Kafka (MessageSizeTooLarge, a dead letter: see
    test_kafka_mock_message_too_large_is_dead_lettered, where the mock is made to answer
    it). Neither Tansu nor the mock enforces the limit: both store it."""
    topic = unique_topic()
    await broker.topics(topic)

    over_kafka = padded(minio_event("b", "big", 1), KAFKA_MESSAGE_MAX_BYTES // 2 * 3)
    over_limit = padded(minio_event("b", "huge", 2), MAX_REQUEST_BYTES)
    after = minio_event("b", "after", 3)
    extra = {"BATCH_SIZE": "1", "ACKS": broker.acks}
    async with pipeline(tmp_path, env(broker.bootstrap, topic, **extra)) as pipe:
        await pipe.append([over_kafka, over_limit, after])
        await pipe.settled()
        dead = await pipe.dead_letters()
    assert len(dead) == 1 and "MessageSizeTooLarge" in dead[0][1]
    records = await read_topic(broker.bootstrap, topic, 2)
    assert sorted(ids_of(records)) == sorted([over_kafka.event_id, after.event_id])


async def test_kafka_end_offset_after_a_batch(tmp_path: Path, broker: Broker) -> None:
    """Tansu disagrees with the mock (and with Kafka) on ListOffsets. One object's ten
    events, handed over in one batch, travel as one record batch; afterwards Kafka and the
    mock give the partition's end offset as 10 (the next offset to be written), Tansu as 1
    (the batch's first offset + 1), though it holds and serves all ten. Nothing in the sink
    depends on it; a consumer that reads "up to the end offset" stops early on Tansu, which
    is why `stored()` reads on until a fetch brings nothing more."""
    topic = unique_topic()
    await broker.topics(topic)
    events = [minio_event("b", "one", n) for n in range(10)]
    extra = {"BATCH_SIZE": "10", "ACKS": broker.acks}
    async with pipeline(tmp_path, env(broker.bootstrap, topic, **extra), start=False) as pipe:
        await pipe.append(events)  # all ten in the sink's first round
        pipe.start()
        await pipe.settled()
    records = await read_topic(broker.bootstrap, topic, len(events))
    assert ids_of(records) == [e.event_id for e in events]
    partition = TopicPartition(topic, records[0].partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    await consumer.start()
    try:
        end = (await consumer.end_offsets([partition]))[partition]
    finally:
        await consumer.stop()
    assert end == {"tansu": 1, "mock": 10}[broker.name]


# -- Tansu -------------------------------------------------------------------------------------


async def test_tansu_refuses_the_idempotent_producer_which_the_mock_grants(
    tmp_path: Path,
) -> None:
    """Tansu disagrees with the mock (and with Kafka): its memory engine answers the
    idempotent producer's InitProducerId with an error (aiokafka: UnknownError). With the
    default ACKS=all the sink cannot start a producer there: it stays down, says why and
    what to do, and keeps every event; with ACKS=1 the same events go through."""
    topic = unique_topic()
    events = [minio_event("b", "k", n) for n in range(5)]
    with tansu(tmp_path) as broker:
        await broker.create_topics(topic)
        async with pipeline(tmp_path, env(broker.bootstrap, topic)) as pipe:
            sink = pipe.sink
            assert isinstance(sink, KafkaSink) and sink.idempotent
            with pytest.raises(Retryable, match=r"UnknownError.*ACKS=1"):
                await sink.start()
            await pipe.append(events)
            await wait_down(pipe)
            assert await pipe.dead_letters() == [] and sink.producer.opened == 0
        assert await stored(broker.bootstrap, topic) == []
        async with pipeline(tmp_path, env(broker.bootstrap, topic, ACKS="1")) as pipe:
            await pipe.settled()  # the same log: the events kept are sent now
        assert ids_of(await read_topic(broker.bootstrap, topic, 5)) == [e.event_id for e in events]


async def test_tansu_restarted_empty_gets_what_was_logged_while_it_was_down(
    tmp_path: Path,
) -> None:
    """Tansu keeps its data in memory: killed and started again, it is a new, empty broker
    on the same address, whose topic is created again. The relay notices on its own, builds
    a new producer and delivers what was logged meanwhile, each event once and in order;
    nothing acknowledged before the restart is sent again."""
    topic = unique_topic()
    before = [minio_event("b", f"k{n % 3}", n) for n in range(15)]
    during = [minio_event("b", f"k{n % 3}", n) for n in range(15, 45)]
    with tansu(tmp_path) as broker:
        await broker.create_topics(topic)
        async with pipeline(tmp_path, env(broker.bootstrap, topic, ACKS="1", TIMEOUT="2s")) as pipe:
            sink = pipe.sink
            assert isinstance(sink, KafkaSink)
            await pipe.append(before)
            await pipe.settled()
            first = await read_topic(broker.bootstrap, topic, len(before))
            assert sorted(ids_of(first)) == sorted(e.event_id for e in before)
            await asyncio.to_thread(broker.stop)
            await pipe.append(during)
            await wait_down(pipe)
            await asyncio.to_thread(broker.start)
            await broker.create_topics(topic)
            await pipe.settled(timeout=60)
            assert await pipe.dead_letters() == []
            assert sink.producer.opened >= 2
        records = await read_topic(broker.bootstrap, topic, len(during))
    assert sorted(ids_of(records)) == sorted(e.event_id for e in during)  # each once, no `before`
    assert_per_object_order(records, during)


async def test_tansu_one_buckets_topic_refuses_writes_the_others_flow_and_order_holds(
    tmp_path: Path,
) -> None:
    """The ordering test of the delivery layer, on a real broker. TOPIC=<prefix>.{bucket},
    four buckets of five objects each, batches of many objects. Mid-stream, the topic of
    one bucket refuses every record (Tansu with a schema no record matches), then accepts
    again: the other buckets' events are delivered meanwhile, the refusing bucket's objects
    are parked and delivered once it accepts, and each object's events are stored in order
    (compared by their last copies, since a resend repeats an event). The resends the relay
    counts are exactly the repeats the broker holds.

    What Tansu really does (not what its documentation says): it refuses the whole record
    batch of a partition with error code -1 (aiokafka's UnknownError, which the sink retries)
    where its documentation says INVALID_RECORD. One object's events of one round travel in
    one record batch, so a refused object has nothing acknowledged behind its failure, and
    the resends counted here are normally none; the equality is what is checked."""
    prefix = unique_topic()
    buckets = ["b0", "b1", "b2", "b3"]
    refusing = "b2"
    name = "kafka:t"

    def wave(first: int, count: int) -> list[Event]:
        return [
            minio_event(buckets[n % 4], f"k{n // 4 % 5}", n) for n in range(first, first + count)
        ]

    waves = [wave(0, 200), wave(200, 200), wave(400, 200)]
    events = [e for w in waves for e in w]
    with tansu(tmp_path, schemas=True) as broker:
        topics = {b: f"{prefix}.{b}" for b in buckets}
        await broker.create_topics(*topics.values())
        resends_before = resends(name)
        extra = {"ACKS": "1", "BATCH_SIZE": "500", "TIMEOUT": "2s"}
        async with pipeline(tmp_path, env(broker.bootstrap, prefix + ".{bucket}", **extra)) as pipe:
            await pipe.append(waves[0])
            await pipe.settled()

            broker.refuse(topics[refusing])
            await pipe.append(waves[1])
            flowing = [e for e in waves[0] + waves[1] if e.bucket != refusing]

            async def others_delivered() -> bool:
                ids = set()
                for bucket in buckets:
                    if bucket != refusing:
                        ids |= set(ids_of(await stored(broker.bootstrap, topics[bucket])))
                return ids >= {e.event_id for e in flowing}

            await eventually(others_delivered, timeout=60)
            # parked once the round's in-process retries are over: the refusing bucket's five
            await eventually(lambda: pipe.dispatcher.parked.objects == 5, timeout=30)
            refused = ids_of(await stored(broker.bootstrap, topics[refusing]))
            assert sorted(refused) == sorted(e.event_id for e in waves[0] if e.bucket == refusing)

            broker.accept(topics[refusing])
            await pipe.append(waves[2])
            await pipe.settled(timeout=60)
            assert await pipe.dead_letters() == []
            await eventually(lambda: pipe.dispatcher.parked.objects == 0, timeout=30)
        records = [r for t in topics.values() for r in await stored(broker.bootstrap, t)]

    counts = Counter(ids_of(records))
    assert set(counts) == {e.event_id for e in events}  # every event, the refused ones too
    repeats = sum(n - 1 for n in counts.values())
    assert resends(name) - resends_before == repeats
    for key, order in last_occurrence_order(records).items():
        expected = [e.event_id for e in events if f"{e.bucket}/{e.key}".encode() == key]
        assert order == expected, f"order for {key!r}"


async def test_tansu_an_event_acknowledged_behind_a_refused_one_is_sent_again_after_it(
    tmp_path: Path,
) -> None:
    """The ordering test with resends, on a real broker. The topic refuses DELETE events
    (Tansu with a schema they do not match) while an object's round holds a refused DELETE
    followed by PUTs the broker acknowledges: the records are large, so the DELETE and the
    first PUT travel in two record batches of the partition, and Tansu refuses only the
    first. The object is parked while the other objects (in other partitions) are
    delivered; its acknowledged PUTs are sent again after the DELETE, at every attempt and
    once the topic accepts; the broker ends up holding the object's events in order by
    their last copies, and the resends the relay counts are exactly the repeats it holds."""
    topic = unique_topic()
    name = "kafka:t"
    doc = "doc"
    others = [
        k
        for k in (f"x{n}" for n in range(12))
        if partition_of(f"b/{k}") != partition_of(f"b/{doc}")
    ][:4]
    created = minio_event("b", doc, 0)
    deleted = padded(minio_event("b", doc, 1, event="s3:ObjectRemoved:Delete"), 600_000)
    recreated = [padded(minio_event("b", doc, 2), 600_000), minio_event("b", doc, 3)]
    flowing = [minio_event("b", others[n % 4], n) for n in range(10, 30)]
    with tansu(tmp_path, schemas=True) as broker:
        await broker.create_topics(topic)
        resends_before = resends(name)
        extra = {"ACKS": "1", "BATCH_SIZE": "100", "TIMEOUT": "2s"}
        async with pipeline(tmp_path, env(broker.bootstrap, topic, **extra)) as pipe:
            await pipe.append([created])
            await pipe.settled()
            broker.refuse(topic, "s3:ObjectRemoved:Delete")
            await pipe.append([*flowing[:10], deleted, *recreated, *flowing[10:]])

            async def refused_round_seen() -> bool:
                held = Counter(ids_of(await stored(broker.bootstrap, topic)))
                return (
                    all(held[e.event_id] == 1 for e in flowing)
                    and held[deleted.event_id] == 0
                    and all(held[e.event_id] >= 1 for e in recreated)
                )

            await eventually(refused_round_seen, timeout=60)
            # parked once the round's in-process retries are over
            await eventually(lambda: pipe.dispatcher.parked.objects == 1, timeout=30)
            assert resends(name) > resends_before
            broker.accept(topic)
            await pipe.settled(timeout=60)
            assert await pipe.dead_letters() == []
        records = await stored(broker.bootstrap, topic)

    counts = Counter(ids_of(records))
    events = [created, *flowing, deleted, *recreated]
    assert set(counts) == {e.event_id for e in events}
    assert all(counts[e.event_id] == 1 for e in [created, deleted, *flowing])
    repeats = sum(n - 1 for n in counts.values())
    assert repeats >= 2 and resends(name) - resends_before == repeats
    order = last_occurrence_order(records)
    assert order[f"b/{doc}".encode()] == [e.event_id for e in [created, deleted, *recreated]]
    for key in others:
        assert order[f"b/{key}".encode()] == [e.event_id for e in flowing if e.key == key]


# -- librdkafka's mock: the idempotent producer and injected broker errors ---------------------


async def test_kafka_mock_out_of_order_sequence_rebuilds_the_producer(
    tmp_path: Path, kafka: MockKafka
) -> None:
    """aiokafka#1017: after OutOfOrderSequenceNumber an idempotent producer is stuck; the
    sink drops it and carries on with a new one."""
    topic = unique_topic()
    first = [minio_event("b", "k", 1)]
    later = [minio_event("b", "k", n) for n in range(2, 12)]
    async with pipeline(tmp_path, env(kafka.bootstrap, topic, TIMEOUT="2s")) as pipe:
        sink = pipe.sink
        assert isinstance(sink, KafkaSink) and sink.idempotent
        await pipe.append(first)
        await pipe.settled()
        await kafka.fail_next(PRODUCE, OUT_OF_ORDER_SEQUENCE_NUMBER)
        await pipe.append(later)
        await pipe.settled(timeout=60)
        assert await pipe.dead_letters() == []
        assert sink.producer.dropped == 1 and sink.producer.opened == 2
    records = await read_topic(kafka.bootstrap, topic, 11)
    assert ids_of(records) == [e.event_id for e in first + later]


async def test_kafka_mock_message_too_large_is_dead_lettered(
    tmp_path: Path, kafka: MockKafka
) -> None:
    """What a real Kafka answers to a record over its message.max.bytes, made to happen:
    the mock answers the next Produce with MESSAGE_TOO_LARGE."""
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
    with pytest.raises(ConfigError, match="RUSTFS_NOTIFY_KAFKA_BROKERS_T: required"):
        load_sinks(env("", "t"), sinks.declared_options())
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
    # whatever error text carries the password, the dispatcher's redaction takes it out
    shown = redact.for_spec(specs[0])("SaslAuthenticationFailed: relay/s3cret refused")
    assert "s3cret" not in shown and "***" in shown
