"""The Redis sink in each mode against a real redis-server (the shared one on 6379, private
ones for outages and auth), driven by the real dispatcher and log. What the sink wrote is
read back by an independent client."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import cli, metrics, sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.sinks import redact
from relay.sinks.base import Permanent, Retryable
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.servers import redis_server, require_server, tls_files
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

SHARED = "redis://127.0.0.1:6379/0"
START_SHARED = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def env(prefix: str = "RUSTFS", ident: str = "_T", **keys: str) -> dict[str, str]:
    base = {"ENABLE": "on", "BACKOFF_MAX": "300ms", "TIMEOUT": "2s", **keys}
    return {f"{prefix}_NOTIFY_REDIS_{k}{ident}": v for k, v in base.items()}


@pytest.fixture
async def shared() -> AsyncIterator[Redis]:
    """An independent client of the machine's Redis; deletes the keys a test made."""
    require_server(6379, "Redis", START_SHARED)
    client = Redis.from_url(SHARED, socket_timeout=5)
    made: list[str] = []
    client.made = made  # type: ignore[attr-defined]
    yield client
    if made:
        await client.delete(*made)
    await client.aclose()


def unique(shared: Redis, what: str) -> str:
    name = f"relay-test:{what}:{uuid.uuid4().hex[:12]}"
    shared.made.append(name)  # type: ignore[attr-defined]
    return name


def minio_envelope(e: Event) -> dict[str, object]:
    return {
        "EventName": e.event_name,
        "Key": f"{e.bucket}/{e.key}",
        "Records": [json.loads(e.record)],
    }


async def test_publish_reaches_a_subscriber_in_order(tmp_path: Path, shared: Redis) -> None:
    async with asyncio.timeout(30):
        channel = f"relay-test:{uuid.uuid4().hex[:12]}"
        pubsub = shared.pubsub()
        await pubsub.psubscribe(channel + ":*")
        await pubsub.get_message(timeout=5)  # the psubscribe confirmation
        events = [minio_event("b1" if n % 2 else "b2", f"k {n}", n) for n in range(15)]
        async with pipeline(tmp_path, env(URL=SHARED, CHANNEL=channel + ":{bucket}")) as pipe:
            await pipe.append(events)
            await pipe.settled()
        got: list[dict[str, Any]] = []
        while len(got) < 15:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None, f"only {len(got)} of 15 messages arrived"
            got.append(message)
        await pubsub.aclose()
    assert [m["channel"].decode() for m in got] == [f"{channel}:{e.bucket}" for e in events]
    assert [json.loads(m["data"]) for m in got] == [minio_envelope(e) for e in events]
    assert all(e.record in m["data"] for m, e in zip(got, events))


async def test_default_channel_is_rustfs_one(tmp_path: Path, shared: Redis) -> None:
    async with asyncio.timeout(20):
        pubsub = shared.pubsub()
        await pubsub.subscribe("rustfs_notify_channel")
        await pubsub.get_message(timeout=5)
        # another run may publish there too: look for our own key
        marker = f"k-{uuid.uuid4().hex}"
        async with pipeline(tmp_path, env(URL=SHARED, FORMAT="records")) as pipe:
            await pipe.append([minio_event("b", marker, 1)])
            await pipe.settled()

        async def ours() -> bytes | None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            return message["data"] if message and marker.encode() in message["data"] else None

        data: bytes = await eventually(ours, timeout=10)  # type: ignore[arg-type]
        await pubsub.aclose()
    assert data.startswith(b'{"Records":[')


async def test_namespace_the_minio_way_hset_then_hdel(tmp_path: Path, shared: Redis) -> None:
    key = unique(shared, "ns")
    put1, put2 = minio_event("b", "dir/a 1.txt", 1), minio_event("b", "dir/b.txt", 2)
    delete1 = minio_event("b", "dir/a 1.txt", 3, "s3:ObjectRemoved:Delete")
    # MinIO's spelling: FORMAT=namespace, ADDRESS=host:port, no id suffix
    config = env("MINIO", "", ADDRESS="127.0.0.1:6379", KEY=key, FORMAT="namespace")
    async with asyncio.timeout(20), pipeline(tmp_path, config) as pipe:
        await pipe.append([put1, put2])
        await pipe.settled()
        assert set(await shared.hkeys(key)) == {b"b/dir/a 1.txt", b"b/dir/b.txt"}
        await pipe.append([delete1])
        await pipe.settled()
    assert await shared.hgetall(key) == {b"b/dir/b.txt": b'{"Records":[' + put2.record + b"]}"}


async def test_minio_sink_without_format_is_namespace(tmp_path: Path, shared: Redis) -> None:
    key = unique(shared, "ns-default")
    config = env("MINIO", "_PRIMARY", ADDRESS="127.0.0.1:6379", KEY=key)
    async with asyncio.timeout(20), pipeline(tmp_path, config) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await pipe.settled()
    assert await shared.type(key) == b"hash"


async def test_access_rpushes_minio_records(tmp_path: Path, shared: Redis) -> None:
    key = unique(shared, "access")
    events = [minio_event("b", f"k{n}", n) for n in range(5)]
    config = env(URL=SHARED, KEY=key, MODE="access")
    async with asyncio.timeout(20), pipeline(tmp_path, config) as pipe:
        await pipe.append(events)
        await pipe.settled()
    values = await shared.lrange(key, 0, -1)
    assert [json.loads(v) for v in values] == [
        [{"Event": [json.loads(e.record)], "EventTime": e.event_time}] for e in events
    ]


async def test_stream_xadd_with_fields_and_maxlen(tmp_path: Path, shared: Redis) -> None:
    key = unique(shared, "stream")
    events = [minio_event("b", f"k{n}", n) for n in range(300)]
    config = env(URL=SHARED, KEY=key, MODE="stream", MAXLEN="10", BATCH_SIZE="50")
    async with asyncio.timeout(30), pipeline(tmp_path, config) as pipe:
        await pipe.append(events)
        await pipe.settled()
    entries: Any = await shared.xrange(key)
    # MAXLEN ~ trims whole nodes (100 entries): far fewer than 300 remain, the newest last
    assert 10 <= len(entries) < 300
    tail = events[-len(entries) :]
    assert [f[b"event-id"].decode() for _, f in entries] == [e.event_id for e in tail]
    assert [f[b"event-name"] for _, f in entries] == [b"s3:ObjectCreated:Put"] * len(entries)
    assert [json.loads(f[b"payload"]) for _, f in entries] == [minio_envelope(e) for e in tail]


async def test_wrong_key_type_is_refused_at_start_and_per_event(
    tmp_path: Path, shared: Redis
) -> None:
    key = unique(shared, "wrongtype")
    await shared.set(key, "a string")
    async with asyncio.timeout(20):
        config = env(URL=SHARED, KEY=key, MODE="stream")
        async with pipeline(tmp_path / "fixed", config) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
        with pytest.raises(Permanent, match="holds a string, but MODE=stream needs a stream"):
            await _started(config)
        # a templated key can only be checked per event: that event is dead-lettered
        good = unique(shared, "wrongtype-ok")
        prefix = key.rsplit(":", 1)[0]
        await shared.set(f"{prefix}:bad", "x")
        shared.made.append(f"{prefix}:bad")  # type: ignore[attr-defined]
        config = env(URL=SHARED, KEY=prefix + ":{bucket}", MODE="stream", CONCURRENCY="1")
        good_bucket = good.rsplit(":", 1)[1]
        shared.made.append(f"{prefix}:{good_bucket}")  # type: ignore[attr-defined]
        async with pipeline(tmp_path / "templated", config) as pipe:
            await pipe.append([minio_event(good_bucket, "k1", 1), minio_event("bad", "k2", 2),
                               minio_event(good_bucket, "k3", 3)])  # fmt: skip
            await pipe.settled()
            dead = await pipe.dead_letters()
    assert len(dead) == 1 and "wrong type" in dead[0][1]
    assert await shared.xlen(f"{prefix}:{good_bucket}") == 2


async def test_an_object_the_acl_refuses_is_parked_and_every_object_keeps_its_order(
    tmp_path: Path, shared: Redis
) -> None:
    """The sink logs in as an ACL user that may not publish to one object's delete channel
    (CHANNEL `<prefix>:{bucket}:{event}`, the object alone in its bucket): Redis answers
    NOPERM to those PUBLISHes only, in the middle of a pipelined batch of many objects.
    NOPERM is retryable, so the object is parked while the others are delivered, and the
    events of it the server took after the refused one are sent again behind it once the
    ACL allows the channel. One subscriber on every channel sees the PUBLISHes in the order
    the server took them."""
    prefix = f"relay-test:{uuid.uuid4().hex[:12]}"
    user, password = f"relay-test-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    await shared.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "+@all", "resetchannels",
        f"&{prefix}:open:*", f"&{prefix}:held:s3:ObjectCreated:*",
    )  # fmt: skip
    pubsub = shared.pubsub()
    await pubsub.psubscribe(prefix + ":*")
    await pubsub.get_message(timeout=5)  # the psubscribe confirmation
    got: list[str] = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                got.append(json.loads(message["data"])["id"])

    events = []
    for n in range(60):
        if n % 5 == 2:  # the held object: puts, and now and then a delete
            kind = "s3:ObjectRemoved:Delete" if n % 15 == 7 else "s3:ObjectCreated:Put"
            events.append(minio_event("held", "obj", n, kind))
        else:
            kind = "s3:ObjectRemoved:Delete" if n % 7 == 6 else "s3:ObjectCreated:Put"
            events.append(minio_event("open", f"k{n % 4}", n, kind))
    held = [e.event_id for e in events if e.bucket == "held"]
    refused = [e.event_id for e in events if e.bucket == "held" and "Removed" in e.event_name]
    others = {e.event_id for e in events if e.bucket != "held"}
    config = env(URL=f"redis://{user}:{password}@127.0.0.1:6379/0", MODE="publish",
                 CHANNEL=prefix + ":{bucket}:{event}", FORMAT="cloudevents")  # fmt: skip
    listener = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(60), pipeline(tmp_path, config, start=False) as pipe:
            name = pipe.sink.name
            before = resends(name)
            await pipe.append(events)  # one pipelined batch: the refused event has followers
            pipe.start()
            await eventually(lambda: others <= set(got), timeout=20)
            await eventually(lambda: parked(pipe, name), timeout=10)
            assert not set(refused) & set(got)
            await shared.execute_command("ACL", "SETUSER", user, f"&{prefix}:held:*")
            await pipe.settled()
            assert await pipe.dead_letters() == []
            await eventually(lambda: set(held) <= set(got), timeout=10)
    finally:
        listener.cancel()
        await pubsub.aclose()
        await shared.execute_command("ACL", "DELUSER", user)
    assert set(got) == {e.event_id for e in events}
    for obj in {(e.bucket, e.key) for e in events}:
        ids = [e.event_id for e in events if (e.bucket, e.key) == obj]
        assert last_occurrence_order(got, ids) == ids, obj
    twice = len(got) - len(set(got))
    assert twice > 0 and resends(name) - before == twice


def last_occurrence_order(received: list[str], ids: list[str]) -> list[str]:
    """`ids` in the order their last copies reached the target (a resend repeats one)."""
    last = {event_id: position for position, event_id in enumerate(received)}
    return sorted(ids, key=lambda event_id: last[event_id])


async def parked(pipe: Pipeline, sink: str) -> int:
    return await pipe.parked()


def resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


async def _started(config: dict[str, str]) -> None:
    specs, _ = load_sinks(config, sinks.declared_options())
    sink = sinks.create(specs[0])
    try:
        await sink.start()
    finally:
        await sink.close()


# -- private servers ---------------------------------------------------------------------------


async def test_outage_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}"
        reader = Redis.from_url(url, socket_timeout=2)
        events = [minio_event("b", f"k{n % 4}", n) for n in range(60)]
        config = env(URL=url, KEY="events", MODE="stream", CONCURRENCY="1")
        async with asyncio.timeout(50), pipeline(tmp_path, config) as pipe:
            await pipe.append(events[:20])
            await pipe.settled()
            trickle = asyncio.create_task(_trickle(pipe, events[20:40]))
            await asyncio.to_thread(server.stop)
            await trickle
            await pipe.append(events[40:])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            await asyncio.to_thread(server.start)  # same port, its AOF brings the data back
            await pipe.settled(timeout=30)
            assert pipe.dispatcher.up is True
            assert await pipe.dead_letters() == []
        entries: Any = await reader.xrange("events")
        await reader.aclose()
    ids = [f[b"event-id"].decode() for _, f in entries]
    # at-least-once: a pipeline whose reply was lost is sent again; the event-id field is
    # what readers dedupe on, and first occurrences keep the relay's order
    assert list(dict.fromkeys(ids)) == [e.event_id for e in events]


async def _trickle(pipe: object, events: list[Event]) -> None:
    for event in events:
        await pipe.append([event])  # type: ignore[attr-defined]


async def test_server_down_at_start_then_delivers_without_restart(tmp_path: Path) -> None:
    with redis_server(tmp_path, start=False) as server:
        url = f"redis://127.0.0.1:{server.port}"
        async with (
            asyncio.timeout(30),
            pipeline(tmp_path, env(URL=url, KEY="q", MODE="access")) as pipe,
        ):
            await pipe.append([minio_event("b", f"k{n}", n) for n in range(3)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            await asyncio.to_thread(server.start)
            await pipe.settled(timeout=20)
            assert pipe.dispatcher.up is True
        reader = Redis.from_url(url)
        assert await reader.llen("q") == 3
        await reader.aclose()


async def test_password_in_url_and_a_wrong_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server(tmp_path, password="s3cret-pw") as server:
        good = env(URL=f"redis://:s3cret-pw@127.0.0.1:{server.port}/2", KEY="k", MODE="access")
        async with asyncio.timeout(20), pipeline(tmp_path, good) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()
        reader = Redis(port=server.port, password="s3cret-pw", db=2)
        assert await reader.llen("k") == 1
        await reader.aclose()
        wrong = env(ADDRESS=f"127.0.0.1:{server.port}", PASSWORD="not-it-pw", KEY="k",
                    MODE="access")  # fmt: skip
        with pytest.raises(Retryable, match="refused") as caught:
            await asyncio.wait_for(_started(wrong), 10)
        assert "not-it-pw" not in _redacted(wrong, str(caught.value))
        # what the relay logs and shows of it: through the one redaction
        async with asyncio.timeout(20), pipeline(tmp_path / "wrong", wrong) as pipe:
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            health = await pipe.sink.health()
        assert not health.ok and "refused" in health.detail
        assert "not-it-pw" not in _redacted(wrong, health.detail)
        down = [r for r in caplog.records if r.getMessage() == "sink down"]
        assert down and all("not-it-pw" not in r.error for r in down)  # type: ignore[attr-defined]
        missing = env(ADDRESS=f"127.0.0.1:{server.port}", KEY="k", MODE="access")
        with pytest.raises(Retryable, match="Authentication required"):
            await asyncio.wait_for(_started(missing), 10)


def _redacted(config: dict[str, str], text: str) -> str:
    specs, _ = load_sinks(config, sinks.declared_options())
    return redact.for_spec(specs[0])(text)


async def test_hung_server_times_out_then_recovers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}"
        config = env(URL=url, KEY="q", MODE="access", TIMEOUT="500ms")
        async with asyncio.timeout(30), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", "k1", 1)])
            await pipe.settled()
            server.pause()
            await pipe.append([minio_event("b", "k2", 2)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            server.resume()
            await pipe.settled(timeout=20)
        reader = Redis.from_url(url)
        values = await reader.lrange("q", 0, -1)
        await reader.aclose()
    assert [json.loads(v)[0]["Event"][0]["s3"]["object"]["key"] for v in values][:2] == ["k1", "k2"]


async def test_mutual_tls(tmp_path: Path) -> None:
    tls = await asyncio.to_thread(tls_files, tmp_path / "tls")
    with redis_server(tmp_path, tls=tls) as server:
        files = {"TLS_CA": str(tls.ca), "TLS_CLIENT_CERT": str(tls.client_cert),
                 "TLS_CLIENT_KEY": str(tls.client_key)}  # fmt: skip
        config = env(URL=f"rediss://127.0.0.1:{server.port}", KEY="q", MODE="access", **files)
        async with asyncio.timeout(20), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()
            assert pipe.dispatcher.up is True
        reader = Redis(port=server.port, ssl=True, ssl_ca_certs=str(tls.ca),
                       ssl_certfile=str(tls.client_cert), ssl_keyfile=str(tls.client_key))  # fmt: skip
        assert await reader.llen("q") == 1
        await reader.aclose()
        # MinIO's ADDRESS form turns TLS on when TLS files are given
        minio = env("MINIO", "", ADDRESS=f"127.0.0.1:{server.port}", KEY="q", FORMAT="access",
                    **files)  # fmt: skip
        await asyncio.wait_for(_started(minio), 10)


def test_check_shows_the_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """URL is not a secret key (most hold no password), so `relay check` prints it: with
    the password masked, also in the refusal it reports."""
    require_server(6379, "Redis", START_SHARED)
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    for variable, value in env(URL="redis://relay:hunter2-pw@127.0.0.1:6379/0").items():
        monkeypatch.setenv(variable, value)
    assert cli.main(["check"]) == 1  # no such user: refused
    out = capsys.readouterr().out
    assert "url = redis://***@127.0.0.1:6379/0" in out and "reachable: NO" in out
    assert "hunter2-pw" not in out


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"URL": SHARED, "ADDRESS": "h:1"}, "set one of them"),
        ({}, "URL_T: required"),
        ({"URL": "http://h:1"}, "is not redis://"),
        ({"URL": SHARED, "MODE": "stream"}, "KEY_T: required with MODE=stream"),
        ({"URL": SHARED, "MODE": "access", "FORMAT": "namespace"}, "disagree"),
        ({"URL": SHARED, "MODE": "access", "KEY": "k", "FORMAT": "raw"}, "publish and stream"),
        ({"URL": SHARED, "TLS_CA": "/ca.pem"}, "use rediss://"),
        ({"URL": SHARED, "CHANNEL": "c.{object}"}, "unknown placeholder"),
        ({"URL": "redis://u:hunter2@h:1", "PASSWORD": "other"}, "differ"),
    ],
)
def test_config_errors_name_the_variable(keys: dict[str, str], message: str) -> None:
    specs, _ = load_sinks(env(**keys), sinks.declared_options())
    with pytest.raises(ConfigError, match=message) as caught:
        sinks.create(specs[0])
    assert "hunter2" not in str(caught.value)
