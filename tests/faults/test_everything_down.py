"""Start with everything down: the relay starts while no sink's server is up (one of each
type, on private servers), serves and accepts meanwhile, and delivers every event to every
sink once the servers appear, with no restart. A healthy webhook sink next to them shows
that dead sinks do not delay a live one: its delivery latency is printed while the others
are down and after they are back (printed, not asserted: no timing assertions in tests)."""

from __future__ import annotations

import contextlib
import signal
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
import aiohttp
import asyncmy
import nats
import psycopg
import pytest
from redis.asyncio import Redis

from tests.integration.test_kafka_sink import read_topic
from tests.integration.test_mqtt_sink import Subscriber
from tests.support.bodies import minio_body
from tests.support.databases import private_mariadb, private_postgres
from tests.support.kafka_mock import MockKafka
from tests.support.rabbit import PrivateRabbit
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess, free_port
from tests.support.servers import mosquitto, nats_server, redis_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults
TOKEN = "down-token"
N = 100


def sink(kind: str, **keys: str) -> dict[str, str]:
    common = {"ENABLE": "on", "BACKOFF_MAX": "500ms", "TIMEOUT": "3s"}
    return {f"RUSTFS_NOTIFY_{kind}_{k}_X": v for k, v in {**common, **keys}.items()}


async def post_events(
    relay: RelayProcess, first: int, count: int, sent_at: dict[str, float]
) -> None:
    async with aiohttp.ClientSession() as session:
        for n in range(first, first + count):
            sent_at[f"down/obj-{n}"] = time.monotonic()
            async with session.post(relay.url, data=minio_body("down", f"obj-{n}", n),
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as r:  # fmt: skip
                assert r.status == 200


def latencies(receiver: Receiver, sent_at: dict[str, float], keys: range) -> list[float]:
    arrived = {r.json()["Key"]: r.at for r in receiver.received}
    return [1000 * (arrived[f"down/obj-{n}"] - sent_at[f"down/obj-{n}"]) for n in keys]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


async def test_every_sink_down_at_start_then_up_delivers_everything(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    name = f"relay-down-{uuid.uuid4().hex[:8]}"
    healthy = await Receiver().start()
    late_webhook_port = free_port()
    kafka = await MockKafka.start()
    await kafka.down()
    rabbit = PrivateRabbit(tmp_path / "rabbit")
    with contextlib.ExitStack() as stack:
        nats_s = stack.enter_context(nats_server(tmp_path, start=False))
        redis_s = stack.enter_context(redis_server(tmp_path, start=False))
        mqtt_s = stack.enter_context(mosquitto(tmp_path))
        pg = stack.enter_context(private_postgres(started=False))
        maria = stack.enter_context(private_mariadb(started=False))
        # MQTT keeps what arrives for a subscriber only in a session that exists: make one,
        # then take the broker down (a clean stop, so the session is saved).
        subscriber = Subscriber(mqtt_s.port, f"{name}/#", persistent=True)
        await subscriber.__aenter__()
        mqtt_s.stop(signal.SIGTERM)
        relay = relay_factory({
            "RELAY_AUTH_TOKENS": TOKEN,
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_HEALTHY": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_HEALTHY": healthy.url,
            **sink("WEBHOOK", ENDPOINT=f"http://127.0.0.1:{late_webhook_port}/late"),
            **sink("KAFKA", BROKERS=f"127.0.0.1:{kafka.port}", TOPIC=name),
            **sink("AMQP", URL=rabbit.url, EXCHANGE=name, ROUTING_KEY="events",
                   DECLARE_EXCHANGE="on"),
            **sink("NATS", ADDRESS=f"127.0.0.1:{nats_s.port}", SUBJECT=f"{name}.events",
                   JETSTREAM_ENABLE="on"),
            **sink("REDIS", URL=f"redis://127.0.0.1:{redis_s.port}", MODE="stream", KEY=name),
            **sink("MQTT", BROKER=f"127.0.0.1:{mqtt_s.port}", TOPIC=f"{name}/events",
                   RECONNECT_INTERVAL="200ms"),
            **sink("POSTGRES", DSN_STRING=pg.dsn, TABLE="events", FORMAT="access"),
            **sink("MYSQL", DSN_STRING=f"root@tcp(127.0.0.1:{maria.port})/mysql",
                   TABLE="events", FORMAT="access"),
        })  # fmt: skip
        await relay.start()
        sent_at: dict[str, float] = {}
        await post_events(relay, 0, N, sent_at)  # accepted while every sink but one is down
        await healthy.wait_for(N)
        during = latencies(healthy, sent_at, range(N))

        # everything comes up; nothing is restarted on the relay's side
        late = await Receiver().start(late_webhook_port)
        await kafka.up()
        await rabbit.start()
        nats_s.start()
        redis_s.start()
        mqtt_s.start()
        pg.start()
        maria.start()
        connection = await aio_pika.connect(rabbit.url)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, "direct")  # what the sink declared
        queue = await channel.declare_queue(name)
        await queue.bind(exchange, "events")  # unroutable events wait for this binding
        nc = await nats.connect(f"nats://127.0.0.1:{nats_s.port}")
        await nc.jetstream().add_stream(name=name, subjects=[f"{name}.events"])

        await late.wait_for(N, timeout=90)
        records = await read_topic(f"127.0.0.1:{kafka.port}", name, N, timeout=90)
        amqp_messages: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def drain_queue() -> bool:
            while (message := await queue.get(fail=False)) is not None:
                await message.ack()
                amqp_messages.append(message)
            return len(amqp_messages) >= N

        await eventually(drain_queue, timeout=90)
        js = nc.jetstream()
        await eventually(lambda: _stream_count(js, name, N), timeout=90)
        redis = Redis(port=redis_s.port)
        await eventually(lambda: _xlen(redis, name, N), timeout=90)
        await subscriber.wait_for(N, timeout=90)
        await eventually(lambda: _pg_count(pg.dsn, N), timeout=90)
        await eventually(lambda: _maria_count(maria.port, N), timeout=90)

        # the healthy sink once everything is back
        await post_events(relay, N, N, sent_at)
        await healthy.wait_for(2 * N)
        after = latencies(healthy, sent_at, range(N, 2 * N))
        print(f"healthy webhook latency, others down: p50 {statistics.median(during):.1f} ms, "
              f"p99 {p99(during):.1f} ms; others up: p50 {statistics.median(after):.1f} ms, "
              f"p99 {p99(after):.1f} ms")  # fmt: skip

        def keys(values: list[str]) -> set[str]:
            return set(values)

        expected = {f"down/obj-{n}" for n in range(N)}
        assert keys([r.json()["Key"] for r in late.received]) >= expected
        assert len({dict(r.headers)["event-id"] for r in records}) >= N
        assert len({m.message_id for m in amqp_messages}) >= N
        assert len(subscriber.messages) >= N
        await subscriber.__aexit__(None, None, None)
        await nc.close()
        await redis.aclose()
        await connection.close()
        await late.stop()
        relay.kill()
    await rabbit.kill()
    await kafka.stop()
    await healthy.stop()


async def _stream_count(js, stream: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    info = await js.stream_info(stream)
    return bool(info.state.messages >= n)


async def _xlen(redis: Redis, key: str, n: int) -> bool:
    try:
        return bool(await redis.xlen(key) >= n)
    except Exception:
        return False


async def _pg_count(dsn: str, n: int) -> bool:
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            row = await (
                await conn.execute("SELECT count(DISTINCT event_id) FROM events")
            ).fetchone()
            return bool(row and row[0] >= n)
    except psycopg.Error:
        return False


async def _maria_count(port: int, n: int) -> bool:
    try:
        conn = await asyncmy.connect(host="127.0.0.1", port=port, user="root", db="mysql")
    except Exception:
        return False
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT count(DISTINCT event_id) FROM events")
            row = await cur.fetchone()
            return bool(row and row[0] >= n)
    except Exception:
        return False
    finally:
        conn.close()
