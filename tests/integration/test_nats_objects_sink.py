"""The nats_objects sink against real JetStream object stores: the machine's NATS (4222)
and a private nats-server for an outage, driven by the real dispatcher and log. Objects are
read back by an independent connection; nats-py checks each against the SHA-256 digest the
store keeps, and the test checks that digest against the bytes the relay meant to write."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from relay import sinks
from relay.audit import verify
from relay.config import load_sinks
from relay.queue.log import LogEntry
from relay.sinks import auditlog
from tests.support.pipeline import minio_event, pipeline
from tests.support.servers import (
    PrivateServer,
    nats_server,
    nats_server_with_config,
    require_server,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

SHARED = "nats://127.0.0.1:4222"
START_SHARED = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)


def env(address: str, bucket: str, **extra: str) -> dict[str, str]:
    values = {"ENABLE": "on", "ADDRESS": address, "BUCKET": bucket, "MAX_OBJECT_AGE": "0",
              "BACKOFF_MAX": "300ms", "TIMEOUT": "2s", **extra}  # fmt: skip
    return {f"RUSTFS_NOTIFY_NATS_OBJECTS_{k}_T": v for k, v in values.items()}


def digest(body: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()


@pytest.fixture
async def shared() -> AsyncIterator[NatsClient]:
    require_server(4222, "NATS (nats-server -js)", START_SHARED)
    nc = await nats.connect(SHARED, connect_timeout=5, allow_reconnect=False)
    yield nc
    await nc.close()


@pytest.fixture
async def bucket(shared: NatsClient) -> AsyncIterator[str]:
    """A name unique to the run; the object store (created by the sink) is deleted after."""
    name = f"relay-audit-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(NotFoundError):
        await shared.jetstream().delete_object_store(name)


async def read_all(store: ObjectStore) -> dict[str, tuple[bytes, str]]:
    """name → (bytes, stored digest); nats-py raises if the bytes do not match the digest."""
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:
        return {}
    out = {}
    for info in infos:
        got = await store.get(info.name)
        out[info.name] = (bytes(got.data or b""), str(got.info.digest))
    return out


async def test_batches_become_objects_named_and_digested_as_written(
    tmp_path: Path, shared: NatsClient, bucket: str
) -> None:
    events = [minio_event("photos" if n % 2 else "docs", f"dir/k {n}.txt", n) for n in range(24)]
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, env(SHARED, bucket, COMPRESSION="gzip"), start=False) as pipe:
            await pipe.append(events)  # all of them in the sink's first round
            pipe.start()
            await pipe.settled()
            entries = await asyncio.to_thread(pipe.log.entries_after, 0, 100)
        store = await shared.jetstream().object_store(bucket)  # created by the sink
        found = await read_all(store)
    expected = {o.name: o.body for o in auditlog.batch_objects(entries, "audit", "gzip")}
    assert sorted(found) == sorted(expected)
    assert sorted(n.split("/")[1] for n in found) == ["docs", "photos"]
    for name, (body, stored) in found.items():
        assert body == expected[name] and stored == digest(body)
        assert name.startswith("audit/") and name.endswith(".ndjson.gz")
        parsed = auditlog.parse_name(name)
        assert parsed is not None
        got = [json.loads(line) for line in gzip.decompress(body).splitlines()]
        assert [g["seq"] for g in got] == [
            e.seq for e in entries if e.event.bucket == parsed.bucket
        ]
        assert (got[0]["seq"], got[-1]["seq"]) == (parsed.first_seq, parsed.last_seq)
    info = await shared.jetstream().stream_info(f"OBJ_{bucket}")
    assert info.config.storage == "file"


async def test_writing_a_batch_again_replaces_its_object(shared: NatsClient, bucket: str) -> None:
    """The same batch through a second sink (a restarted relay, which no longer knows the
    first wrote it): the same name, replaced, no second copy."""
    specs, _ = load_sinks(env(SHARED, bucket, PREFIX="trail/relay"), sinks.declared_options())
    first_sink, second_sink = sinks.create(specs[0]), sinks.create(specs[0])
    t0 = time.time()
    batch = [LogEntry(s, t0, minio_event("photos", f"k{s}", s)) for s in range(7, 12)]
    try:
        async with asyncio.timeout(30):
            await first_sink.start()
            assert await first_sink.send_batch(batch) == [None] * 5  # type: ignore[attr-defined]
            store = await shared.jetstream().object_store(bucket)
            first = await read_all(store)
            await second_sink.start()
            assert await second_sink.send_batch(batch) == [None] * 5  # type: ignore[attr-defined]
            again = await read_all(store)
            state = (await shared.jetstream().stream_info(f"OBJ_{bucket}")).state
    finally:
        await first_sink.close()
        await second_sink.close()
    assert again == first and len(first) == 1
    assert next(iter(first)).startswith("trail/relay/photos/")
    assert state.messages == 2  # one chunk and one meta: the first upload's chunk was purged


async def test_verify_reads_the_object_store(
    tmp_path: Path, shared: NatsClient, bucket: str
) -> None:
    config = env(SHARED, bucket)
    spec = load_sinks(config, sinks.declared_options())[0][0]
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            since = time.time() - 1
            for n in range(6):
                await pipe.append([minio_event("photos", f"k{n}", n)])
            await pipe.settled()
            ok = await verify(spec, sinks.create(spec), pipe.log, lambda e: True,  # type: ignore[arg-type]
                              since, time.time() + 1)  # fmt: skip
            store = await shared.jetstream().object_store(bucket)
            victim = sorted(await read_all(store))[0]
            await store.delete(victim)
            gone = await verify(spec, sinks.create(spec), pipe.log, lambda e: True,  # type: ignore[arg-type]
                                since, time.time() + 1)  # fmt: skip
    assert ok.ok and ok.present == 6, ok.render()
    assert not gone.ok and gone.missing and gone.present + len(gone.missing) == 6


@pytest.mark.parametrize("damage", ["altered", "truncated"])
async def test_verify_reports_an_object_whose_bytes_no_longer_match_its_digest(
    tmp_path: Path, shared: NatsClient, bucket: str, damage: str
) -> None:
    """The object store keeps each object's SHA-256 digest in its metadata: an object whose
    chunk was rewritten behind the store's back (one byte changed, or cut short) is read
    back as damaged and `relay audit verify` reports it, with its events missing."""
    config = env(SHARED, bucket)
    spec = load_sinks(config, sinks.declared_options())[0][0]
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            since = time.time() - 1
            await pipe.append([minio_event("photos", f"k{n}", n) for n in range(4)])
            await pipe.settled()
            js = shared.jetstream()
            store = await js.object_store(bucket)
            (victim,) = await read_all(store)
            info = await store.get_info(victim)
            chunk = f"$O.{bucket}.C.{info.nuid}"
            body = (await js.get_last_msg(f"OBJ_{bucket}", chunk)).data or b""
            await js.purge_stream(f"OBJ_{bucket}", subject=chunk)
            tampered = body[:-1] + bytes([body[-1] ^ 1]) if damage == "altered" else body[:-20]
            await js.publish(chunk, tampered, stream=f"OBJ_{bucket}")
            report = await verify(spec, sinks.create(spec), pipe.log, lambda e: True,  # type: ignore[arg-type]
                                  since, time.time() + 1)  # fmt: skip
    assert not report.ok and report.present == 0, report.render()
    assert any(victim in line for line in report.unreadable), report.render()


async def test_an_outage_of_the_server_keeps_events_waiting(tmp_path: Path) -> None:
    with nats_server(tmp_path) as server:
        url = f"nats://127.0.0.1:{server.port}"
        bucket = f"relay-audit-{uuid.uuid4().hex[:8]}"
        async with asyncio.timeout(45), pipeline(tmp_path, env(url, bucket)) as pipe:
            await pipe.append([minio_event("photos", f"a{n}", n) for n in range(5)])
            await pipe.settled()
            await asyncio.to_thread(server.stop)
            for n in range(5, 15):
                await pipe.append([minio_event("photos", f"b{n}", n)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            assert await pipe.dead_letters() == []
            await asyncio.to_thread(server.start)
            await pipe.settled(timeout=30)
            entries = await asyncio.to_thread(pipe.log.entries_after, 0, 100)
        reader = await nats.connect(url, connect_timeout=5)
        try:
            found = await read_all(await reader.jetstream().object_store(bucket))
        finally:
            await reader.close()
    seqs = sorted(json.loads(line)["seq"] for body, _ in found.values()
                  for line in body.splitlines())  # fmt: skip
    assert seqs == [e.seq for e in entries]  # every event, each once


PERMISSIONS = """
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [ {{ user: "relay", password: "objects-pw", permissions: {{ publish: {{ {rules} }} }} }} ]
}}
"""


def permissions(server: PrivateServer, deny: str = "") -> None:
    """Write the server's configuration, publishes to `deny` refused, and have it reloaded."""
    rules = 'allow: [">"]' + (f', deny: ["{deny}"]' if deny else "")
    text = PERMISSIONS.format(port=server.port, store=server.workdir / "js", rules=rules)
    (server.workdir / "server.conf").write_text(text)
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)


def reloads(server: PrivateServer) -> int:
    return (server.workdir / "nats-server.log").read_text().count("Reloaded server configuration")


async def test_one_object_refused_waits_while_the_others_are_written_once(tmp_path: Path) -> None:
    """The layer's acceptance on the object store. The store cannot refuse one source
    bucket: an object's chunks go to random subjects and its name is hashed into its meta
    subject. So the server refuses the meta subject of exactly one object: the first
    batch's `photos` object (its name follows from the batch). Its events fail while the
    other buckets' objects are written; the photos objects' events wait (parked), the first
    of each retried alone into that same object. Once the server takes it, every event is in
    the store once, each object's lines in seq order, nothing written twice."""
    store = f"relay-order-{uuid.uuid4().hex[:8]}"
    everything = PERMISSIONS.replace("{rules}", 'allow: [">"]')
    buckets = ("docs", "photos", "media")
    events = [minio_event(buckets[n % 3], f"k{n % 4}", n) for n in range(1, 61)]
    with nats_server_with_config(tmp_path, everything) as server:
        url = f"nats://127.0.0.1:{server.port}"
        creds = {"USERNAME": "relay", "PASSWORD": "objects-pw", "BATCH_SIZE": "20",
                 "TIMEOUT": "1s"}  # fmt: skip
        async with (
            asyncio.timeout(90),
            pipeline(tmp_path, env(url, store, **creds), start=False) as pipe,
        ):
            await pipe.append(events)
            entries = await asyncio.to_thread(pipe.log.entries_after, 0, 100)
            first = next(o for o in auditlog.batch_objects(entries[:20], "audit", "none")
                         if o.bucket == "photos")  # fmt: skip
            meta = base64.urlsafe_b64encode(first.name.encode()).decode()
            reloaded = reloads(server)
            permissions(server, deny=f"$O.{store}.M.{meta}")
            await eventually(lambda: reloads(server) > reloaded, timeout=10)
            running = asyncio.create_task(pipe.dispatcher.run())
            reader = await nats.connect(url, user="relay", password="objects-pw")
            try:
                others = [e.seq for e in entries if e.event.bucket != "photos"]

                async def others_written() -> dict[str, tuple[bytes, str]] | None:
                    try:
                        found = await read_all(await reader.jetstream().object_store(store))
                    except NotFoundError:
                        return None
                    return found if set(others) <= set(seqs_in(found)) else None

                while_refused = await eventually(others_written, timeout=30)
                photos = sum(1 for e in entries if e.event.bucket == "photos")

                async def photos_parked() -> bool:
                    return await pipe.parked() == photos

                await eventually(photos_parked, timeout=30)
                reloaded = reloads(server)
                permissions(server)
                await eventually(lambda: reloads(server) > reloaded, timeout=10)
                await pipe.settled(timeout=30)
                assert await pipe.dead_letters() == []
                found = await read_all(await reader.jetstream().object_store(store))
            finally:
                pipe.dispatcher.stop()
                await running
                await reader.close()
    assert first.name not in while_refused
    assert first.name in found and sum("/photos/" in name for name in found) >= 2
    assert seqs_in(found) == [e.seq for e in entries]  # every event, each once
    for name, (body, _) in found.items():
        got = [json.loads(line)["seq"] for line in body.splitlines()]
        parsed = auditlog.parse_name(name)
        assert parsed is not None and got == sorted(got)
        assert (parsed.first_seq, parsed.last_seq) == (got[0], got[-1])


def seqs_in(found: dict[str, tuple[bytes, str]]) -> list[int]:
    return sorted(json.loads(line)["seq"] for body, _ in found.values()
                  for line in body.splitlines())  # fmt: skip
