"""The audit trail's batch objects, shared by the `audit_bucket` (S3) and `nats_objects`
(NATS JetStream object store) sinks, and read back by `relay audit verify`.

A batch becomes one NDJSON object per source bucket, one line per event: the normalised
fields, then the record exactly as the store sent it (`record`). Everything about an object
is derived from its events, never from the clock or a counter:

    <prefix>/<bucket>/YYYY/MM/DD/HH-MM-SS-<first seq>-<last seq>.ndjson[.gz]

with the time of the first event's arrival (UTC). So an upload that is retried writes the
same name with the same bytes (gzip with mtime 0), and overwrites itself instead of leaving
a duplicate. When an upload failed and the next batch brings more events of that bucket, the
failed object is cut again where it ended before (remembered in memory; a restart forgets
it, which costs at most a duplicate, never a loss). Nothing is buffered in the sink: the
dispatcher holds a partial batch un-acked in the log while it waits `MAX_OBJECT_AGE`.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from relay import metrics
from relay.config import ConfigError, Option, parse_list
from relay.queue.log import LogEntry
from relay.sinks.base import DeliveryError, Result, Retryable, exc_text

EXTENSION = ".ndjson"
GZIP_EXTENSION = ".ndjson.gz"
CONTENT_TYPE = "application/x-ndjson"
GZIP_CONTENT_TYPE = "application/gzip"
EXPECTED_PRINCIPALS_ENV = "RELAY_EXPECTED_PRINCIPALS"
EMPTY_BUCKET = "_"  # the name segment of events that name no bucket (some audit entries)
MAX_CUTS = 4096

# The keys both sinks declare the same way. MAX_OBJECT_BYTES and MAX_OBJECT_AGE are the
# dispatcher's BATCH_BYTES and BATCH_WAIT under the names an operator thinks in (the common
# spellings are accepted too); the defaults make objects of minutes, not of single events.
OPTIONS = (
    Option(
        "format",
        "choice",
        "ndjson",
        "Shape of the objects: `ndjson`, the only one (one line per event, see the README's "
        "Audit trail); the other sinks' payload formats do not apply.",
        choices=("ndjson",),
    ),
    Option(
        "prefix",
        "str",
        "audit",
        "Name prefix of every object (`<prefix>/<bucket>/YYYY/MM/DD/…`); empty for none.",
    ),
    Option(
        "compression",
        "choice",
        "none",
        "`none` (`.ndjson`) or `gzip` (`.ndjson.gz`, deterministic: a retried upload "
        "writes the same bytes).",
        choices=("none", "gzip"),
    ),
    Option(
        "batch_bytes",
        "size",
        8 * 1024**2,
        "Most bytes of records (as received) in one object: a batch is cut before it "
        "would pass this. Each line adds the normalised fields (~0.5 KiB per event) before "
        "compression. The common BATCH_BYTES, accepted too.",
        env_key="MAX_OBJECT_BYTES",
        aliases=("BATCH_BYTES",),
    ),
    Option(
        "batch_wait",
        "duration",
        60.0,
        "Longest an event waits, un-acknowledged in the log, for company before its "
        "object is written (0: write each batch at once). The common BATCH_WAIT, accepted "
        "too.",
        env_key="MAX_OBJECT_AGE",
        aliases=("BATCH_WAIT",),
    ),
    Option("batch_size", "int", 10_000, "Most events in one object."),
)

# Until relay/metrics.py defines relay_audit_self_events_total and
# relay_unexpected_principal_total, the counts live here (tests read them); once it does,
# they are counted there as well.
SELF_EVENTS: Counter[str] = Counter()  # sink → events about the audit bucket itself
UNEXPECTED_PRINCIPALS: Counter[str] = Counter()  # bucket → events by an unexpected principal

_json = msgspec.json.Encoder()
NAME_RE = re.compile(
    r"^(?:(?P<prefix>.+)/)?(?P<bucket>[^/]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P<H>\d{2})-(?P<M>\d{2})-(?P<S>\d{2})-(?P<first>\d+)-(?P<last>\d+)"
    r"(?P<ext>\.ndjson(?:\.gz)?)$"
)


@dataclass(frozen=True, slots=True)
class AuditObject:
    """One object of a batch: its name, its bytes, and which of the batch's events it holds."""

    name: str
    body: bytes
    bucket: str
    first_seq: int
    last_seq: int
    indexes: tuple[int, ...]  # positions in the entries batch_objects() was given
    unexpected: int = 0  # lines marked unexpected_principal

    @property
    def content_type(self) -> str:
        return GZIP_CONTENT_TYPE if self.name.endswith(".gz") else CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class ObjectName:
    """What an object's name says about it (see NAME_RE)."""

    prefix: str
    bucket: str
    time: datetime  # the first event's arrival, to the second
    first_seq: int
    last_seq: int
    gzip: bool


# -- configuration -----------------------------------------------------------------------------


def normalise_prefix(text: str, variable: str) -> str:
    """`/audit/` → `audit`; segments `.`/`..` are refused (object stores would resolve them)."""
    parts = [p for p in text.strip().split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError(f"{variable}: {text!r} has a `.` or `..` segment")
    return "/".join(parts)


def expected_principals(env: Any = None) -> frozenset[str] | None:
    """RELAY_EXPECTED_PRINCIPALS as a set, or None when it is not set (no line is marked)."""
    raw = (os.environ if env is None else env).get(EXPECTED_PRINCIPALS_ENV, "")
    names = parse_list(raw)
    return frozenset(names) if names else None


# -- lines and objects -------------------------------------------------------------------------


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_bytes(record: bytes) -> bytes:
    """The record as embedded in a line: byte for byte, except that a pretty-printed record's
    line breaks (whitespace between JSON tokens: they cannot occur inside a JSON string)
    become spaces, so one event stays one line."""
    if b"\n" in record or b"\r" in record:
        return record.replace(b"\r", b" ").replace(b"\n", b" ")
    return record


def is_unexpected(principal: str | None, expected: frozenset[str] | None) -> bool:
    # events without a principal (lifecycle, replication, …) are not anyone's doing
    return expected is not None and bool(principal) and principal not in expected


def line(entry: LogEntry, expected: frozenset[str] | None = None) -> bytes:
    """One NDJSON line (without the newline)."""
    e = entry.event
    fields: dict[str, Any] = {
        "seq": entry.seq,
        "event_id": e.event_id,
        "event_name": e.event_name,
        "bucket": e.bucket,
        "key": e.key,
        "size": e.size,
        "etag": e.etag,
        "version_id": e.version_id,
        "sequencer": e.sequencer,
        "event_time": e.event_time,
        "source": e.source,
        "dialect": e.dialect,
        "principal": e.principal,
        "source_ip": e.source_ip,
        "user_agent": e.user_agent,
        "request_id": e.request_id,
        "received_at": rfc3339(entry.received_at),
    }
    if expected is not None:
        fields["unexpected_principal"] = is_unexpected(e.principal, expected)
    return _json.encode(fields)[:-1] + b',"record":' + record_bytes(e.record) + b"}"


def bucket_segment(bucket: str) -> str:
    if bucket in ("", ".", ".."):
        return EMPTY_BUCKET
    return bucket.replace("/", "_")


def object_name(prefix: str, bucket: str, first: LogEntry, last_seq: int, compression: str) -> str:
    t = datetime.fromtimestamp(first.received_at, UTC)
    ext = GZIP_EXTENSION if compression == "gzip" else EXTENSION
    head = f"{prefix}/" if prefix else ""
    return f"{head}{bucket_segment(bucket)}/{t:%Y/%m/%d}/{t:%H-%M-%S}-{first.seq}-{last_seq}{ext}"


def parse_name(name: str) -> ObjectName | None:
    found = NAME_RE.match(name)
    if found is None:
        return None
    g = found.groupdict()
    try:
        t = datetime(int(g["y"]), int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]),
                     int(g["S"]), tzinfo=UTC)  # fmt: skip
    except ValueError:
        return None
    return ObjectName(g["prefix"] or "", g["bucket"], t, int(g["first"]), int(g["last"]),
                      g["ext"].endswith(".gz"))  # fmt: skip


def batch_objects(
    entries: Sequence[LogEntry],
    prefix: str,
    compression: str,
    *,
    expected: frozenset[str] | None = None,
    cuts: dict[tuple[str, int], int] | None = None,
) -> list[AuditObject]:
    """The objects of a batch: one per source bucket, in order of each bucket's first event;
    a bucket whose earlier upload failed is cut where that object ended (`cuts`:
    (bucket, first seq) → last seq), so its retry writes the very same object."""
    groups: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault(entry.event.bucket, []).append(index)
    objects = []
    for bucket, indexes in groups.items():
        start = 0
        while start < len(indexes):
            end = len(indexes)
            cut = (cuts or {}).get((bucket, entries[indexes[start]].seq))
            if cut is not None:
                end = start + 1
                while end < len(indexes) and entries[indexes[end]].seq <= cut:
                    end += 1
            chunk = indexes[start:end]
            objects.append(_make_object(entries, chunk, bucket, prefix, compression, expected))
            start = end
    return objects


def _make_object(
    entries: Sequence[LogEntry],
    chunk: list[int],
    bucket: str,
    prefix: str,
    compression: str,
    expected: frozenset[str] | None,
) -> AuditObject:
    first, last = entries[chunk[0]], entries[chunk[-1]]
    body = b"".join(line(entries[i], expected) + b"\n" for i in chunk)
    if compression == "gzip":
        body = gzip.compress(body, compresslevel=6, mtime=0)
    unexpected = sum(is_unexpected(entries[i].event.principal, expected) for i in chunk)
    return AuditObject(
        object_name(prefix, bucket, first, last.seq, compression),
        body, bucket, first.seq, last.seq, tuple(chunk), unexpected,
    )  # fmt: skip


# -- counting ----------------------------------------------------------------------------------


def count_self_events(sink: str, n: int) -> None:
    SELF_EVENTS[sink] += n
    counter = getattr(metrics, "AUDIT_SELF_EVENTS", None)
    if counter is not None:
        counter.labels(sink).inc(n)


def count_unexpected(bucket: str, n: int) -> None:
    UNEXPECTED_PRINCIPALS[bucket] += n
    counter = getattr(metrics, "UNEXPECTED_PRINCIPAL", None)
    if counter is not None:
        counter.labels(bucket).inc(n)


# -- delivery ----------------------------------------------------------------------------------


class AuditWriter:
    """What both audit sinks do with a batch: drop what must not be written, make the
    objects, write them (buckets in parallel, one bucket's objects in order), and give each
    event the result of its object. A batch counts as delivered only when every object of it
    was written; an event of a failed object gets that object's error."""

    def __init__(
        self, sink: str, prefix: str, compression: str, concurrency: int,
        expected: frozenset[str] | None,
    ) -> None:  # fmt: skip
        self.sink = sink
        self.prefix = prefix
        self.compression = compression
        self.concurrency = max(1, concurrency)
        self.expected = expected
        self.cuts: OrderedDict[tuple[str, int], int] = OrderedDict()

    def objects(self, entries: Sequence[LogEntry]) -> list[AuditObject]:
        return batch_objects(entries, self.prefix, self.compression,
                             expected=self.expected, cuts=self.cuts)  # fmt: skip

    async def send(
        self,
        batch: Sequence[LogEntry],
        put: Callable[[AuditObject], Awaitable[None]],
        drop: Callable[[LogEntry], bool] | None = None,
    ) -> list[Result]:
        results: list[Result] = [None] * len(batch)
        keep = [i for i, entry in enumerate(batch) if drop is None or not drop(entry)]
        if len(keep) < len(batch):
            count_self_events(self.sink, len(batch) - len(keep))
        if not keep:
            return results
        entries = [batch[i] for i in keep]
        # rendering and gzip of a few MiB: off the event loop (zlib releases the GIL)
        objects = await asyncio.to_thread(self.objects, entries)
        lanes: dict[str, list[AuditObject]] = {}
        for obj in objects:
            lanes.setdefault(obj.bucket, []).append(obj)
        gate = asyncio.Semaphore(self.concurrency)

        def settle(obj: AuditObject, result: Result) -> None:
            for index in obj.indexes:
                results[keep[index]] = result

        async def lane(objs: list[AuditObject]) -> None:
            for position, obj in enumerate(objs):
                try:
                    async with gate:
                        await put(obj)
                except DeliveryError as exc:
                    error: DeliveryError = exc
                except Exception as exc:  # a bug or an unclassified client error
                    error = Retryable(f"{type(exc).__name__}: {exc}")
                else:
                    self.cuts.pop((obj.bucket, obj.first_seq), None)
                    if obj.unexpected:
                        count_unexpected(obj.bucket, obj.unexpected)
                    continue
                settle(obj, error)
                if isinstance(error, Retryable):
                    self._remember_cut(obj)
                later = Retryable(f"not written: an earlier object of bucket {obj.bucket!r} "
                                  f"failed ({exc_text(error)})")  # fmt: skip
                for rest in objs[position + 1 :]:
                    settle(rest, later)
                return

        await asyncio.gather(*(lane(objs) for objs in lanes.values()))
        return results

    def _remember_cut(self, obj: AuditObject) -> None:
        key = (obj.bucket, obj.first_seq)
        self.cuts[key] = obj.last_seq
        self.cuts.move_to_end(key)
        while len(self.cuts) > MAX_CUTS:
            self.cuts.popitem(last=False)
