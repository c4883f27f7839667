"""The audit_bucket sink against a real Ceph RGW (16.2, tests/support/ceph.py), driven by the
real dispatcher and log (tests/support/pipeline.py), or by `relay serve` for `relay audit
verify`. Every object is read back with the independent SigV4 client of the `s3` fixture.

A TCP proxy of this file stands between the sink and RGW where a test needs to see the
requests (single-part PUT, no checksum headers), to cut RGW off (an outage: the port
refuses connections) or to lose RGW's answers (a PUT that succeeded but was reported
failed). The session's cluster itself is never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from relay import metrics, sinks
from relay.audit import verify
from relay.config import load_sinks
from relay.events import Event, parse_body
from relay.queue import stats
from relay.queue.log import LogEntry
from relay.rules import Rule
from relay.sinks import auditlog
from relay.sinks.base import Retryable
from tests.support.bodies import minio_body
from tests.support.ceph import S3, Ceph
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("suite_timer")]

HOST = "127.0.0.1"
SINK = "audit_bucket:trail"
V = "RUSTFS_NOTIFY_AUDIT_BUCKET_"


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def env(endpoint: str, bucket: str, ceph: Ceph, **extra: str) -> dict[str, str]:
    values = {
        "ENABLE": "on", "ENDPOINT": endpoint, "ALLOW_HTTP": "on", "BUCKET": bucket,
        "ACCESS_KEY": ceph.access_key, "SECRET_KEY": ceph.secret_key,
        "MAX_OBJECT_AGE": "0", "BACKOFF_MAX": "300ms", "TIMEOUT": "3s", **extra,
    }  # fmt: skip
    return {f"{V}{k}_TRAIL": v for k, v in values.items()}


def event_by(principal: str, bucket: str, key: str, n: int) -> Event:
    body = json.loads(minio_body(bucket, key, n))
    body["Records"][0]["userIdentity"]["principalId"] = principal
    return parse_body(json.dumps(body).encode(), {}, "test").events[0]


async def objects(s3: S3, bucket: str) -> dict[str, bytes]:
    return {k: (await s3.request("GET", bucket, k)).body for k in await s3.list_keys(bucket)}


def lines(body: bytes) -> list[tuple[dict[str, object], bytes]]:
    """Each line parsed, with its `record` exactly as written."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    assert body.endswith(b"\n")
    out = []
    for raw in body.split(b"\n")[:-1]:
        at = raw.index(b',"record":')  # the first: field values escape their quotes
        out.append((json.loads(raw), raw[at + len(b',"record":') : -1]))
    return out


def seqs_of(found: dict[str, bytes]) -> list[int]:
    return sorted(int(fields["seq"]) for body in found.values() for fields, _ in lines(body))  # type: ignore[call-overload]


async def log_entries(pipe: Pipeline) -> list[LogEntry]:
    return await asyncio.to_thread(pipe.log.entries_after, 0, 10_000)


async def retry_errors(pipe: Pipeline) -> list[str]:
    rows = await pipe.log.read(lambda c: c.execute("SELECT last_error FROM retries").fetchall())
    return [r[0] for r in rows]


# -- a TCP proxy in front of RGW ----------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Proxy:
    """Forwards 127.0.0.1:port to RGW. `stop()` closes the port (connections refused, open
    ones cut), `start()` reopens it. `requests` are the HTTP request heads it forwarded;
    with `lose_answers`, RGW's answers never reach the client (the PUT happened, the client
    sees a dropped connection)."""

    target: int
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    lose_answers: bool = False
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._requests(reader, up_writer), self._answers(up_reader, writer)
            )
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self.writers.discard(w)

    async def _requests(self, reader: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for h in header_lines:
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.requests.append(Request(method, target, headers))
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                out.write(head + body)
                await out.drain()

    async def _answers(self, reader: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.lose_answers:
                    out.transport.abort()
                    return
                out.write(data)
                await out.drain()
        out.transport.abort()


@pytest.fixture
async def proxy(ceph: Ceph) -> AsyncIterator[Proxy]:
    p = Proxy(URL(ceph.endpoint).port or 80)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def bucket(s3: S3) -> str:
    name = unique("trail")
    await s3.create_bucket(name)
    return name


# -- content, names, requests -------------------------------------------------------------------


async def test_each_bucket_of_a_batch_becomes_one_ndjson_object(
    tmp_path: Path, ceph: Ceph, s3: S3, proxy: Proxy, bucket: str
) -> None:
    events = [
        minio_event("photos" if n % 3 else "docs", f"dir/ key+{n} ü.txt", n) for n in range(1, 13)
    ]
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, env(proxy.url, bucket, ceph)) as pipe:
            await pipe.append(events)
            await pipe.settled()
            entries = await log_entries(pipe)
        found = await objects(s3, bucket)
    by_seq = {e.seq: e for e in entries}
    first = {b: min(e.seq for e in entries if e.event.bucket == b) for b in ("photos", "docs")}
    last = {b: max(e.seq for e in entries if e.event.bucket == b) for b in ("photos", "docs")}
    names = {b: auditlog.object_name("audit", b, by_seq[first[b]], last[b], "none") for b in first}
    assert sorted(found) == sorted(names.values())
    assert names["docs"].startswith("audit/docs/") and names["docs"].endswith(".ndjson")
    for b, name in names.items():
        got = lines(found[name])
        assert [f["seq"] for f, _ in got] == [e.seq for e in entries if e.event.bucket == b]
        for fields, record in got:
            entry = by_seq[int(fields["seq"])]  # type: ignore[call-overload]
            e = entry.event
            assert record == e.record  # byte for byte
            assert fields == {
                "seq": entry.seq, "event_id": e.event_id, "event_name": e.event_name,
                "bucket": b, "key": e.key, "size": e.size, "etag": e.etag,
                "version_id": e.version_id, "sequencer": e.sequencer,
                "event_time": e.event_time, "source": "test", "dialect": "minio",
                "principal": "minioadmin", "source_ip": "10.0.0.7", "user_agent": "test",
                "request_id": e.request_id, "received_at": auditlog.rfc3339(entry.received_at),
                "record": json.loads(e.record),
            }  # fmt: skip
        head = await s3.request("HEAD", bucket, name)
        assert head.headers["Content-Type"] == "application/x-ndjson"
    # what went over the wire: one single-part PUT per object, no SDK checksum headers
    puts = [r for r in proxy.requests if r.method == "PUT"]
    others = {(r.method, r.target) for r in proxy.requests if r.method != "PUT"}
    assert len(puts) == 2 and others <= {("GET", f"/{bucket}/audit/.relay-probe")}  # health
    for r in puts:
        assert "?" not in r.target  # no ?uploads / ?partNumber
        assert "content-length" in r.headers and "transfer-encoding" not in r.headers
        assert not [h for h in r.headers if h.startswith(("x-amz-checksum", "x-amz-sdk-checksum"))]
        assert r.headers["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"
    assert sorted(r.target for r in puts) == sorted(f"/{bucket}/{n}" for n in names.values())


async def test_gzip_objects_are_the_same_bytes_on_every_upload(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    events = [minio_event("photos", f"k{n}", n) for n in range(1, 30)]
    config = env(ceph.endpoint, bucket, ceph, COMPRESSION="gzip", PREFIX="/relay/trail/")
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events)
            await pipe.settled()
            entries = await log_entries(pipe)
        found = await objects(s3, bucket)
    expected = auditlog.batch_objects(entries, "relay/trail", "gzip")
    assert {o.name: o.body for o in expected} == found  # deterministic: same bytes locally
    (name,) = found
    assert name.startswith("relay/trail/photos/") and name.endswith(".ndjson.gz")
    assert [f["event_id"] for f, _ in lines(found[name])] == [e.event_id for e in events]
    assert (await s3.request("HEAD", bucket, name)).headers["Content-Type"] == "application/gzip"


async def test_a_retried_upload_overwrites_itself(
    tmp_path: Path, ceph: Ceph, s3: S3, proxy: Proxy, bucket: str
) -> None:
    """The same batch through a second sink (a restarted relay): one object, the same bytes.
    Then a PUT that RGW stored but whose answer was lost: its events come back to the sink
    one object lane at a time, with newer ones; the first to return brings the object back
    as it was, the newer ones go into a second object, and the last to return are written
    no more. No event is in two objects."""
    specs, _ = load_sinks(
        env(proxy.url, bucket, ceph, COMPRESSION="gzip"), sinks.declared_options()
    )
    made = [sinks.create(specs[0]) for _ in range(3)]
    first_sink, restarted, sink = made
    # a whole second: all five arrival times (t0 + 1.01 … 1.05 s) fall in one second, so both
    # objects' names carry the same HH-MM-SS
    t0 = float(int(time.time()))
    batch = [LogEntry(seq, t0 + seq / 100, minio_event("photos", f"k{seq}", seq))
             for seq in range(101, 106)]  # fmt: skip
    try:
        async with asyncio.timeout(30):
            assert await first_sink.send_batch(batch[:3]) == [None] * 3  # type: ignore[attr-defined]
            first = await objects(s3, bucket)
            assert await restarted.send_batch(batch[:3]) == [None] * 3  # type: ignore[attr-defined]
            assert await objects(s3, bucket) == first and len(first) == 1

            proxy.lose_answers = True
            await s3.delete_object(bucket, next(iter(first)))
            results = await sink.send_batch(batch[:3])  # type: ignore[attr-defined]
            assert all(isinstance(r, Retryable) for r in results), results
            assert await objects(s3, bucket) == first  # RGW did store it
            proxy.lose_answers = False
            assert await sink.send_batch([batch[1], *batch[3:]]) == [None] * 3  # type: ignore[attr-defined]
            puts = sum(r.method == "PUT" for r in proxy.requests)
            assert await sink.send_batch([batch[0], batch[2]]) == [None] * 2  # type: ignore[attr-defined]
            assert sum(r.method == "PUT" for r in proxy.requests) == puts
            found = await objects(s3, bucket)
    finally:
        for each in made:
            await each.close()
    (name_a,) = first
    assert set(found) == {name_a, name_a.replace("-101-103.", "-104-105.")}
    assert found[name_a] == first[name_a]
    assert seqs_of(found) == [101, 102, 103, 104, 105]


# -- when objects are written -------------------------------------------------------------------


async def test_objects_are_cut_at_max_object_bytes_without_waiting_for_their_age(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    events = [minio_event("photos", f"k{n}", n) for n in range(1, 45)]
    record = max(len(e.record) for e in events)  # 8 records fill an object, 9 do not
    config = env(ceph.endpoint, bucket, ceph, MAX_OBJECT_BYTES=str(8 * record),
                 MAX_OBJECT_AGE="60s")  # fmt: skip
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            started = time.monotonic()
            await pipe.append(events)
            found = await eventually(
                lambda: _count(objects(s3, bucket), at_least=5), timeout=15, interval=0.2
            )
            took = time.monotonic() - started
    assert took < 10, f"full objects waited {took:.1f}s (MAX_OBJECT_AGE is 60s)"
    # five full objects at once; the last 4 events wait for company (MAX_OBJECT_AGE)
    assert len(found) == 5
    assert seqs_of(found) == list(range(min(seqs_of(found)), min(seqs_of(found)) + 40))
    for body in found.values():
        records = [r for _, r in lines(body)]
        assert len(records) == 8 and sum(map(len, records)) <= 8 * record


async def test_a_partial_batch_is_written_after_max_object_age(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    events = [minio_event("photos", f"k{n}", n) for n in range(1, 4)]
    config = env(ceph.endpoint, bucket, ceph, MAX_OBJECT_AGE="1s")
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events)
            appended = time.time()
            found = await eventually(lambda: _count(objects(s3, bucket), at_least=1), timeout=10)
            seen = time.time()
            entries = await log_entries(pipe)
    assert len(found) == 1 and seqs_of(found) == [e.seq for e in entries]
    written = entries[0].received_at + 1.0
    assert written - 0.05 <= seen < appended + 5, (appended, written, seen)


async def test_shutdown_writes_the_waiting_batch(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    """MAX_OBJECT_AGE=60s, and the relay stops: the partial batch is written at once, not
    after 60 s and not left for the next start."""
    events = [minio_event("photos", f"k{n}", n) for n in range(1, 4)]
    config = env(ceph.endpoint, bucket, ceph, MAX_OBJECT_AGE="60s")
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events)
            # started (its health probe answered, slow on a busy machine): the batch is read
            await eventually(lambda: pipe.dispatcher.up is True, timeout=10)
            assert await s3.list_keys(bucket) == []  # the batch waits for company
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        found = await objects(s3, bucket)
    assert took < 5 and len(found) == 1 and len(seqs_of(found)) == 3


# -- what is written ----------------------------------------------------------------------------


async def test_events_about_the_audit_bucket_itself_are_not_written(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    events = [minio_event(bucket if n % 2 else "photos", f"k{n}", n) for n in range(1, 9)]
    before = auditlog.SELF_EVENTS[SINK]
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, env(ceph.endpoint, bucket, ceph)) as pipe:
            await pipe.append(events)
            await pipe.settled()
            assert await pipe.dead_letters() == []
        found = await objects(s3, bucket)
    assert len(found) == 1 and next(iter(found)).startswith("audit/photos/")
    assert {f["bucket"] for body in found.values() for f, _ in lines(body)} == {"photos"}
    assert auditlog.SELF_EVENTS[SINK] == before + 4
    _assert_metric("relay_audit_self_events_total", {"sink": SINK}, before + 4)


async def test_unexpected_principals_are_marked_and_counted(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    source = unique("ledger")
    events = [
        event_by("minioadmin", source, "a", 1),
        event_by("AKIAINTRUDER", source, "b", 2),
        event_by("backup-agent", source, "c", 3),
        event_by("AKIAINTRUDER", source, "d", 4),
    ]
    async with asyncio.timeout(30):
        config = {**env(ceph.endpoint, bucket, ceph),
                  "RELAY_EXPECTED_PRINCIPALS": "minioadmin, backup-agent"}  # fmt: skip
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events)
            await pipe.settled()
        found = await objects(s3, bucket)
    got = [f for body in found.values() for f, _ in lines(body)]
    assert [(f["principal"], f["unexpected_principal"]) for f in got] == [
        ("minioadmin", False), ("AKIAINTRUDER", True), ("backup-agent", False),
        ("AKIAINTRUDER", True),
    ]  # fmt: skip
    for f in got:  # the forensic fields are on every line
        assert f["source_ip"] == "10.0.0.7" and f["user_agent"] == "test" and f["request_id"]
    assert auditlog.UNEXPECTED_PRINCIPALS[source] == 2
    _assert_metric("relay_unexpected_principal_total", {"bucket": source}, 2)


# -- failures -----------------------------------------------------------------------------------


async def test_an_outage_keeps_events_waiting_and_loses_or_repeats_none(
    tmp_path: Path, ceph: Ceph, s3: S3, proxy: Proxy, bucket: str
) -> None:
    async with asyncio.timeout(45):
        async with pipeline(tmp_path, env(proxy.url, bucket, ceph)) as pipe:
            await pipe.append([minio_event("photos", f"a{n}", n) for n in range(1, 11)])
            await pipe.settled()
            assert len(await s3.list_keys(bucket)) == 1
            await proxy.stop()  # RGW unreachable: connections refused
            for n in range(11, 31):
                await pipe.append([minio_event("photos" if n % 2 else "docs", f"b{n}", n)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
            errors = await eventually(lambda: retry_errors(pipe), timeout=10)
            assert "PUT audit/" in errors[0]
            await eventually(lambda: _retried(pipe, 3), timeout=15)
            assert len(await s3.list_keys(bucket)) == 1 and await pipe.dead_letters() == []
            await proxy.start()
            await pipe.settled(timeout=20)
            entries = await log_entries(pipe)
        found = await objects(s3, bucket)
    assert seqs_of(found) == [e.seq for e in entries]  # every event, each once
    spans = sorted((auditlog.parse_name(n).first_seq, auditlog.parse_name(n).last_seq)  # type: ignore[union-attr]
                   for n in found)  # fmt: skip
    assert len(spans) >= 3  # docs and photos objects after the outage


async def test_one_source_bucket_refused_waits_while_the_others_are_written_once(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    """The layer's acceptance on the audit bucket. A bucket policy denies PUTs under
    `audit/photos/` (AccessDenied: retried, the events wait), so the first batch's photos
    object fails while its docs and media objects are written; the photos objects' events
    wait (parked) while the other buckets flow, the first of each retried alone, into that
    same object. Then nothing is denied. Every event is in the trail once, each object's
    lines in seq order (the trail's order: every line and name carries the seq)."""
    buckets = ("docs", "photos", "media")
    events = [minio_event(buckets[n % 3], f"k{n % 4}", n) for n in range(1, 61)]
    async with asyncio.timeout(90):
        await _deny(s3, bucket, "audit/photos/*")
        async with pipeline(tmp_path, env(ceph.endpoint, bucket, ceph, BATCH_SIZE="20")) as pipe:
            await pipe.append(events)
            entries = await log_entries(pipe)
            others = [e.seq for e in entries if e.event.bucket != "photos"]
            photos = [e.seq for e in entries if e.event.bucket == "photos"]

            async def others_written() -> dict[str, bytes]:
                found = await objects(s3, bucket)
                return found if seqs_of(found) == others else {}

            while_refused = await eventually(others_written, timeout=20)
            await eventually(lambda: _parked(pipe, len(photos)), timeout=10)
            errors = await retry_errors(pipe)
            failed = {m.group(1) for e in errors for m in [re.search(r"PUT (\S+):", e)] if m}
            assert len(failed) == 1 and all("access denied" in e for e in errors), errors
            (first_object,) = failed
            await s3.request("DELETE", bucket, query={"policy": ""}, expect=(200, 204))
            await pipe.settled(timeout=30)
            assert await pipe.dead_letters() == []
        found = await objects(s3, bucket)
    assert not any(n.startswith("audit/photos/") for n in while_refused)
    assert first_object in found and len([n for n in found if "/photos/" in n]) >= 2
    assert seqs_of(found) == sorted(others + photos)  # every event, each once
    for name, body in found.items():
        got = [int(fields["seq"]) for fields, _ in lines(body)]  # type: ignore[call-overload]
        parsed = auditlog.parse_name(name)
        assert parsed is not None and got == sorted(got)
        assert (parsed.first_seq, parsed.last_seq) == (got[0], got[-1])


async def test_a_missing_bucket_keeps_events_waiting_until_it_exists(
    tmp_path: Path, ceph: Ceph, s3: S3
) -> None:
    bucket = unique("later")
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, env(ceph.endpoint, bucket, ceph)) as pipe:
            await pipe.append([minio_event("photos", f"k{n}", n) for n in range(1, 4)])
            errors = await eventually(lambda: retry_errors(pipe), timeout=10)
            assert "does not exist (NoSuchBucket)" in errors[0], errors
            assert await pipe.dead_letters() == []
            await s3.create_bucket(bucket)
            await pipe.settled(timeout=15)
        assert len(seqs_of(await objects(s3, bucket))) == 3


async def test_least_privilege_a_put_only_user_writes_and_verify_needs_read(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    """The bucket belongs to another user; the relay's user may only PutObject under the
    prefix (the README's policy, first statement). It writes; it cannot list or read. With
    the two read statements added, `relay audit verify` works with the same user."""
    uid, key, secret = unique("relay"), unique("WRITER").upper(), uuid.uuid4().hex
    await asyncio.to_thread(
        ceph.run, "radosgw-admin", "-n", "client.admin", "user", "create", f"--uid={uid}",
        "--display-name=audit writer", f"--access-key={key}", f"--secret-key={secret}",
    )  # fmt: skip
    await _put_policy(s3, bucket, uid, read=False)
    config = env(ceph.endpoint, bucket, ceph, ACCESS_KEY=key, SECRET_KEY=secret)
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, config) as pipe:
            since = time.time() - 1
            await pipe.append([minio_event("photos", f"k{n}", n) for n in range(1, 6)])
            await pipe.settled()
            assert (await pipe.sink.health()).ok
            spec = load_sinks(config, sinks.declared_options())[0][0]
            reader = sinks.create(spec)
            with pytest.raises(Retryable, match=r"access denied .*s3:GetObject and s3:ListBucket"):
                await reader.list_objects("audit")  # type: ignore[attr-defined]
            await reader.close()
            await _put_policy(s3, bucket, uid, read=True)
            report = await verify(spec, sinks.create(spec), pipe.log, lambda e: True,  # type: ignore[arg-type]
                                  since, time.time() + 1)  # fmt: skip
    assert report.ok and report.present == 5 and report.expected == 5, report.render()
    assert len(seqs_of(await objects(s3, bucket))) == 5  # the owner reads: policy grants it


# -- relay audit verify -------------------------------------------------------------------------


async def test_relay_audit_verify_passes_then_fails_on_a_missing_or_repeated_event(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str,
    relay_factory: Callable[..., RelayProcess],
) -> None:  # fmt: skip
    config = env(ceph.endpoint, bucket, ceph, MAX_OBJECT_BYTES="4KiB", MAX_OBJECT_AGE="200ms")
    relay = relay_factory(config)
    async with asyncio.timeout(45):
        await relay.start()
        async with aiohttp.ClientSession() as session:
            for n in range(1, 13):
                body = minio_body("photos" if n % 4 else "docs", f"dir/k {n}.txt", n)
                async with session.post(relay.url + "/minio", data=body) as response:
                    assert response.status == 200
        await eventually(lambda: _count(objects(s3, bucket), at_least=2, lines_=12), timeout=15)
        ok = await asyncio.to_thread(relay.cli, "audit", "verify", "--sink", SINK,
                                     "--since", "10m", check=False)  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "expected in the trail:        12" in ok.stdout
        assert "present exactly once:         12" in ok.stdout and ok.stdout.endswith("OK\n")

        keys = sorted(await s3.list_keys(bucket))
        copy = (await s3.request("GET", bucket, keys[0])).body
        await s3.delete_object(bucket, keys[0])
        gone = await asyncio.to_thread(relay.cli, "audit", "verify", "--sink", SINK,
                                       "--since", "10m", check=False)  # fmt: skip
        assert gone.returncode == 1, gone.stdout + gone.stderr
        n_gone = len(lines(copy))
        assert f"missing:                      {n_gone}" in gone.stdout
        assert "  missing    seq=" in gone.stdout and gone.stdout.endswith("FAILED\n")

        await s3.put_object(bucket, keys[0], copy)
        parsed = auditlog.parse_name(keys[0])
        assert parsed is not None  # the same events once more, under another (valid) name
        twice = keys[0].replace(f"-{parsed.last_seq}.ndjson", f"-{parsed.last_seq + 1000}.ndjson")
        await s3.put_object(bucket, twice, copy)
        repeated = await asyncio.to_thread(relay.cli, "audit", "verify", "--sink", SINK,
                                           "--since", "10m", check=False)  # fmt: skip
        assert repeated.returncode == 1 and f"duplicated:                   {n_gone}" in (
            repeated.stdout
        ), repeated.stdout
        allowed = await asyncio.to_thread(relay.cli, "audit", "verify", "--sink", SINK,
                                          "--since", "10m", "--allow-duplicates",
                                          check=False)  # fmt: skip
        assert allowed.returncode == 0, allowed.stdout
        await relay.stop()


# -- helpers ------------------------------------------------------------------------------------


async def _count(
    listing: Awaitable[dict[str, bytes]], at_least: int, lines_: int = 0
) -> dict[str, bytes]:
    """The objects once there are `at_least` of them holding `lines_` lines, else {}."""
    found = await listing
    if len(found) < at_least or len(seqs_of(found)) < lines_:
        return {}
    return found


async def _deny(s3: S3, bucket: str, what: str) -> None:
    """A bucket policy refusing every PUT of `what` (a name or a `prefix/*`) in `bucket`."""
    statement = {"Sid": "Hold", "Effect": "Deny", "Principal": {"AWS": ["*"]},
                 "Action": ["s3:PutObject"], "Resource": [f"arn:aws:s3:::{bucket}/{what}"]}  # fmt: skip
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    await s3.request("PUT", bucket, query={"policy": ""}, body=json.dumps(policy).encode(),
                     expect=(200, 204))  # fmt: skip


async def _parked(pipe: Pipeline, n: int) -> bool:
    return await pipe.log.read(lambda c: stats.sink_stats(c, pipe.sink.name).parked) == n


async def _retried(pipe: Pipeline, attempts: int) -> bool:
    rows = await pipe.log.read(lambda c: c.execute("SELECT max(attempts) FROM retries").fetchone())
    return bool(rows[0] and rows[0] >= attempts)


async def _put_policy(s3: S3, bucket: str, uid: str, read: bool) -> None:
    """The README's bucket policy for the relay's user `uid` (Ceph names users
    arn:aws:iam:::user/<uid>); `read` adds what `relay audit verify` needs."""
    user = {"AWS": [f"arn:aws:iam:::user/{uid}"]}
    statements: list[dict[str, object]] = [
        {"Sid": "RelayWritesAuditObjects", "Effect": "Allow", "Principal": user,
         "Action": ["s3:PutObject"], "Resource": [f"arn:aws:s3:::{bucket}/audit/*"]},
    ]  # fmt: skip
    if read:
        statements += [
            {"Sid": "RelayReadsAuditObjects", "Effect": "Allow", "Principal": user,
             "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/audit/*"]},
            {"Sid": "RelayListsAuditObjects", "Effect": "Allow", "Principal": user,
             "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
             "Condition": {"StringLike": {"s3:prefix": ["audit/*"]}}},
            # the bucket's owner reads the relay user's objects (Ceph: the writer owns them)
            {"Sid": "OwnerReads", "Effect": "Allow",
             "Principal": {"AWS": ["arn:aws:iam:::user/relay"]},
             "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ]  # fmt: skip
    policy = {"Version": "2012-10-17", "Statement": statements}
    await s3.request("PUT", bucket, query={"policy": ""}, body=json.dumps(policy).encode(),
                     expect=(200, 204))  # fmt: skip


def _assert_metric(name: str, labels: dict[str, str], value: float) -> None:
    """relay/metrics.py carries the audit metrics once the lead has added them."""

    sample = metrics.REGISTRY.get_sample_value(name, labels)
    if hasattr(metrics, "AUDIT_SELF_EVENTS"):
        assert sample == value, (name, labels, sample)


async def test_a_bulk_delete_reaches_the_trail_through_a_rule_on_one_object_naming_all(
    tmp_path: Path, ceph: Ceph, s3: S3, bucket: str
) -> None:
    """MinIO's DeleteObjects audit entry (senders.md §4.5: api.objects[].objectName) of three
    objects, one under the rule's prefix: it reaches the sink, and its line names all three,
    the record an auditor looks for."""
    entry = {
        "version": "1", "deploymentid": "d", "time": "2026-03-04T10:11:12.345Z", "event": "",
        "trigger": "incoming",
        "api": {"name": "DeleteObjects", "bucket": "reports", "status": "OK", "statusCode": 200,
                "objects": [{"objectName": "q1/a.pdf"}, {"objectName": "q2/é.pdf"},
                            {"objectName": "q3/c.csv", "versionId": "v1"}]},
        "remotehost": "198.51.100.7", "requestID": "184A2B7C9D0E0042", "accessKey": "ops",
    }  # fmt: skip
    (bulk,) = parse_body(json.dumps(entry).encode(), {}, "minio").events
    outside = event_by("ops", "reports", "q9/x.pdf", 1)  # no object under q2/: not routed
    rule = Rule("q2", prefix="q2/", sinks=(SINK,))
    async with asyncio.timeout(30):
        async with pipeline(tmp_path, env(ceph.endpoint, bucket, ceph), rules=[rule]) as pipe:
            await pipe.append([bulk, outside])
            await pipe.settled()
        found = await objects(s3, bucket)
    got = [f for body in found.values() for f, _ in lines(body)]
    assert [(f["event_name"], f["objects"]) for f in got] == [
        ("s3:Audit:DeleteObjects", ["q1/a.pdf", "q2/é.pdf", "q3/c.csv"])
    ]
