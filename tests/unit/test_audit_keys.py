"""The audit trail's objects without a server: line shape, names, gzip determinism, the cut
that makes a retried upload rewrite the same object, and the audit sinks' configuration.
The sinks against real servers: tests/e2e/test_audit_bucket_e2e.py (Ceph RGW) and
tests/integration/test_nats_objects_sink.py (NATS JetStream)."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import obstore.exceptions as obx
import pytest

from relay.audit import Report, verify
from relay.config import ConfigError, load_sinks
from relay.queue.log import Log, LogEntry, Settlement
from relay.sinks import audit_bucket, auditlog, nats_objects
from relay.sinks.auditlog import AuditObject, AuditWriter, batch_objects, parse_name
from relay.sinks.base import Permanent, Retryable
from tests.support.pipeline import minio_event

T0 = 1_780_000_000.25  # 2026-05-28T20:26:40.25Z


def entries(bucket: str, seqs: Sequence[int], t0: float = T0) -> list[LogEntry]:
    return [LogEntry(s, t0 + s / 10, minio_event(bucket, f"dir/key {s}.txt", s)) for s in seqs]


def test_a_line_is_the_normalised_fields_then_the_record_byte_for_byte() -> None:
    entry = entries("photos", [7])[0]
    raw = auditlog.line(entry)
    assert b"\n" not in raw
    assert raw.endswith(b',"record":' + entry.event.record + b"}")
    fields = json.loads(raw)
    assert list(fields) == [
        "seq", "event_id", "event_name", "bucket", "key", "size", "etag", "version_id",
        "sequencer", "event_time", "source", "dialect", "principal", "source_ip",
        "user_agent", "request_id", "received_at", "record",
    ]  # fmt: skip
    e = entry.event
    assert fields["seq"] == 7 and fields["event_id"] == e.event_id
    assert (fields["bucket"], fields["key"], fields["size"]) == ("photos", "dir/key 7.txt", 107)
    assert fields["principal"] == "minioadmin" and fields["source_ip"] == "10.0.0.7"
    assert fields["request_id"] == "REQ000000000007" and fields["user_agent"] == "test"
    assert fields["received_at"] == "2026-05-28T20:26:40.950000Z"
    assert fields["record"] == json.loads(e.record)


def test_unexpected_principal_is_marked_only_when_principals_are_configured() -> None:
    entry = entries("photos", [1])[0]
    assert "unexpected_principal" not in json.loads(auditlog.line(entry, None))
    assert (
        json.loads(auditlog.line(entry, frozenset({"minioadmin"})))["unexpected_principal"] is False
    )
    assert json.loads(auditlog.line(entry, frozenset({"backup"})))["unexpected_principal"] is True
    entry.event.principal = None  # lifecycle, replication: nobody's doing
    assert json.loads(auditlog.line(entry, frozenset({"backup"})))["unexpected_principal"] is False
    assert auditlog.expected_principals({"RELAY_EXPECTED_PRINCIPALS": " a, b ,"}) == {"a", "b"}
    assert auditlog.expected_principals({}) is None


def test_a_pretty_printed_record_stays_on_one_line_and_means_the_same() -> None:
    entry = entries("photos", [1])[0]
    pretty = json.dumps(json.loads(entry.event.record), indent=2).encode().replace(b"\n", b"\r\n")
    entry.event.record = pretty
    raw = auditlog.line(entry)
    assert b"\n" not in raw and b"\r" not in raw
    assert json.loads(raw)["record"] == json.loads(pretty)


def test_names_come_from_the_events_and_read_back() -> None:
    objs = batch_objects(entries("photos", [5, 6, 9]), "audit/trail", "none")
    assert [o.name for o in objs] == ["audit/trail/photos/2026/05/28/20-26-40-5-9.ndjson"]
    parsed = parse_name(objs[0].name)
    assert parsed is not None
    assert (parsed.prefix, parsed.bucket, parsed.first_seq, parsed.last_seq, parsed.gzip) == (
        "audit/trail", "photos", 5, 9, False,
    )  # fmt: skip
    assert parsed.time.isoformat() == "2026-05-28T20:26:40+00:00"
    bucketless = entries("photos", [3])  # some audit entries name no bucket
    bucketless[0].event.bucket = ""
    no_prefix = batch_objects(bucketless, "", "gzip")[0].name
    assert no_prefix == "_/2026/05/28/20-26-40-3-3.ndjson.gz"
    assert parse_name(no_prefix) is not None and parse_name("audit/x/notes.txt") is None


def test_one_object_per_bucket_in_order_of_first_event() -> None:
    batch = [*entries("docs", [1]), *entries("photos", [2, 3]), *entries("docs", [4])]
    objs = batch_objects(batch, "audit", "none")
    assert [(o.bucket, o.first_seq, o.last_seq, o.indexes) for o in objs] == [
        ("docs", 1, 4, (0, 3)), ("photos", 2, 3, (1, 2)),
    ]  # fmt: skip
    lines = objs[0].body.decode().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 4] and objs[0].body.endswith(b"\n")
    assert objs[0].content_type == "application/x-ndjson"


def test_gzip_is_deterministic() -> None:
    batch = entries("photos", range(1, 40))
    first = batch_objects(batch, "audit", "gzip")[0]
    again = batch_objects(batch, "audit", "gzip")[0]
    assert first.body == again.body and first.body[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert gzip.decompress(first.body) == batch_objects(batch, "audit", "none")[0].body
    assert first.content_type == "application/gzip"


def test_a_remembered_cut_rebuilds_the_failed_object() -> None:
    batch = entries("photos", [1, 2, 3, 5, 8])
    objs = batch_objects(batch, "audit", "none", cuts={("photos", 1): 3})
    assert [(o.first_seq, o.last_seq) for o in objs] == [(1, 3), (5, 8)]
    assert objs[0].body == batch_objects(batch[:3], "audit", "none")[0].body


async def test_writer_results_per_object_and_retry_writes_the_same_object() -> None:
    written: dict[str, bytes] = {}
    failing = {"photos"}

    async def put(obj: AuditObject) -> None:
        if obj.bucket in failing:
            raise Retryable("503 SlowDown")
        written[obj.name] = obj.body

    writer = AuditWriter("audit_bucket:t", "audit", "none", 4, None)
    batch = [*entries("photos", [1, 2]), *entries("docs", [3]), *entries("photos", [4])]
    results = await writer.send(batch, put)
    assert [type(r).__name__ if r else None for r in results] == [
        "Retryable", "Retryable", None, "Retryable",
    ]  # fmt: skip
    assert list(written) == ["audit/docs/2026/05/28/20-26-40-3-3.ndjson"]
    assert writer.cuts == {("photos", 1): 4}
    # the retry brings more events of the bucket: the failed object is written as it was
    failing.clear()
    retry = [*entries("photos", [1, 2, 4]), *entries("photos", [6, 7])]
    assert await writer.send(retry, put) == [None] * 5
    names = sorted(written)
    assert names[1:] == [
        "audit/photos/2026/05/28/20-26-40-1-4.ndjson",
        "audit/photos/2026/05/28/20-26-40-6-7.ndjson",
    ]
    assert writer.cuts == {}


async def test_writer_stops_a_bucket_at_its_first_failed_object() -> None:
    attempted: list[str] = []

    async def put(obj: AuditObject) -> None:
        attempted.append(obj.name)
        if obj.first_seq == 1:
            raise Permanent("400 InvalidArgument")

    writer = AuditWriter("audit_bucket:t", "audit", "none", 4, None)
    writer.cuts[("photos", 1)] = 2
    results = await writer.send(entries("photos", [1, 2, 3]), put)
    assert len(attempted) == 1
    assert isinstance(results[0], Permanent) and isinstance(results[2], Retryable)
    assert "earlier object" in str(results[2])


async def test_dropped_events_are_delivered_unwritten_and_counted() -> None:
    async def put(obj: AuditObject) -> None:
        raise AssertionError("nothing to write")

    before = auditlog.SELF_EVENTS["audit_bucket:self"]
    writer = AuditWriter("audit_bucket:self", "audit", "none", 4, None)
    results = await writer.send(entries("trail", [1, 2]), put, lambda e: e.event.bucket == "trail")
    assert results == [None, None]
    assert auditlog.SELF_EVENTS["audit_bucket:self"] == before + 2


# -- configuration -----------------------------------------------------------------------------

TYPES = {"audit_bucket": audit_bucket.OPTIONS, "nats_objects": nats_objects.OPTIONS}


def spec(env: dict[str, str]):  # type: ignore[no-untyped-def]
    specs, _ = load_sinks(env, TYPES)
    assert len(specs) == 1
    return specs[0]


def test_audit_bucket_keys_map_onto_the_batch_policy() -> None:
    base = {"RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_T": "on", "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_T": "b"}
    s = spec(base)
    assert (s["batch_bytes"], s["batch_wait"], s["batch_size"]) == (8 * 1024**2, 60.0, 10_000)
    assert (s["prefix"], s["region"], s["compression"], s["virtual_hosted"]) == (
        "audit", "us-east-1", "none", False,
    )  # fmt: skip
    s = spec({**base, "RUSTFS_NOTIFY_AUDIT_BUCKET_MAX_OBJECT_BYTES_T": "64KiB",
              "RUSTFS_NOTIFY_AUDIT_BUCKET_MAX_OBJECT_AGE_T": "1s"})  # fmt: skip
    assert (s["batch_bytes"], s["batch_wait"]) == (64 * 1024, 1.0)
    s = spec({**base, "RUSTFS_NOTIFY_AUDIT_BUCKET_BATCH_WAIT_T": "5s"})
    assert s["batch_wait"] == 5.0
    minio = spec(
        {"MINIO_NOTIFY_AUDIT_BUCKET_ENABLE": "on", "MINIO_NOTIFY_AUDIT_BUCKET_BUCKET": "b"}
    )
    assert minio.name == "audit_bucket:_"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ENDPOINT": "http://rgw:7480"}, "ALLOW_HTTP_T=on"),
        ({"ENDPOINT": "ftp://rgw"}, "not an http(s) URL"),
        ({"ENDPOINT": "https://k:s@rgw"}, "not in the URL"),
        ({"ACCESS_KEY": "abc"}, "SECRET_KEY_T: required"),
        ({"PREFIX": "audit/../x"}, "PREFIX_T"),
        ({"COMPRESSION": "zstd"}, "COMPRESSION_T"),
    ],
)
def test_audit_bucket_configuration_errors_name_the_variable(
    extra: dict[str, str], message: str
) -> None:
    env = {"RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_T": "on", "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_T": "b"}
    env |= {f"RUSTFS_NOTIFY_AUDIT_BUCKET_{k}_T": v for k, v in extra.items()}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        audit_bucket.create(spec(env))


def test_audit_bucket_prefix_is_normalised() -> None:
    env = {"RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_T": "on", "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_T": "b",
           "RUSTFS_NOTIFY_AUDIT_BUCKET_PREFIX_T": "/trail//relay/"}  # fmt: skip
    assert audit_bucket.create(spec(env)).prefix == "trail/relay"


def _s3_error(kind: type[Exception], status: int, code: str) -> Exception:
    return kind(
        f"Error performing PUT http://rgw/b/k in 1ms - Server returned non-2xx status code: "
        f'{status} X: <?xml version="1.0"?><Error><Code>{code}</Code></Error>\n\n'
        "Debug source:\nGeneric { … }"
    )


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        (_s3_error(FileNotFoundError, 404, "NoSuchBucket"), Retryable, "does not exist"),
        (_s3_error(obx.PermissionDeniedError, 403, "AccessDenied"), Retryable,
         "needs s3:PutObject on arn:aws:s3:::b/audit/*"),
        (_s3_error(obx.PermissionDeniedError, 403, "SignatureDoesNotMatch"), Retryable,
         "refused the credentials"),
        (_s3_error(obx.GenericError, 503, "SlowDown"), Retryable, "503"),
        (_s3_error(obx.GenericError, 301, "PermanentRedirect"), Retryable, "301"),
        (_s3_error(obx.GenericError, 400, "AuthorizationHeaderMalformed"), Retryable,
         "check the sink's configuration"),
        (_s3_error(obx.GenericError, 400, "InvalidArgument"), Permanent, "400 InvalidArgument"),
        (obx.GenericError("HTTP error: error sending request"), Retryable, "error sending"),
        (ValueError("Could not parse path"), Permanent, "parse path"),
    ],
)  # fmt: skip
def test_s3_errors_are_classified(error: Exception, kind: type, says: str) -> None:
    env = {"RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_T": "on", "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_T": "b"}
    result = audit_bucket.create(spec(env))._classify(error, "PUT k")
    assert type(result) is kind and says in str(result), result
    assert "Debug source" not in str(result)


def test_nats_objects_takes_the_nats_sinks_connection_keys() -> None:
    env = {"MINIO_NOTIFY_NATS_OBJECTS_ENABLE_A": "on",
           "MINIO_NOTIFY_NATS_OBJECTS_ADDRESS_A": "127.0.0.1:4222",
           "MINIO_NOTIFY_NATS_OBJECTS_BUCKET_A": "relay-audit",
           "MINIO_NOTIFY_NATS_OBJECTS_CERT_AUTHORITY_A": "",
           "MINIO_NOTIFY_NATS_OBJECTS_MAX_OBJECT_AGE_A": "2s"}  # fmt: skip
    s = spec(env)
    assert (s.name, s["batch_wait"], s["tls_ca"]) == ("nats_objects:a", 2.0, "")
    sink = nats_objects.create(s)
    assert sink.servers == ("nats://127.0.0.1:4222",) and sink.prefix == "audit"
    with pytest.raises(ConfigError, match="BUCKET_A"):
        nats_objects.create(spec({**env, "MINIO_NOTIFY_NATS_OBJECTS_BUCKET_A": "a.b"}))


# -- relay audit verify, over a real log and a trail held in memory ----------------------------


class MemoryTrail:
    """A TrailReader (relay/audit.py's own interface) over a dict of objects."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_objects(self, prefix: str) -> list[str]:
        return [n for n in self.objects if n.startswith(prefix + "/")]

    async def read_object(self, name: str) -> bytes:
        return self.objects[name]


async def test_verify_counts_every_way_a_trail_can_be_wrong(tmp_path: Path) -> None:
    name = "audit_bucket:t"
    log = Log(tmp_path / "relay.db")
    log.open()
    try:
        log.set_sinks([name])
        await log.init_cursors([name])
        since = time.time() - 1
        await log.append([minio_event("photos" if n % 2 else "trail", f"k{n}", n)
                          for n in range(1, 13)])  # fmt: skip
        got = await asyncio.to_thread(log.entries_after, 0, 100)
        # the sink took 1..10, the 5th dead-lettered; 11 and 12 are past its cursor; the
        # even ones are about the audit bucket ("trail") itself: taken, never written
        await log.settle(Settlement(name, cursor=got[9].seq, dead=[(got[4].seq, 1, "x")]))
        taken = [e for e in got[:10] if e.seq != got[4].seq and e.event.bucket == "photos"]
        trail = {o.name: o.body for o in batch_objects(taken, "audit", "gzip")}
        env = {"RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_T": "on",
               "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_T": "trail"}  # fmt: skip
        s = spec(env)

        async def check(objects: dict[str, bytes], **kw: bool) -> Report:
            conn = sqlite3.connect(log.path)
            try:
                return await verify(s, MemoryTrail(objects), conn, lambda e: True, since,
                                    time.time() + 1, **kw)  # fmt: skip
            finally:
                conn.close()

        ok = await check(trail)
        assert ok.ok, ok.render()
        counts = (ok.in_range, ok.expected, ok.present, ok.pending, ok.dead, ok.self_events)
        assert counts == (12, 4, 4, 2, 1, 5)
        (obj,) = trail
        plain = gzip.decompress(trail[obj])
        missing = await check({obj: gzip.compress(plain.split(b"\n", 1)[1])})
        assert not missing.ok and [e.seq for e in missing.missing] == [taken[0].seq]
        again = auditlog.object_name("audit", "photos", taken[0], taken[-1].seq + 99, "none")
        twice = await check({**trail, again: plain})
        assert not twice.ok and len(twice.duplicated) == 4
        assert (await check({**trail, again: plain}, allow_duplicates=True)).ok
        changed = plain.replace(b'"size": 101', b'"size": 999', 1)
        assert changed != plain
        altered = await check({obj: gzip.compress(changed)})
        assert not altered.ok and len(altered.altered) == 1 and "FAILED" in altered.render()
        broken = await check({obj: b"not gzip"})
        assert not broken.ok and broken.unreadable and len(broken.missing) == 4
    finally:
        await log.close()
