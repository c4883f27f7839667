"""The MQTT sink against real Mosquitto brokers (the shared one on 1883, private ones for
outages and auth), driven by the real dispatcher and log. An independent aiomqtt client,
subscribed before anything is published, reads every message back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from relay import metrics, sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.sinks import redact
from relay.sinks.base import Retryable
from tests.support.pipeline import minio_event, pipeline
from tests.support.servers import mosquitto, require_server, tls_files
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

START_SHARED = "mosquitto -d -c /etc/mosquitto/mosquitto.conf"


def env(broker: str, topic: str, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_MQTT_ENABLE_T": "on",
        "RUSTFS_NOTIFY_MQTT_BROKER_T": broker,
        "RUSTFS_NOTIFY_MQTT_TOPIC_T": topic,
        "RUSTFS_NOTIFY_MQTT_BACKOFF_MAX_T": "300ms",
        "RUSTFS_NOTIFY_MQTT_TIMEOUT_T": "2s",
        "RUSTFS_NOTIFY_MQTT_RECONNECT_INTERVAL_T": "200ms",
        **{f"RUSTFS_NOTIFY_MQTT_{k}_T": v for k, v in extra.items()},
    }


def envelope(e: Event) -> dict[str, object]:
    return {
        "EventName": e.event_name,
        "Key": f"{e.bucket}/{e.key}",
        "Records": [json.loads(e.record)],
    }


class Subscriber:
    """An independent consumer that keeps its session across broker restarts (persistent
    session, QoS 1 subscription), reconnecting until stopped."""

    def __init__(self, port: int, topic: str, *, persistent: bool = False) -> None:
        self.port = port
        self.topic = topic
        self.persistent = persistent
        self.identifier = f"relay-test-sub-{uuid.uuid4().hex[:8]}"
        self.messages: list[aiomqtt.Message] = []
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.identifier,
                    clean_session=not self.persistent,
                    timeout=5,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # reconnect back-off while the broker is away

    async def wait_for(self, n: int, timeout: float = 15) -> list[aiomqtt.Message]:
        await eventually(lambda: len(self.messages) >= n, timeout=timeout)
        return self.messages


@pytest.fixture
async def shared() -> AsyncIterator[int]:
    require_server(1883, "Mosquitto", START_SHARED)
    yield 1883


async def test_qos1_in_order_with_exact_bodies(tmp_path: Path, shared: int) -> None:
    prefix = f"relay-test/{uuid.uuid4().hex[:12]}"
    events = [minio_event("p" if n % 2 else "d", f"a/k {n}.txt", n) for n in range(25)]
    async with asyncio.timeout(30), Subscriber(shared, prefix + "/#") as sub:
        # CONCURRENCY 1: one event in flight, so the subscriber sees the log's order
        config = env(f"tcp://127.0.0.1:{shared}", prefix + "/{bucket}", CONCURRENCY="1")
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events)
            await pipe.settled()
            got = await sub.wait_for(25)
    assert [str(m.topic) for m in got] == [f"{prefix}/{e.bucket}" for e in events]
    assert [json.loads(m.payload) for m in got] == [envelope(e) for e in events]  # type: ignore[arg-type]
    assert all(e.record in m.payload for m, e in zip(got, events))  # type: ignore[operator]
    assert {m.qos for m in got} == {1} and not any(m.retain for m in got)


async def test_qos0_and_cloudevents_format(tmp_path: Path, shared: int) -> None:
    topic = f"relay-test/{uuid.uuid4().hex[:12]}"
    event = minio_event("b", "k", 1)
    async with asyncio.timeout(20), Subscriber(shared, topic) as sub:
        config = env(f"127.0.0.1:{shared}", topic, QOS="0", FORMAT="cloudevents")
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append([event])
            (message,) = await sub.wait_for(1)
    assert json.loads(message.payload)["id"] == event.event_id  # type: ignore[arg-type]


async def test_outage_with_concurrency_keeps_each_objects_order_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The ordering test of the MQTT sink fails the whole broker, not one object: MQTT
    3.1.1 has no negative acknowledgement (Mosquitto PUBACKs a publish its ACL denies, and
    drops it), so no topic can be made to refuse one object's events. Events of several
    objects go with CONCURRENCY 4 while the broker stops and starts again: each object's
    events reach the subscriber in order (the last copy of each: a publish whose PUBACK was
    lost with the connection is sent again), none is lost, and the layer resends nothing,
    since a lane stops at its first failure."""
    with mosquitto(tmp_path) as broker:
        topic = f"relay-test/{uuid.uuid4().hex[:8]}"
        events = [minio_event(f"b{n % 2}", f"k{n % 5}", n) for n in range(60)]
        config = env(f"127.0.0.1:{broker.port}", topic, CONCURRENCY="4", FORMAT="cloudevents")
        async with asyncio.timeout(50), Subscriber(broker.port, topic, persistent=True) as sub:
            async with pipeline(tmp_path, config) as pipe:
                before = resends(pipe.sink.name)
                await pipe.append(events[:20])
                await sub.wait_for(20)
                trickle = asyncio.create_task(_trickle(pipe, events[20:40]))
                # a clean stop, so Mosquitto saves the subscriber's session to disk and
                # queues for it what arrives after the restart
                await asyncio.to_thread(broker.stop, signal.SIGTERM)
                await trickle
                await pipe.append(events[40:])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                await asyncio.to_thread(broker.start)
                await pipe.settled(timeout=30)
                assert await pipe.dead_letters() == []
                got = await sub.wait_for(60)
                assert resends(pipe.sink.name) - before == 0
    ids = [json.loads(m.payload)["id"] for m in got]  # type: ignore[arg-type]
    assert set(ids) == {e.event_id for e in events}
    for obj in {(e.bucket, e.key) for e in events}:
        mine = [e.event_id for e in events if (e.bucket, e.key) == obj]
        assert last_occurrence_order(ids, mine) == mine, obj


def last_occurrence_order(received: list[str], ids: list[str]) -> list[str]:
    """`ids` in the order their last copies reached the target."""
    last = {event_id: position for position, event_id in enumerate(received)}
    return sorted(ids, key=lambda event_id: last[event_id])


def resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


async def _trickle(pipe: object, events: list[Event]) -> None:
    for event in events:
        await pipe.append([event])  # type: ignore[attr-defined]


async def test_broker_down_at_start_then_delivers_without_restart(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        topic = f"relay-test/{uuid.uuid4().hex[:8]}"
        async with asyncio.timeout(40), Subscriber(broker.port, topic, persistent=True) as sub:
            await asyncio.to_thread(
                broker.stop, signal.SIGTERM
            )  # the subscriber's session is saved
            async with pipeline(tmp_path, env(f"127.0.0.1:{broker.port}", topic)) as pipe:
                await pipe.append([minio_event("b", f"k{n}", n) for n in range(3)])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                await asyncio.to_thread(broker.start)
                await pipe.settled(timeout=20)
                assert pipe.dispatcher.up is True
                got = await sub.wait_for(3)
    # three objects, in flight side by side: each arrives (order across objects is free)
    assert {json.loads(m.payload)["Key"] for m in got} == {"b/k0", "b/k1", "b/k2"}  # type: ignore[arg-type]


async def test_hung_broker_times_out_then_recovers(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        topic = f"relay-test/{uuid.uuid4().hex[:8]}"
        config = env(f"127.0.0.1:{broker.port}", topic, TIMEOUT="500ms")
        async with asyncio.timeout(40), Subscriber(broker.port, topic, persistent=True) as sub:
            async with pipeline(tmp_path, config) as pipe:
                await pipe.append([minio_event("b", "k1", 1)])
                await sub.wait_for(1)
                broker.pause()
                await pipe.append([minio_event("b", "k2", 2)])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                broker.resume()
                await pipe.settled(timeout=25)
                got = await sub.wait_for(2)
    assert [json.loads(m.payload)["Key"] for m in got][:2] == ["b/k1", "b/k2"]  # type: ignore[arg-type]


async def test_login_with_password_and_a_refused_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = tmp_path / "passwd"
    await asyncio.to_thread(
        subprocess.run,
        ["mosquitto_passwd", "-b", "-c", str(passwords), "relay", "m0squ1tto"],
        check=True,
    )
    with mosquitto(tmp_path, password_file=passwords) as broker:
        good = env(f"127.0.0.1:{broker.port}", "t", USERNAME="relay", PASSWORD="m0squ1tto")
        async with asyncio.timeout(20), pipeline(tmp_path, good) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()
            assert pipe.dispatcher.up is True
        bad = env(f"127.0.0.1:{broker.port}", "t", USERNAME="relay", PASSWORD="nope-pw")
        with pytest.raises(Retryable, match="refused the login") as caught:
            await asyncio.wait_for(_started(bad), 15)
        (spec,), _ = load_sinks(bad, sinks.declared_options())
        assert "nope-pw" not in redact.for_spec(spec)(str(caught.value))
        # what the relay logs and shows of it: through the one redaction
        async with asyncio.timeout(20), pipeline(tmp_path / "bad", bad) as pipe:
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            health = await pipe.sink.health()
        assert not health.ok and "nope-pw" not in redact.for_spec(spec)(health.detail)
        down = [r for r in caplog.records if r.getMessage() == "sink down"]
        assert down and all("nope-pw" not in r.error for r in down)  # type: ignore[attr-defined]


async def test_mutual_tls(tmp_path: Path) -> None:
    tls = await asyncio.to_thread(tls_files, tmp_path / "tls")
    with mosquitto(tmp_path, tls=tls) as broker:
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        files = {"TLS_CA": str(tls.ca), "TLS_CLIENT_CERT": str(tls.client_cert),
                 "TLS_CLIENT_KEY": str(tls.client_key)}  # fmt: skip
        config = env(f"ssl://127.0.0.1:{broker.port}", "secure", **files)
        async with (
            asyncio.timeout(20),
            aiomqtt.Client("127.0.0.1", broker.port, tls_context=context) as consumer,
        ):
            await consumer.subscribe("secure", qos=1)
            async with pipeline(tmp_path, config) as pipe:
                await pipe.append([minio_event("b", "k", 1)])
                message = await anext(aiter(consumer.messages))
                await pipe.settled()
        assert json.loads(message.payload)["Key"] == "b/k"  # type: ignore[arg-type]


async def _started(config: dict[str, str]) -> None:
    specs, _ = load_sinks(config, sinks.declared_options())
    sink = sinks.create(specs[0])
    try:
        await sink.start()
    finally:
        await sink.close()


@pytest.mark.parametrize(
    ("broker", "extra", "message"),
    [
        ("http://h:1", {}, "is not host:port"),
        ("tcp://u:pw@h:1", {}, "USERNAME and PASSWORD, not in the URL"),
        ("h:1", {"QOS": "3"}, "QOS_T: must be 0, 1 or 2"),
        ("h:1", {"TOPIC": "a/+/b"}, "wildcards"),
        ("h:1", {"TOPIC": "a/{key}"}, "unknown placeholder"),
        ("h:1", {"TLS_CA": "/ca.pem"}, "is not ssl://"),
        ("h:1", {"PASSWORD": "pw"}, "USERNAME_T: required with PASSWORD"),
    ],
)
def test_config_errors_name_the_variable(broker: str, extra: dict[str, str], message: str) -> None:
    config = env(broker, "t")
    config.update({f"RUSTFS_NOTIFY_MQTT_{k}_T": v for k, v in extra.items()})
    specs, _ = load_sinks(config, sinks.declared_options())
    with pytest.raises(ConfigError, match=message) as caught:
        sinks.create(specs[0])
    assert ":pw@" not in str(caught.value)
