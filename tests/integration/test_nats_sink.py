"""The NATS sink against real nats-server instances (the shared one on 4222 and private
ones for outages), driven by the real dispatcher and log. Every message is read back by an
independent connection set up before anything is published."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from relay import cli, metrics, sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.sinks import redact
from relay.sinks.base import Retryable
from tests.support.pipeline import minio_event, pipeline
from tests.support.servers import (
    PrivateServer,
    nats_server,
    nats_server_with_config,
    require_server,
    tls_files,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

SHARED = "nats://127.0.0.1:4222"
START_SHARED = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)


def env(address: str, subject: str, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_NATS_ENABLE_T": "on",
        "RUSTFS_NOTIFY_NATS_ADDRESS_T": address,
        "RUSTFS_NOTIFY_NATS_SUBJECT_T": subject,
        "RUSTFS_NOTIFY_NATS_BACKOFF_MAX_T": "300ms",
        "RUSTFS_NOTIFY_NATS_TIMEOUT_T": "2s",
        **{f"RUSTFS_NOTIFY_NATS_{k}_T": v for k, v in extra.items()},
    }


@pytest.fixture
async def shared() -> AsyncIterator[NatsClient]:
    """An independent connection to the machine's NATS server (the test's consumer)."""
    require_server(4222, "NATS (nats-server -js)", START_SHARED)
    nc = await nats.connect(SHARED, connect_timeout=5, allow_reconnect=False)
    yield nc
    await nc.close()


def run_id() -> str:
    return uuid.uuid4().hex[:12]


def expected_body(e: Event) -> dict[str, object]:
    return {
        "EventName": e.event_name,
        "Key": f"{e.bucket}/{e.key}",
        "Records": [json.loads(e.record)],
    }


async def make_stream(nc: NatsClient, name: str, subjects: list[str]) -> None:
    await nc.jetstream().add_stream(
        StreamConfig(name=name, subjects=subjects, storage=StorageType.FILE, duplicate_window=120)
    )


async def drop_stream(nc: NatsClient, name: str) -> None:
    with contextlib.suppress(NotFoundError):  # the test failed before creating it
        await nc.jetstream().delete_stream(name)


async def stream_messages(nc: NatsClient, stream: str) -> list[Msg]:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    if info.state.messages == 0:
        return []
    return [await js.get_msg(stream, seq) for seq in range(first, last + 1)]  # type: ignore[misc]


# -- core NATS ---------------------------------------------------------------------------------


async def test_core_publish_arrives_in_order_with_msg_id(
    tmp_path: Path, shared: NatsClient
) -> None:
    async with asyncio.timeout(30):
        prefix = f"relay-test.{run_id()}"
        got: list[Msg] = []

        async def collect(msg: Msg) -> None:
            got.append(msg)

        sub = await shared.subscribe(f"{prefix}.>", cb=collect)
        await shared.flush()
        events = [
            minio_event("photos" if n % 2 else "docs", f"dir/k {n}.jpg", n) for n in range(20)
        ]
        async with pipeline(tmp_path, env(SHARED, prefix + ".{bucket}")) as pipe:
            await pipe.append(events)
            await pipe.settled()
            await eventually(lambda: len(got) >= 20, timeout=10)
        await sub.unsubscribe()
    assert [m.headers["Nats-Msg-Id"] for m in got] == [e.event_id for e in events]  # type: ignore[index]
    assert [m.subject for m in got] == [f"{prefix}.{e.bucket}" for e in events]
    for m, e in zip(got, events):
        assert e.record in m.data  # the record byte for byte
        assert json.loads(m.data) == expected_body(e)


async def test_core_records_format(tmp_path: Path, shared: NatsClient) -> None:
    async with asyncio.timeout(20):
        subject = f"relay-test.{run_id()}.records"
        sub = await shared.subscribe(subject)
        await shared.flush()
        event = minio_event("b", "k", 1)
        async with pipeline(tmp_path, env(SHARED, subject, FORMAT="records")) as pipe:
            await pipe.append([event])
            msg = await sub.next_msg(timeout=10)
        await sub.unsubscribe()
    assert msg.data == b'{"Records":[' + event.record + b"]}"


# -- JetStream ---------------------------------------------------------------------------------


async def test_jetstream_stores_in_order_and_dedups_a_resend(
    tmp_path: Path, shared: NatsClient
) -> None:
    stream = f"RELAY_TEST_{run_id()}"
    subject = f"relay-js.{stream}.events"
    await make_stream(shared, stream, [f"relay-js.{stream}.>"])
    try:
        async with asyncio.timeout(40):
            events = [minio_event("b", f"k{n}", n) for n in range(10)]
            config = env(
                SHARED,
                subject,
                JETSTREAM_ENABLE="on",
                JETSTREAM_STREAM_NAME=stream,
                CONCURRENCY="1",
            )
            async with pipeline(tmp_path / "first", config) as pipe:
                await pipe.append(events)
                await pipe.settled()
                assert pipe.dispatcher.up is True
            # The same events through a second relay (its own log): the stream's duplicate
            # window recognises every Nats-Msg-Id, nothing is stored twice.
            async with pipeline(tmp_path / "second", config) as pipe:
                await pipe.append(events)
                await pipe.settled()
                assert await pipe.dead_letters() == []
            stored = await stream_messages(shared, stream)
    finally:
        await drop_stream(shared, stream)
    assert len(stored) == 10
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.event_id for e in events]  # type: ignore[index]
    assert [json.loads(m.data) for m in stored] == [expected_body(e) for e in events]  # type: ignore[arg-type]


async def test_one_window_of_publishes_each_event_its_own_puback(
    tmp_path: Path, shared: NatsClient
) -> None:
    # One batch published whole: the events for bucket "a" land in their stream, in the log's
    # order across objects, while those for bucket "b" (no stream takes the subject, so no
    # PubAck) fail on their own and wait, without failing or reordering the others.
    stream = f"RELAY_TEST_{run_id()}"
    await make_stream(shared, stream, [f"relay-js.{stream}.a"])
    try:
        async with asyncio.timeout(40):
            events = [minio_event("a" if n % 2 else "b", f"k{n}", n) for n in range(40)]
            config = env(SHARED, f"relay-js.{stream}.{{bucket}}", JETSTREAM_ENABLE="on",
                         BATCH_SIZE="40", TIMEOUT="1s")  # fmt: skip
            async with pipeline(tmp_path, config) as pipe:
                await pipe.append(events)

                async def stored_all_of_a() -> bool:
                    return (await shared.jetstream().stream_info(stream)).state.messages >= 20

                await eventually(stored_all_of_a, timeout=20)
                assert await pipe.dead_letters() == []
            stored = await stream_messages(shared, stream)
    finally:
        await drop_stream(shared, stream)
    wanted = [e.event_id for e in events if e.bucket == "a"]
    assert [m.headers["Nats-Msg-Id"] for m in stored] == wanted  # type: ignore[index]


async def test_missing_stream_keeps_the_sink_down_until_created(
    tmp_path: Path, shared: NatsClient
) -> None:
    stream = f"RELAY_TEST_{run_id()}"
    subject = f"relay-js.{stream}.x"
    config = env(SHARED, subject, JETSTREAM_ENABLE="on", JETSTREAM_STREAM_NAME=stream)
    try:
        async with asyncio.timeout(40):
            async with pipeline(tmp_path, config) as pipe:
                await pipe.append([minio_event("b", "k", 1)])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                with pytest.raises(Retryable, match="does not exist"):
                    await _started(config)
                # a stream that does not cover the subject is refused just the same
                await make_stream(shared, stream, [f"elsewhere.{stream}"])
                with pytest.raises(Retryable, match="does not cover subject"):
                    await _started(config)
                await shared.jetstream().update_stream(
                    StreamConfig(name=stream, subjects=[f"relay-js.{stream}.>"])
                )
                await pipe.settled()
                assert pipe.dispatcher.up is True
            stored = await stream_messages(shared, stream)
    finally:
        await drop_stream(shared, stream)
    assert len(stored) == 1


async def _started(config: dict[str, str]) -> None:
    specs, _ = load_sinks(config, sinks.declared_options())
    sink = sinks.create(specs[0])
    try:
        await sink.start()
    finally:
        await sink.close()


async def test_jetstream_without_a_stream_for_the_subject_retries(
    tmp_path: Path, shared: NatsClient
) -> None:
    # no JETSTREAM_STREAM_NAME: nothing to check at start, but the PubAck never comes
    subject = f"relay-nostream.{run_id()}"
    async with (
        asyncio.timeout(20),
        pipeline(tmp_path, env(SHARED, subject, JETSTREAM_ENABLE="on")) as pipe,
    ):
        await pipe.append([minio_event("b", "k", 1)])
        await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
        assert await pipe.dead_letters() == []


# -- per-object order when one subject refuses writes ---------------------------------------------

PUT, DELETE = "s3:ObjectCreated:Put", "s3:ObjectRemoved:Delete"
LIMIT = 50  # messages per subject in the order tests' stream


async def make_limited_stream(nc: NatsClient, name: str, subjects: list[str]) -> None:
    """A stream that refuses a subject's next message once it holds LIMIT (2.9+)."""
    await nc.jetstream().add_stream(
        StreamConfig(name=name, subjects=subjects, storage=StorageType.FILE,
                     max_msgs_per_subject=LIMIT, discard=DiscardPolicy.NEW,
                     discard_new_per_subject=True)
    )  # fmt: skip


async def fill(nc: NatsClient, subject: str) -> None:
    for n in range(LIMIT):
        await nc.publish(subject, b"filler", headers={"Filler": str(n)})
    await nc.flush()


def resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


def last_copies(ids: list[str]) -> list[str]:
    """Each id once, where its last copy is."""
    last = {i: n for n, i in enumerate(ids)}
    return sorted(last, key=last.__getitem__)


async def test_the_stream_keeps_a_resent_events_first_copy(shared: NatsClient) -> None:
    """Why the JetStream sink hands an object's next event over only after the PubAck of
    the one before: pipelined on one connection, A (refused: its subject is full) and B (a
    later event of the same object, on another subject) leave the stream holding B alone;
    sent again in order, A is stored and B's copy is dropped as a duplicate, before A."""
    stream = f"RELAY_TEST_{run_id()}"
    prefix = f"relay-js.{stream}"
    await make_limited_stream(shared, stream, [f"{prefix}.>"])
    try:
        await fill(shared, f"{prefix}.put")
        replies = f"{shared.new_inbox()}"
        sub = await shared.subscribe(f"{replies}.*")
        for n, (subject, msg_id) in enumerate([("put", "A"), ("delete", "B")]):
            await shared.publish(f"{prefix}.{subject}", msg_id.encode(), reply=f"{replies}.{n}",
                                 headers={"Nats-Msg-Id": msg_id})  # fmt: skip
        first = [json.loads((await sub.next_msg(timeout=5)).data) for _ in range(2)]
        await shared.jetstream().purge_stream(stream, subject=f"{prefix}.put")
        for n, (subject, msg_id) in enumerate([("put", "A"), ("delete", "B")], 2):
            await shared.publish(f"{prefix}.{subject}", msg_id.encode(), reply=f"{replies}.{n}",
                                 headers={"Nats-Msg-Id": msg_id})  # fmt: skip
        again = [json.loads((await sub.next_msg(timeout=5)).data) for _ in range(2)]
        stored = [m.headers["Nats-Msg-Id"] for m in await stream_messages(shared, stream)]  # type: ignore[index]
    finally:
        await drop_stream(shared, stream)
    assert first[0]["error"]["description"] == "maximum messages per subject exceeded"
    assert "error" not in first[1]
    assert again[1].get("duplicate") is True and again[1]["seq"] < again[0]["seq"]
    assert stored == ["B", "A"]


async def test_one_subject_refusing_parks_its_objects_and_each_object_stays_in_order(
    tmp_path: Path, shared: NatsClient
) -> None:
    """The layer's acceptance on JetStream: one batch of eight objects; the stream refuses
    every Put of bucket `photos` (its subject is full) while Deletes and the bucket `docs`
    are taken. The photos objects wait (parked) while docs goes through; once the subject
    is purged they arrive, each object's events in order, none stored twice."""
    stream = f"RELAY_ORDER_{run_id()}"
    prefix = f"relay-order.{stream}"
    await make_limited_stream(shared, stream, [f"{prefix}.>"])
    blocked = f"{prefix}.photos.{PUT}"
    objects = [(bucket, f"k{i}") for bucket in ("docs", "photos") for i in range(4)]
    events = [minio_event(bucket, key, 10 * r + i, PUT if r % 2 == 0 else DELETE)
              for r in range(6) for i, (bucket, key) in enumerate(objects)]  # fmt: skip
    config = env(SHARED, prefix + ".{bucket}.{event}", JETSTREAM_ENABLE="on", BATCH_SIZE="100",
                 TIMEOUT="2s")  # fmt: skip
    try:
        await fill(shared, blocked)
        async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
            before = resends(pipe.sink.name)
            await pipe.append(events)

            async def docs_stored() -> list[str] | None:
                ids = [m.headers["Nats-Msg-Id"] for m in await stream_messages(shared, stream)
                       if m.headers and "Nats-Msg-Id" in m.headers]  # fmt: skip
                return ids if len(ids) >= 24 else None

            while_blocked = await eventually(docs_stored, timeout=20)

            async def photos_parked() -> int:
                return await pipe.parked()

            parked = await eventually(photos_parked, timeout=10)
            errors = await pipe.retry_errors()
            await shared.jetstream().purge_stream(stream, subject=blocked)
            await pipe.settled(timeout=30)
            assert await pipe.dead_letters() == []
            resent = resends(pipe.sink.name) - before
        stored = [m.headers["Nats-Msg-Id"] for m in await stream_messages(shared, stream)]  # type: ignore[index]
    finally:
        await drop_stream(shared, stream)
    docs = {e.event_id for e in events if e.bucket == "docs"}
    assert set(while_blocked) == docs  # docs went through while photos waited
    assert parked == 24
    assert errors and all("maximum messages per subject exceeded" in e for e in errors)
    assert set(stored) == {e.event_id for e in events}
    for bucket, key in objects:
        mine = [e.event_id for e in events if (e.bucket, e.key) == (bucket, key)]
        assert [i for i in last_copies(stored) if i in set(mine)] == mine, (bucket, key)
    twice = len(stored) - len(set(stored))
    assert resent == twice == 0


# -- private servers: outages, auth, permissions -------------------------------------------------


async def test_outage_mid_stream_every_event_once(tmp_path: Path) -> None:
    with nats_server(tmp_path) as server:
        url = f"nats://127.0.0.1:{server.port}"
        stream = f"RELAY_OUTAGE_{run_id()}"
        admin = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            await make_stream(admin, stream, [f"{stream}.>"])
            config = env(url, stream + ".{bucket}", JETSTREAM_ENABLE="on",
                         JETSTREAM_STREAM_NAME=stream)  # fmt: skip
            # three objects, so the dispatcher's per-object lanes each carry 20 events
            events = [minio_event("b", f"k{n % 3}", n) for n in range(60)]
            async with asyncio.timeout(50), pipeline(tmp_path, config) as pipe:
                await pipe.append(events[:20])
                await pipe.settled()
                # kill it while events keep coming
                appending = asyncio.create_task(_trickle(pipe, events[20:40]))
                await asyncio.to_thread(server.stop)
                await appending
                await pipe.append(events[40:])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                await asyncio.to_thread(server.start)  # same port, same store dir
                await pipe.settled(timeout=30)
                assert await pipe.dead_letters() == []
                stored: list[Msg] = await eventually(
                    lambda: _all_stored(admin, stream, 60),  # type: ignore[arg-type, return-value]
                    timeout=10,
                )
        finally:
            await admin.close()
    ids = [m.headers["Nats-Msg-Id"] for m in stored]  # type: ignore[index]
    assert len(ids) == len(set(ids)) == 60
    assert set(ids) == {e.event_id for e in events}
    for key in ("k0", "k1", "k2"):  # events of one object stay in order
        mine = [e.event_id for e in events if e.key == key]
        assert [i for i in ids if i in set(mine)] == mine


async def _trickle(pipe: object, events: list[Event]) -> None:
    for event in events:
        await pipe.append([event])  # type: ignore[attr-defined]


async def _all_stored(nc: NatsClient, stream: str, n: int) -> list[Msg] | None:
    try:
        messages = await stream_messages(nc, stream)
    except Exception:
        return None  # the admin connection is still reconnecting
    return messages if len(messages) >= n else None


async def test_server_down_at_start_then_delivers_without_restart(tmp_path: Path) -> None:
    with nats_server(tmp_path, start=False) as server:
        url = f"nats://127.0.0.1:{server.port}"
        stream = f"RELAY_LATE_{run_id()}"
        config = env(url, f"{stream}.x", JETSTREAM_ENABLE="on", JETSTREAM_STREAM_NAME=stream)
        async with asyncio.timeout(40), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", f"k{n}", n) for n in range(3)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            await asyncio.to_thread(server.start)
            admin = await nats.connect(url)
            try:
                await make_stream(admin, stream, [f"{stream}.>"])
                await pipe.settled(timeout=30)
                assert pipe.dispatcher.up is True
                assert len(await stream_messages(admin, stream)) == 3
            finally:
                await admin.close()


async def test_core_restart_mid_stream_keeps_each_objects_order_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The layer's acceptance on core NATS, where no one object can fail: a publish the
    server refuses (permissions) is dropped and dead-lettered at once, and whatever else
    fails is the connection, every object at once. So the server is restarted while events
    keep coming, in batches of ten over ten objects. What it received is read from a
    stream that captures the subjects (it drops the copies of a batch sent again by
    Nats-Msg-Id). The restart is a clean one (SIGTERM): core NATS confirms a batch when
    the server has read it, not stored it, so a SIGKILL may lose what was confirmed."""
    with nats_server(tmp_path) as server:
        url = f"nats://127.0.0.1:{server.port}"
        stream = f"RELAY_CORE_{run_id()}"
        admin = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            await make_stream(admin, stream, [f"{stream}.>"])
            config = env(url, stream + ".{bucket}", BATCH_SIZE="10")
            events = [minio_event("photos" if n % 2 else "docs", f"k{n % 5}", n) for n in range(60)]
            async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
                before = resends(pipe.sink.name)
                await pipe.append(events[:20])
                await pipe.settled()
                appending = asyncio.create_task(_trickle(pipe, events[20:40]))
                await asyncio.to_thread(server.stop, signal.SIGTERM)
                await appending
                await pipe.append(events[40:])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                await asyncio.to_thread(server.start)
                await pipe.settled(timeout=30)
                assert await pipe.dead_letters() == []
                resent = resends(pipe.sink.name) - before
                stored: list[Msg] = await eventually(
                    lambda: _all_stored(admin, stream, 60),  # type: ignore[arg-type, return-value]
                    timeout=10,
                )
        finally:
            await admin.close()
    ids = [m.headers["Nats-Msg-Id"] for m in stored]  # type: ignore[index]
    assert len(ids) == len(set(ids)) == 60
    for obj in {(e.bucket, e.key) for e in events}:
        mine = [e.event_id for e in events if (e.bucket, e.key) == obj]
        assert [i for i in ids if i in set(mine)] == mine, obj
    assert resent == 0  # a batch not confirmed is sent again whole: a retry, not a resend


async def test_hung_server_times_out_then_recovers_without_duplicates(tmp_path: Path) -> None:
    with nats_server(tmp_path) as server:
        url = f"nats://127.0.0.1:{server.port}"
        stream = f"RELAY_HUNG_{run_id()}"
        admin = await nats.connect(url)
        try:
            await make_stream(admin, stream, [f"{stream}.>"])
            config = env(url, f"{stream}.x", JETSTREAM_ENABLE="on", JETSTREAM_STREAM_NAME=stream,
                         TIMEOUT="500ms")  # fmt: skip
            events = [minio_event("b", f"k{n}", n) for n in range(6)]
            async with asyncio.timeout(40), pipeline(tmp_path, config) as pipe:
                await pipe.append(events[:3])
                await pipe.settled()
                server.pause()  # the requests below reach a server that does not answer
                await pipe.append(events[3:])
                await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
                server.resume()  # it now reads the stale requests and the resends
                await pipe.settled(timeout=20)
                stored = await stream_messages(admin, stream)
        finally:
            await admin.close()
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.event_id for e in events]  # type: ignore[index]


async def test_core_client_closed_underneath_is_rebuilt(tmp_path: Path) -> None:
    with nats_server(tmp_path) as server:
        url = f"nats://127.0.0.1:{server.port}"
        consumer = await nats.connect(url)
        sub = await consumer.subscribe("rebuilt.>")
        await consumer.flush()
        async with asyncio.timeout(20), pipeline(tmp_path, env(url, "rebuilt.x")) as pipe:
            await pipe.append([minio_event("b", "k1", 1)])
            await sub.next_msg(timeout=10)
            await pipe.settled()  # else the close fails the flush and k1 is (rightly) resent
            await pipe.sink.link.connection.client.close()  # type: ignore[attr-defined]  # as after a lost cluster
            await pipe.append([minio_event("b", "k2", 2)])
            second = await sub.next_msg(timeout=10)
            await pipe.settled()
        await consumer.close()
    assert json.loads(second.data)["Key"] == "b/k2"


AUTH_CONFIG = """
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{ user: "relay", password: "pa55-w0rd",
       permissions: {{ publish: {{ allow: ["allowed.>", "$JS.API.>"] }},
                       subscribe: {{ allow: ["_INBOX.>", "allowed.>"] }} }} }}
  ]
}}
"""


async def test_password_auth_and_denied_subject_is_a_dead_letter(tmp_path: Path) -> None:
    with nats_server_with_config(tmp_path, AUTH_CONFIG) as server:
        url = f"127.0.0.1:{server.port}"
        creds = {"USERNAME": "relay", "PASSWORD": "pa55-w0rd"}
        consumer = await nats.connect(f"nats://{url}", user="relay", password="pa55-w0rd")
        sub = await consumer.subscribe("allowed.>")
        await consumer.flush()
        async with (
            asyncio.timeout(30),
            pipeline(tmp_path, env(url, "{bucket}.events", CONCURRENCY="1", **creds)) as pipe,
        ):
            await pipe.append([minio_event("allowed", "k1", 1), minio_event("denied", "k2", 2),
                               minio_event("allowed", "k3", 3)])  # fmt: skip
            await pipe.settled()
            dead = await pipe.dead_letters()
            first, third = await sub.next_msg(timeout=5), await sub.next_msg(timeout=5)
        await consumer.close()
        assert [json.loads(m.data)["Key"] for m in (first, third)] == ["allowed/k1", "allowed/k3"]
        assert len(dead) == 1 and "permission denied" in dead[0][1]

        wrong = env(url, "allowed.x", USERNAME="relay", PASSWORD="not-it")
        shown = redact.for_spec(load_sinks(wrong, sinks.declared_options())[0][0])
        messages: list[str] = []
        for _ in range(5):  # the server's -ERR can lose the race with its connection reset
            with pytest.raises(Retryable) as caught:
                await _started(wrong)
            messages.append(shown(str(caught.value)))  # as the dispatcher logs and stores it
            if "refused the credentials" in messages[-1]:
                break
        assert "refused the credentials" in messages[-1], messages
        assert not any("not-it" in m for m in messages)


def test_relay_check_shows_no_password_of_the_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_server(4222, "NATS (nats-server -js)", START_SHARED)
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    for key, value in env("nats://relay:url-pa55word@127.0.0.1:4222", "checked").items():
        monkeypatch.setenv(key, value)
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "address = nats://***@127.0.0.1:4222" in out and "reachable: yes" in out, out
    assert "url-pa55word" not in out


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateServer]:
    with nats_server(tmp_path) as server:
        yield server


async def test_tls_required_refuses_a_plain_server(private_nats: PrivateServer) -> None:
    config = env(f"127.0.0.1:{private_nats.port}", "x", TLS_REQUIRED="on")
    with pytest.raises(Retryable, match="does not use TLS"):
        await asyncio.wait_for(_started(config), 10)


async def test_mutual_tls(tmp_path: Path) -> None:
    tls = await asyncio.to_thread(tls_files, tmp_path / "tls")
    with nats_server(tmp_path, tls=tls) as server:
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        consumer = await nats.connect(f"tls://127.0.0.1:{server.port}", tls=context)
        sub = await consumer.subscribe("secure.>")
        await consumer.flush()
        files = {"TLS_CA": str(tls.ca), "TLS_CLIENT_CERT": str(tls.client_cert),
                 "TLS_CLIENT_KEY": str(tls.client_key)}  # fmt: skip
        config = env(f"127.0.0.1:{server.port}", "secure.x", TLS_REQUIRED="on", **files)
        async with asyncio.timeout(20), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            message = await sub.next_msg(timeout=10)
            await pipe.settled()
        await consumer.close()
        assert json.loads(message.data)["Key"] == "b/k"
        # without the client certificate the server refuses the handshake
        no_cert = env(f"127.0.0.1:{server.port}", "secure.x", TLS_CA=str(tls.ca))
        with pytest.raises(Retryable, match="cannot connect"):
            await asyncio.wait_for(_started(no_cert), 10)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"USERNAME": "u"}, "PASSWORD_T: required with USERNAME"),
        ({"TOKEN": "t", "USERNAME": "u", "PASSWORD": "p"}, "choose one way"),
        ({"JETSTREAM_STREAM_NAME": "S"}, "needs RUSTFS_NOTIFY_NATS_JETSTREAM_ENABLE_T=on"),
        ({"SUBJECT": "a.{key}"}, "unknown placeholder"),
        ({"ADDRESS": "http://x:1"}, "is not host:port"),
        ({"ADDRESS": "nats://u:secret@host"}, "is not host:port"),
        ({"CREDENTIALS_FILE": "/nonexistent.creds"}, "CREDENTIALS_FILE_T"),
    ],
)
def test_config_errors_name_the_variable(extra: dict[str, str], message: str) -> None:
    config = env("127.0.0.1:4222", "s")
    config.update({f"RUSTFS_NOTIFY_NATS_{k}_T": v for k, v in extra.items()})
    specs, _ = load_sinks(config, sinks.declared_options())
    with pytest.raises(ConfigError, match=message) as caught:
        sinks.create(specs[0])
    assert "secret" not in str(caught.value)
