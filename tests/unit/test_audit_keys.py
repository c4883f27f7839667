"""The audit trail's objects without a server: line shape, names, gzip determinism, the cut
that makes a retried upload rewrite the same object, and the audit sinks' configuration.
The sinks against real servers: tests/e2e/test_audit_bucket_e2e.py (Ceph RGW) and
tests/integration/test_nats_objects_sink.py (NATS JetStream)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path

import obstore.exceptions as obx
import pytest

from relay import sinks
from relay.audit import Report, verify
from relay.config import COMMON_OPTIONS, ConfigError, load_settings, load_sinks, options_of
from relay.queue.log import Log, LogEntry, Settlement
from relay.sinks import audit_bucket, auditlog
from relay.sinks.auditlog import AuditObject, AuditWriter, batch_objects, parse_name
from relay.sinks.base import Permanent, Retryable
from relay.sinks.nats import messages as nats_messages
from relay.sinks.nats import objects as nats_objects
from relay.sinks.nats.connection import NatsConfig
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
    settings = load_settings({"RELAY_EXPECTED_PRINCIPALS": " a, b ,"})
    assert auditlog.expected_principals(settings) == {"a", "b"}
    assert auditlog.expected_principals(load_settings({})) is None


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


class Trail:
    """A `put` for AuditWriter: the objects written, by name; buckets in `failing` refuse."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.failing: dict[str, Exception] = {}

    async def put(self, obj: AuditObject) -> None:
        self.puts.append(obj.name)
        if obj.bucket in self.failing:
            raise self.failing[obj.bucket]
        self.objects[obj.name] = obj.body

    def seqs(self) -> list[int]:
        bodies = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in self.objects.values()]
        return sorted(json.loads(x)["seq"] for body in bodies for x in body.splitlines())


def kinds(results: Sequence[object]) -> list[str | None]:
    return [type(r).__name__ if r else None for r in results]


async def test_writer_results_per_object_written_side_by_side() -> None:
    trail = Trail()
    trail.failing["photos"] = Retryable("503 SlowDown")
    writer = AuditWriter("audit_bucket:t", "audit", "none", 4, None)
    batch = [*entries("photos", [1, 2]), *entries("docs", [3]), *entries("photos", [4])]
    results = await writer.send(batch, trail.put)
    assert kinds(results) == ["Retryable", "Retryable", None, "Retryable"]
    assert list(trail.objects) == ["audit/docs/2026/05/28/20-26-40-3-3.ndjson"]
    assert sorted(trail.puts) == ["audit/docs/2026/05/28/20-26-40-3-3.ndjson",
                                  "audit/photos/2026/05/28/20-26-40-1-4.ndjson"]  # fmt: skip


async def test_a_failed_object_is_written_again_as_it_was_whichever_of_its_events_return() -> None:
    """Delivery retries a failed object's events per object, on their own schedules: the
    first of them to come back brings the whole object back, same name, same bytes (an
    upload reported failed may have been stored: it overwrites itself); the others are then
    in the trail and are not written again."""
    trail = Trail()
    trail.failing["photos"] = Retryable("503 SlowDown")
    writer = AuditWriter("audit_bucket:t", "audit", "gzip", 4, None)
    first = entries("photos", [1, 2, 4])
    await writer.send(first, trail.put)
    failed = batch_objects(first, "audit", "gzip")[0]
    trail.failing.clear()
    # event 2 comes back, with new events of the bucket
    results = await writer.send([first[1], *entries("photos", [6, 7])], trail.put)
    assert results == [None, None, None]
    assert trail.objects[failed.name] == failed.body  # the failed object, as it was
    assert sorted(trail.objects) == [failed.name, "audit/photos/2026/05/28/20-26-40-6-7.ndjson.gz"]
    puts = len(trail.puts)
    assert await writer.send([first[0], first[2]], trail.put) == [None, None]
    assert len(trail.puts) == puts  # 1 and 4 are in the trail already
    assert trail.seqs() == [1, 2, 4, 6, 7]


async def test_an_event_handed_over_again_after_its_object_was_stored_is_not_written() -> None:
    """A resend (a later event acknowledged before an earlier failure of its object) or a
    held cursor's re-read: the trail has the event already, under its object's name."""
    trail = Trail()
    writer = AuditWriter("audit_bucket:t", "audit", "none", 4, None)
    assert await writer.send(entries("photos", [1, 2, 3]), trail.put) == [None] * 3
    again = [*entries("photos", [2, 3]), *entries("photos", [5])]
    assert await writer.send(again, trail.put) == [None] * 3
    assert sorted(trail.objects) == ["audit/photos/2026/05/28/20-26-40-1-3.ndjson",
                                     "audit/photos/2026/05/28/20-26-40-5-5.ndjson"]  # fmt: skip
    assert trail.seqs() == [1, 2, 3, 5]


async def test_a_permanent_failure_is_forgotten_so_a_retry_makes_a_new_object() -> None:
    trail = Trail()
    trail.failing["photos"] = Permanent("400 InvalidArgument")
    writer = AuditWriter("audit_bucket:t", "audit", "none", 4, None)
    results = await writer.send(entries("photos", [1, 2, 3]), trail.put)
    assert kinds(results) == ["Permanent"] * 3 and writer.placed == {}
    trail.failing.clear()
    assert await writer.send(entries("photos", [2, 3]), trail.put) == [None, None]  # dlq retry
    assert list(trail.objects) == ["audit/photos/2026/05/28/20-26-40-2-3.ndjson"]


async def test_the_writer_remembers_a_bounded_number_of_events() -> None:
    trail = Trail()
    writer = AuditWriter("audit_bucket:t", "audit", "none", 4, None, remember=3)
    await writer.send(entries("photos", [1, 2, 3, 4, 5]), trail.put)
    assert list(writer.placed) == [3, 4, 5]
    env = {"RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_T": "on", "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_T": "b",
           "RUSTFS_NOTIFY_AUDIT_BUCKET_MAX_PARKED_T": "100"}  # fmt: skip
    assert auditlog.remembered(spec(env).typed(auditlog.AuditConfig)) == 2 * (100 + 10_000)


async def test_dropped_events_are_delivered_unwritten_and_counted() -> None:
    async def put(obj: AuditObject) -> None:
        raise AssertionError("nothing to write")

    before = auditlog.SELF_EVENTS["audit_bucket:self"]
    writer = AuditWriter("audit_bucket:self", "audit", "none", 4, None)
    results = await writer.send(entries("trail", [1, 2]), put, lambda e: e.event.bucket == "trail")
    assert results == [None, None]
    assert auditlog.SELF_EVENTS["audit_bucket:self"] == before + 2


# -- configuration -----------------------------------------------------------------------------

TYPES = {"audit_bucket": sinks.options(audit_bucket), "nats_objects": sinks.options(nats_objects)}


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
    assert sink.link.servers == ("nats://127.0.0.1:4222",) and sink.prefix == "audit"
    with pytest.raises(ConfigError, match="BUCKET_A"):
        nats_objects.create(spec({**env, "MINIO_NOTIFY_NATS_OBJECTS_BUCKET_A": "a.b"}))


def test_both_nats_sinks_declare_the_connection_keys_alike() -> None:
    connection = [o for o in options_of(NatsConfig) if o not in COMMON_OPTIONS]
    assert [o.key for o in connection][:2] == ["address", "username"]
    for module in (nats_messages, nats_objects):
        declared = {o.key: o for o in sinks.options(module)}
        assert [declared.get(o.key) for o in connection] == connection, module.__name__


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
            return await verify(s, MemoryTrail(objects), log, lambda e: True, since,
                                time.time() + 1, **kw)  # fmt: skip

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
