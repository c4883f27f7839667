"""The audit trail's batch objects, shared by the `audit_bucket` (S3) and `nats_objects`
(NATS JetStream object store) sinks, and read back by `relay audit verify`.

A batch becomes one NDJSON object per source bucket, one line per event: the normalised
fields, then the record exactly as the store sent it (`record`). Everything about an object
is derived from its events, never from the clock or a counter:

    <prefix>/<bucket>/YYYY/MM/DD/HH-MM-SS-<first seq>-<last seq>.ndjson[.gz]

with the time of the first event's arrival (UTC), and the same bytes on every upload (gzip
with mtime 0). The trail is ordered by seq, which every line and every name carries, not by
when objects were written: the objects of a batch are written side by side.

Each event is written once (what `relay audit verify` checks), although delivery may hand an
event over again (see `AuditWriter`). Nothing is buffered in the sink: the dispatcher holds
a partial batch un-acked in the log while it waits `MAX_OBJECT_AGE`.
"""

from __future__ import annotations

import asyncio
import gzip
import re
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from relay import metrics
from relay.config import ConfigError, Duration, Key, Settings, SinkConfig, Size
from relay.queue.log import LogEntry
from relay.sinks.base import DeliveryError, Permanent, Result, Retryable, describe

EXTENSION = ".ndjson"
GZIP_EXTENSION = ".ndjson.gz"
CONTENT_TYPE = "application/x-ndjson"
GZIP_CONTENT_TYPE = "application/gzip"
EMPTY_BUCKET = "_"  # the name segment of events that name no bucket (some audit entries)


class AuditConfig(SinkConfig, kw_only=True, frozen=True):
    """The keys both audit sinks declare the same way. MAX_OBJECT_BYTES and MAX_OBJECT_AGE
    are the dispatcher's BATCH_BYTES and BATCH_WAIT under the names an operator thinks in
    (the common spellings are accepted too); the defaults make objects of minutes, not of
    single events."""

    # FORMAT is the objects' shape here, not a payload format
    format: Annotated[
        Literal["ndjson"],
        Key(
            "Shape of the objects: `ndjson`, the only one (one line per event, see the "
            "README's Audit trail); the other sinks' payload formats do not apply."
        ),
    ] = "ndjson"  # type: ignore[assignment]
    prefix: Annotated[
        str,
        Key("Name prefix of every object (`<prefix>/<bucket>/YYYY/MM/DD/…`); empty for none."),
    ] = "audit"
    compression: Annotated[
        Literal["none", "gzip"],
        Key(
            "`none` (`.ndjson`) or `gzip` (`.ndjson.gz`, deterministic: a retried upload "
            "writes the same bytes)."
        ),
    ] = "none"
    batch_bytes: Annotated[
        Size,
        Key(
            "Most bytes of records (as received) in one object: a batch is cut before it "
            "would pass this. Each line adds the normalised fields (~0.5 KiB per event) "
            "before compression. The common BATCH_BYTES, accepted too.",
            env_key="MAX_OBJECT_BYTES",
            aliases=("BATCH_BYTES",),
        ),
    ] = 8 * 1024**2
    batch_wait: Annotated[
        Duration,
        Key(
            "Longest an event waits, un-acknowledged in the log, for company before its "
            "object is written (0: write each batch at once). The common BATCH_WAIT, "
            "accepted too.",
            env_key="MAX_OBJECT_AGE",
            aliases=("BATCH_WAIT",),
        ),
    ] = 60.0
    batch_size: Annotated[int, Key("Most events in one object.")] = 10_000
    concurrency: Annotated[
        int, Key("Objects of a batch (one per source bucket) written at once.")
    ] = 4


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
    seqs: tuple[int, ...]  # the events it holds
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


def remembered(config: AuditConfig) -> int:
    """How many events' objects a writer remembers (~140 bytes each): twice what delivery
    can hand over again, its parked events and a held batch."""
    return 2 * (config.max_parked + config.batch_size)


def expected_principals(settings: Settings | None) -> frozenset[str] | None:
    """RELAY_EXPECTED_PRINCIPALS as a set, or None when it is not set (no line is marked)."""
    names = settings.expected_principals if settings is not None else ()
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
    if e.objects:  # a multi-object request (DeleteObjects): the objects it acted on
        fields["objects"] = list(e.objects)
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
) -> list[AuditObject]:
    """The objects of a batch: one per source bucket, in order of each bucket's first event,
    each holding its bucket's events in seq order."""
    groups: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault(entry.event.bucket, []).append(index)
    return [
        _make_object(entries, sorted(chunk, key=lambda i: entries[i].seq), bucket, prefix,
                     compression, expected)
        for bucket, chunk in groups.items()
    ]  # fmt: skip


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
        body, bucket, first.seq, last.seq, tuple(chunk), tuple(entries[i].seq for i in chunk),
        unexpected,
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
    """What both audit sinks do with a batch: leave out what must not be written, put each
    event into exactly one object, write the objects (CONCURRENCY at once) and give each
    event the result of its object.

    Delivery may hand an event over again: a later event of an object is sent again after an
    earlier one of the object that failed, a held cursor re-reads what followed it, and a
    failed object's events come back on their objects' own retry schedules, not together.
    Writing them into new objects would put an event in the trail twice when an upload had
    succeeded although it was reported failed. So an event, once given an object, stays in
    it (remembered for the last `remember` events):
    - its object was stored: it is in the trail, and is delivered again without a write;
    - its object failed: that object is written again as it was (same name, same bytes,
      with all its events, whichever of them came back), so it overwrites itself.
    A restart forgets: an event handed over again after one may be written a second time
    (`relay audit verify` reports it duplicated), never lost."""

    def __init__(
        self, sink: str, prefix: str, compression: str, concurrency: int,
        expected: frozenset[str] | None, remember: int = 40_000,
    ) -> None:  # fmt: skip
        self.sink = sink
        self.remember = remember
        self.prefix = prefix
        self.compression = compression
        self.concurrency = max(1, concurrency)
        self.expected = expected
        # seq → the failed object holding it (to write again), or None once it is stored
        self.placed: OrderedDict[int, AuditObject | None] = OrderedDict()

    def objects(self, entries: Sequence[LogEntry]) -> list[AuditObject]:
        return batch_objects(entries, self.prefix, self.compression, expected=self.expected)

    async def send(
        self,
        batch: Sequence[LogEntry],
        put: Callable[[AuditObject], Awaitable[None]],
        drop: Callable[[LogEntry], bool] | None = None,
    ) -> list[Result]:
        results: list[Result] = [None] * len(batch)
        fresh: list[int] = []
        again: dict[str, tuple[AuditObject, list[int]]] = {}  # failed objects, by name
        dropped = 0
        for index, entry in enumerate(batch):
            if drop is not None and drop(entry):
                dropped += 1
            elif entry.seq not in self.placed:
                fresh.append(index)
            else:
                self.placed.move_to_end(entry.seq)
                obj = self.placed[entry.seq]
                if obj is not None:
                    again.setdefault(obj.name, (obj, []))[1].append(index)
        if dropped:
            count_self_events(self.sink, dropped)
        writes = list(again.values())
        if fresh:
            # rendering and gzip of a few MiB: off the event loop (zlib releases the GIL)
            made = await asyncio.to_thread(self.objects, [batch[i] for i in fresh])
            writes += [(obj, [fresh[i] for i in obj.indexes]) for obj in made]
        gate = asyncio.Semaphore(self.concurrency)

        async def write(obj: AuditObject, indexes: list[int]) -> None:
            try:
                async with gate:
                    await put(obj)
            except DeliveryError as exc:
                error: DeliveryError = exc
            except Exception as exc:  # a bug or an unclassified client error
                error = Retryable(describe(exc))
            else:
                self._place(obj, None)
                if obj.unexpected:
                    count_unexpected(obj.bucket, obj.unexpected)
                return
            for index in indexes:
                results[index] = error
            if isinstance(error, Permanent):
                self._forget(obj)  # dead letters: a retry of them makes a new object
            else:
                self._place(obj, obj)

        await asyncio.gather(*(write(obj, indexes) for obj, indexes in writes))
        return results

    def _place(self, obj: AuditObject, value: AuditObject | None) -> None:
        for seq in obj.seqs:
            self.placed[seq] = value
            self.placed.move_to_end(seq)
        while len(self.placed) > self.remember:
            self.placed.popitem(last=False)

    def _forget(self, obj: AuditObject) -> None:
        for seq in obj.seqs:
            self.placed.pop(seq, None)
