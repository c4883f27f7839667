"""The relay against a real object store: a Ceph RGW (16.2, tests/support/ceph.py) whose
topics push bucket notifications to `relay serve`, which delivers them to a real HTTP
receiver through its webhook sink. Every expectation is taken from what the S3 client did
(the keys it wrote, the sizes, ETags and version ids S3 answered), never from a fixture.

What Ceph 16.2.15 sends, as these tests pin it down:
- one event per operation: Put, Copy, CompleteMultipartUpload (initiating a multipart
  upload and uploading parts send nothing), Delete, DeleteMarkerCreated;
- keys raw (UTF-8, spaces, `+`, `%`, `?` as written); sizes and ETags on removals too (the
  removed version's); versionId "" on unversioned buckets and on DeleteMarkerCreated;
- user metadata as `x-amz-meta-*` pairs with lower-cased names, beside some request
  headers (`x-amz-date`, ...); tags on Put, Copy and Delete, not on CompleteMultipartUpload.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support.ceph import QUEUE_RUN_SECONDS, S3, Ceph, Written
from tests.support.receiver import Received, Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("suite_timer", "queue_clock")]

TOKEN = "ceph-e2e-token-7d1"
MIB = 1024 * 1024

PUT = "s3:ObjectCreated:Put"
COPY = "s3:ObjectCreated:Copy"
MULTIPART = "s3:ObjectCreated:CompleteMultipartUpload"
DELETE = "s3:ObjectRemoved:Delete"
DELETE_MARKER = "s3:ObjectRemoved:DeleteMarkerCreated"

# Keys a relay could mangle: form-decoding would turn `+` into a space and `%41` into `A`.
AWKWARD_KEYS = (
    "with space.txt",
    "plus+sign.txt",
    "percent%41 and %2F.txt",
    "a/b/c/d/e.txt",
    "ünïcødé/日本語 ファイル.txt",
    "emoji 🐱.bin",
    "query?&=#chars.txt",
    "folder/",  # zero bytes
)


def unique() -> str:
    return uuid.uuid4().hex[:8]


def relay_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_PRIMARY": "500ms",
        **extra,
    }


def push_endpoint(relay: RelayProcess, token: bool = True) -> str:
    # Ceph sends no Authorization header: the token rides in the query string, which Ceph
    # keeps when it POSTs (or the relay trusts RGW's address, RELAY_TRUSTED_NETWORKS).
    return f"{relay.url}/ceph" + (f"?token={TOKEN}" if token else "")


def notification_xml(
    arn: str, config_id: str, events: Iterable[str] = (), filter_xml: str = ""
) -> str:
    event_xml = "".join(f"<Event>{e}</Event>" for e in events)
    return (
        '<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<TopicConfiguration><Id>{config_id}</Id><Topic>{arn}</Topic>{event_xml}{filter_xml}"
        "</TopicConfiguration></NotificationConfiguration>"
    )


ALL_EVENTS = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")


@dataclass(frozen=True)
class Seen:
    """One event, as the receiver got it or as the S3 client's actions predict it."""

    event: str  # canonical name, as the relay names it
    bucket: str
    key: str  # decoded, as the relay gives it in `Key` ("bucket/key")
    size: int
    etag: str
    version_id: str
    metadata: tuple[tuple[str, str], ...] = ()  # the x-amz-meta-* pairs only
    tags: tuple[tuple[str, str], ...] = ()


def expect(
    event: str, bucket: str, written: Written, metadata: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None, version_id: str | None = None,
) -> Seen:  # fmt: skip
    return Seen(
        event, bucket, written.key, written.size, written.etag,
        written.version_id if version_id is None else version_id,
        tuple(sorted((f"x-amz-meta-{k}".lower(), v) for k, v in (metadata or {}).items())),
        tuple(sorted((tags or {}).items())),
    )  # fmt: skip


def seen(received: Received) -> Seen:
    payload = received.json()
    (record,) = payload["Records"]
    assert record["eventSource"] == "ceph:s3", record
    bucket = record["s3"]["bucket"]["name"]
    obj = record["s3"]["object"]
    assert payload["Key"].startswith(bucket + "/"), payload["Key"]
    pairs = obj.get("metadata") or []
    return Seen(
        payload["EventName"],
        bucket,
        payload["Key"][len(bucket) + 1 :],
        int(obj["size"]),
        obj["eTag"],
        obj["versionId"],
        tuple(sorted((m["key"], m["val"]) for m in pairs if m["key"].startswith("x-amz-meta-"))),
        tuple(sorted((t["key"], t["val"]) for t in obj.get("tags") or [])),
    )


def assert_exactly(received: list[Received], expected: list[Seen]) -> None:
    got = Counter(seen(r) for r in received)
    want = Counter(expected)
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"missing {len(missing)}:\n  " + "\n  ".join(map(repr, missing))
        + f"\nunexpected {len(extra)}:\n  " + "\n  ".join(map(repr, extra))
    )  # fmt: skip
    ids = [r.headers["webhook-id"] for r in received]
    assert len(set(ids)) == len(ids), "two deliveries carry the same event id"


async def metrics(relay: RelayProcess) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/metrics") as response:
            return await response.text()


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def settled(relay: RelayProcess, accepted: int, timeout: float = 30.0) -> str:
    """Wait until the relay has accepted `accepted` events and has nothing left to deliver:
    after that, what the receiver holds is final."""

    async def check() -> str | None:
        text = await metrics(relay)
        done = (
            metric_sum(text, "relay_events_received_total") == accepted
            and metric_sum(text, "relay_sink_pending") == 0
        )
        return text if done else None

    return await eventually(check, timeout=timeout, interval=0.1)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Persistent topics and the queue manager's clock


@pytest.fixture(scope="module")
async def queue_clock(ceph: Ceph) -> str:
    """A persistent topic that no bucket uses: the lock radosgw's queue manager takes on its
    queue shows when the manager runs (every ~30 s). Created when the module starts so that
    it is owned by the time the persistent test needs it."""
    name = f"clock-{unique()}"
    async with S3(ceph) as s3:
        await s3.create_topic(
            name, {"push-endpoint": "http://127.0.0.1:9/never", "persistent": "true"}
        )
    return name


async def before_the_next_queue_run(ceph: Ceph, clock: str, room: float) -> None:
    """Return as soon as the queue manager's next run is at least `room` seconds away."""

    async def check() -> bool:
        ran = await asyncio.to_thread(ceph.queue_run_at, clock)
        return ran is not None and time.time() - ran < QUEUE_RUN_SECONDS - room

    await eventually(check, timeout=3 * QUEUE_RUN_SECONDS, interval=0.25)


# ---------------------------------------------------------------------------------------------


async def test_every_event_arrives_once_with_the_key_as_uploaded(
    ceph: Ceph, s3: S3, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    """A non-persistent topic: RGW pushes during the S3 request, so every event is in the
    relay's log by the time the S3 client has its answer."""
    version = await asyncio.to_thread(ceph.run, "ceph", "--version")
    assert " 16.2." in version, version  # the sender these facts are about
    relay = await relay_factory(relay_env(receiver)).start()
    uid = unique()
    arn = await s3.create_topic(
        f"direct-{uid}", {"push-endpoint": push_endpoint(relay), "OpaqueData": "e2e-opaque"}
    )
    plain, versioned = f"plain-{uid}", f"versioned-{uid}"
    await s3.create_bucket(plain)
    await s3.create_bucket(versioned, versioned=True)
    for bucket in (plain, versioned):
        await s3.put_notification(bucket, notification_xml(arn, "to-relay", ALL_EVENTS))

    expected: list[Seen] = []
    meta = {"owner": "alice", "Mixed-Case": "Value  With Spaces"}
    tags = {"team": "media", "a b": "c+d"}
    written: dict[str, Written] = {}
    for n, key in enumerate(AWKWARD_KEYS):
        body = b"" if key.endswith("/") else f"{n}:{key}\n".encode() * (n + 1)
        written[key] = await s3.put_object(plain, key, body, meta, tags, "text/plain")
        expected.append(expect(PUT, plain, written[key], meta, tags))
    assert sorted(await s3.list_keys(plain)) == sorted(AWKWARD_KEYS)  # stored as written

    # COPY: the copy's size and ETag, the source's metadata and tags.
    copied = await s3.copy_object(plain, AWKWARD_KEYS[4], "copies/" + AWKWARD_KEYS[4])
    expected.append(expect(COPY, plain, copied, meta, tags))

    # Multipart: one event, on completion. Metadata given at initiation is in it; tags are not.
    parts = [b"a" * (5 * MIB), b"tail + %41"]
    multi = await s3.multipart_upload(
        plain, "multi part/ü+%41.bin", parts, {"owner": "bob"}, {"t": "1"}
    )
    assert multi.etag.endswith("-2")
    expected.append(expect(MULTIPART, plain, multi, {"owner": "bob"}))

    # DELETE: Ceph reports the removed object's size, ETag, metadata and tags.
    for key in (AWKWARD_KEYS[1], AWKWARD_KEYS[2]):
        await s3.delete_object(plain, key)
        expected.append(expect(DELETE, plain, written[key], meta, tags))

    # A versioned bucket: two versions, a delete marker, then the first version removed.
    v1 = await s3.put_object(versioned, "doc v.txt", b"one")
    v2 = await s3.put_object(versioned, "doc v.txt", b"two!")
    assert v1.version_id and v2.version_id and v1.version_id != v2.version_id
    expected += [expect(PUT, versioned, v1), expect(PUT, versioned, v2)]
    marker = await s3.delete_object(versioned, "doc v.txt")
    assert marker.headers["x-amz-delete-marker"] == "true" and marker.headers["x-amz-version-id"]
    # Ceph 16.2 leaves the marker's version id out and reports the version it hides.
    expected.append(expect(DELETE_MARKER, versioned, v2, version_id=""))
    await s3.delete_object(versioned, "doc v.txt", v1.version_id)
    expected.append(expect(DELETE, versioned, v1))

    received = await receiver.wait_for(len(expected), timeout=30)
    text = await settled(relay, len(expected))
    assert_exactly(received, expected)
    record = received[0].json()["Records"][0]
    assert record["opaqueData"] == "e2e-opaque"
    assert record["s3"]["configurationId"] == "to-relay"
    assert metric_sum(text, "relay_quarantined") == 0
    assert metric_sum(text, "relay_events_duplicate_total") == 0


# Ceph applies this filter itself; the relay gets the same document through `relay rules
# import`. Every object below fails exactly one of its conditions, or none.
FILTER = """
<Filter>
  <S3Key>
    <FilterRule><Name>prefix</Name><Value>photos/</Value></FilterRule>
    <FilterRule><Name>suffix</Name><Value>.jpg</Value></FilterRule>
    <FilterRule><Name>regex</Name><Value>photos/[0-9]{4}/[^/]+\\.jpg</Value></FilterRule>
  </S3Key>
  <S3Metadata><FilterRule><Name>x-amz-meta-class</Name><Value>public</Value></FilterRule></S3Metadata>
  <S3Tags><FilterRule><Name>team</Name><Value>media</Value></FilterRule></S3Tags>
</Filter>"""
FILTER_EVENTS = ("s3:ObjectCreated:*", "s3:ObjectRemoved:Delete")
PUBLIC, MEDIA = {"class": "public"}, {"team": "media"}


async def filter_workload(s3: S3, bucket: str) -> None:
    put = s3.put_object
    await put(bucket, "photos/2024/cat.jpg", b"1", PUBLIC, MEDIA)  # passes
    await put(bucket, "photos/2024/cat.png", b"2", PUBLIC, MEDIA)  # suffix
    await put(bucket, "docs/2024/cat.jpg", b"3", PUBLIC, MEDIA)  # prefix
    await put(bucket, "photos/cats/cat.jpg", b"4", PUBLIC, MEDIA)  # regex
    await put(bucket, "photos/2024/CAT.JPG", b"5", PUBLIC, MEDIA)  # suffix (case)
    await put(bucket, "photos/2025/private.jpg", b"6", {"class": "private"}, MEDIA)  # metadata
    await put(bucket, "photos/2025/untagged.jpg", b"7", PUBLIC)  # tags
    await put(bucket, "photos/2025/other-team.jpg", b"8", PUBLIC, {"team": "other"})  # tags
    await put(bucket, "photos/2025/plain.jpg", b"9", None, MEDIA)  # metadata
    await s3.copy_object(bucket, "photos/2024/cat.jpg", "photos/2026/copy.jpg")  # passes
    # Tags given at initiation are not in the completion event: Ceph's tag filter fails it.
    await s3.multipart_upload(
        bucket, "photos/2027/multi.jpg", [b"m" * 5 * MIB, b"n"], PUBLIC, MEDIA
    )
    await put(bucket, "photos/2028/gone.jpg", b"10", PUBLIC, MEDIA)  # passes
    await s3.delete_object(bucket, "photos/2028/gone.jpg")  # passes
    await s3.delete_object(bucket, "photos/2025/plain.jpg")  # metadata


FILTER_PASSES = {
    (PUT, "photos/2024/cat.jpg"),
    (COPY, "photos/2026/copy.jpg"),
    (PUT, "photos/2028/gone.jpg"),
    (DELETE, "photos/2028/gone.jpg"),
}
WORKLOAD_EVENTS = 14


async def test_rules_imported_from_the_notification_xml_route_what_ceph_filters(
    ceph: Ceph, s3: S3, receiver: Receiver, relay_factory: Callable[..., RelayProcess],
    tmp_path: Path,
) -> None:  # fmt: skip
    """The same NotificationConfiguration twice: Ceph filters one bucket with it; the relay,
    given the catch-all stream of an identical bucket, routes with the rules imported from
    it. What reaches the receiver from each side must be the same set of events."""
    uid = unique()
    filtered, everything = f"filtered-{uid}", f"everything-{uid}"
    for name in ("plain", "rules"):
        (tmp_path / name).mkdir()

    # Ceph filters: its events go to a relay without rules.
    plain = await relay_factory(relay_env(receiver), tmp_path / "plain").start()
    arn = await s3.create_topic(filtered, {"push-endpoint": push_endpoint(plain)})
    xml = notification_xml(arn, "public-photos", FILTER_EVENTS, FILTER)
    await s3.create_bucket(filtered)
    await s3.put_notification(filtered, xml)

    # The relay filters: the same XML, imported. The topic ARN in it names a Ceph topic, not a
    # relay sink: --sink points the imported rule at the relay's webhook sink.
    (tmp_path / "notification.xml").write_text(xml)
    toml = plain.cli(
        "rules", "import", str(tmp_path / "notification.xml"), "--sink", "webhook:primary"
    ).stdout
    assert 'sinks = ["webhook:primary"]' in toml, toml
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(toml)
    routed = await relay_factory(
        relay_env(receiver, RELAY_RULES_FILE=str(rules_file), RELAY_TRUSTED_NETWORKS="127.0.0.1/32"),
        tmp_path / "rules",
    ).start()  # fmt: skip
    # No token in this endpoint: the relay trusts RGW's address instead.
    catch_all = await s3.create_topic(
        everything, {"push-endpoint": push_endpoint(routed, token=False)}
    )
    await s3.create_bucket(everything)
    # No <Event>: Ceph's default, every ObjectCreated and ObjectRemoved event.
    await s3.put_notification(everything, notification_xml(catch_all, "everything"))

    await filter_workload(s3, filtered)
    await filter_workload(s3, everything)

    await receiver.wait_for(2 * len(FILTER_PASSES), timeout=30)
    await settled(plain, len(FILTER_PASSES))
    await settled(routed, WORKLOAD_EVENTS)  # the relay took every event and routed some
    by_ceph = Counter(
        (s.event, s.key) for s in map(seen, receiver.received) if s.bucket == filtered
    )
    by_relay = Counter(
        (s.event, s.key) for s in map(seen, receiver.received) if s.bucket == everything
    )
    assert by_ceph == Counter(FILTER_PASSES), by_ceph
    assert by_relay == by_ceph


async def test_persistent_topic_keeps_events_while_the_relay_is_stopped(
    ceph: Ceph, s3: S3, receiver: Receiver, relay_factory: Callable[..., RelayProcess],
    queue_clock: str,
) -> None:  # fmt: skip
    """A persistent topic: RGW commits each event to a RADOS queue and pushes it later,
    retrying until the endpoint answers 2xx, so events written while the relay is down
    arrive once it is back, each exactly once (the relay drops Ceph's re-sends)."""
    relay = relay_factory(relay_env(receiver))
    await relay.start()
    assert await relay.stop() == 0  # the relay ran and is stopped now: nothing listens

    # Ceph 16.2.15 can stall a persistent queue for good (until radosgw restarts) when its
    # retries hit "connection refused" while several events are queued: its retry loop has
    # no pause and a push completion gets lost. So the relay is down only between two runs
    # of the queue manager: the new queue is owned, and pushed, only once the relay is back.
    await before_the_next_queue_run(ceph, queue_clock, room=15)
    uid = unique()
    topic, bucket = f"persistent-{uid}", f"persistent-{uid}"
    arn = await s3.create_topic(
        topic, {"push-endpoint": push_endpoint(relay), "persistent": "true"}
    )
    await s3.create_bucket(bucket)
    await s3.put_notification(bucket, notification_xml(arn, "kept", ALL_EVENTS))
    expected, written = [], {}
    for n in range(20):
        key = f"kept/{n} {AWKWARD_KEYS[n % len(AWKWARD_KEYS)]}"
        written[key] = await s3.put_object(bucket, key, key.encode() * n, {"n": str(n)})
        expected.append(expect(PUT, bucket, written[key], {"n": str(n)}))
    first, second = list(written)[:2]
    copied = await s3.copy_object(bucket, first, "kept copy.txt")
    expected.append(expect(COPY, bucket, copied, {"n": "0"}))
    await s3.delete_object(bucket, second)
    expected.append(expect(DELETE, bucket, written[second], {"n": "1"}))
    written_at = time.monotonic()

    # The outage lasts until shortly before the manager's next run (this is its length, not
    # a wait for something to happen): the events sit in Ceph's queue all that time.
    ran = await asyncio.to_thread(ceph.queue_run_at, queue_clock)
    assert ran is not None
    await asyncio.sleep(max(0.0, ran + QUEUE_RUN_SECONDS - 6 - time.time()))
    assert not port_open(relay.port)  # the relay is down ...
    assert await asyncio.to_thread(ceph.queue_run_at, topic) is None  # ... and Ceph holds them
    kept = time.monotonic() - written_at

    await relay.start()
    back = time.monotonic()
    await receiver.wait_for(len(expected), timeout=2 * QUEUE_RUN_SECONDS + 15)
    delay = time.monotonic() - back
    # The queue is owned now and polled every 100 ms: a last event shows it has been drained.
    last = await s3.put_object(bucket, "last.txt", b"end")
    expected.append(expect(PUT, bucket, last))
    received = await receiver.wait_for(len(expected), timeout=30)
    text = await settled(relay, len(expected))
    assert_exactly(received, expected)
    duplicates = metric_sum(text, "relay_events_duplicate_total")
    print(f"\npersistent topic: {len(expected) - 1} events kept by Ceph for {kept:.1f} s while "
          f"the relay was down, all delivered {delay:.1f} s after it started; "
          f"Ceph re-sends dropped by the relay: {duplicates:.0f}")  # fmt: skip
