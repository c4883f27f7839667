"""`relay audit verify`: is every event the log says an audit sink took in the trail, once?

The log is the reference. The events of the time range (by arrival) that the sink has
taken are those at or below its cursor, not dead-lettered, not waiting for a redelivery,
routed to it by the rules and, for `audit_bucket`, not about the audit bucket itself (those
are never written). The trail is read from the objects' names: an object holds events of one
bucket, from `<first seq>` to `<last seq>`, the first of which arrived at the time in its
name; so only the days from (the oldest expected event - LOOKBACK) to UNTIL are listed, and
only objects whose seq range meets the expected events' are read. Every line's record is
compared with the log's, byte for byte.

Verdict: exit 0 when every expected event is present exactly once and nothing read is
damaged; 1 when one is missing or duplicated (or a record differs, or an object cannot be
read). Events older than RELAY_RETENTION are no longer in the log and cannot be checked.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from relay import app, sinks
from relay.config import ConfigError, SinkSpec, parse_duration
from relay.progress import Bar
from relay.queue import admin
from relay.queue.backend import LogBackend
from relay.queue.log import LogEntry
from relay.sinks import auditlog, redact
from relay.sinks.base import DeliveryError, exc_text

EXIT_OK, EXIT_FAILED = 0, 1
AUDIT_TYPES = ("audit_bucket", "nats_objects")
READ_CONCURRENCY = 8
SHOW_MISSING = 20  # missing or duplicated events listed one per line


class TrailReader(Protocol):
    async def start(self) -> None: ...
    async def list_objects(self, prefix: str) -> list[str]: ...
    async def read_object(self, name: str) -> bytes: ...
    async def close(self) -> None: ...


class _Line(msgspec.Struct):
    seq: int = 0
    event_id: str = ""
    record: msgspec.Raw = msgspec.Raw()


_line = msgspec.json.Decoder(_Line)


@dataclass(frozen=True, slots=True)
class Expected:
    seq: int
    event_id: str
    bucket: str
    key: str
    received_at: float
    record: bytes  # digest of the record as a line embeds it (auditlog.record_bytes)


@dataclass
class Report:
    sink: str
    since: float
    until: float
    cursor: int = 0
    in_range: int = 0  # events of the range in the log
    pending: int = 0  # past the cursor, or queued for redelivery
    dead: int = 0
    not_routed: int = 0
    self_events: int = 0
    expected: int = 0
    objects: int = 0
    lines: int = 0
    present: int = 0  # expected events found exactly once
    missing: list[Expected] = field(default_factory=list)
    duplicated: list[tuple[Expected, int]] = field(default_factory=list)
    altered: list[tuple[Expected, str]] = field(default_factory=list)  # record differs
    unreadable: list[str] = field(default_factory=list)
    other: int = 0  # lines of events not expected (outside the range, ahead of the cursor)
    oldest_in_log: float | None = None
    allow_duplicates: bool = False

    @property
    def ok(self) -> bool:
        duplicates = bool(self.duplicated) and not self.allow_duplicates
        return not (self.missing or duplicates or self.altered or self.unreadable)

    def render(self) -> str:
        out = [
            f"audit trail of {self.sink}: events received {_time(self.since)} .. "
            f"{_time(self.until)} (cursor {self.cursor})",
            f"  events in the log in range:   {self.in_range}",
            f"  expected in the trail:        {self.expected}  (not yet taken: {self.pending}, "
            f"dead-lettered: {self.dead}, not routed to it: {self.not_routed}, about the "
            f"audit bucket itself: {self.self_events})",
            f"  objects read:                 {self.objects} ({self.lines} lines)",
            f"  present exactly once:         {self.present}",
            f"  missing:                      {len(self.missing)}",
            f"  duplicated:                   {len(self.duplicated)}"
            + ("  (allowed)" if self.duplicated and self.allow_duplicates else ""),
            f"  record differs from the log:  {len(self.altered)}",
            f"  unreadable:                   {len(self.unreadable)}",
            f"  lines of other events:        {self.other}",
        ]
        if self.oldest_in_log is not None and self.oldest_in_log > self.since:
            out.append(f"  note: the log holds events from {_time(self.oldest_in_log)} on "
                       "(RELAY_RETENTION); older ones were not checked")  # fmt: skip
        for e in self.missing[:SHOW_MISSING]:
            out.append(f"  missing    seq={e.seq} {e.bucket}/{e.key} event_id={e.event_id} "
                       f"received {_time(e.received_at)}")  # fmt: skip
        for e, n in self.duplicated[:SHOW_MISSING]:
            out.append(f"  duplicated seq={e.seq} {e.bucket}/{e.key} event_id={e.event_id} "
                       f"({n} copies)")  # fmt: skip
        for e, where in self.altered[:SHOW_MISSING]:
            out.append(f"  differs    seq={e.seq} {e.bucket}/{e.key} in {where}")
        for what in self.unreadable[:SHOW_MISSING]:
            out.append(f"  unreadable {what}")
        out.append("OK" if self.ok else "FAILED")
        return "\n".join(out)


# -- what the log says --------------------------------------------------------------------------


async def expected_events(
    log: LogBackend,
    report: Report,
    routed: Callable[[LogEntry], bool],
    dropped: Callable[[LogEntry], bool],
) -> dict[str, Expected]:
    """The events of [since, until) the sink has taken, by event id; counts the rest."""
    sink = report.sink
    (stats,) = await log.sink_stats([sink])  # a sink that never ran: all pending
    report.cursor = stats.cursor
    report.oldest_in_log = await log.oldest_received()
    dead = {d.seq for d in await log.dead_letters(admin.DeadLetterFilter(sink=sink))}
    queued = await log.pending_seqs(sink)  # queued again or parked: not delivered yet
    expected: dict[str, Expected] = {}
    async for entry in log.received_between(report.since, report.until):
        report.in_range += 1
        if entry.seq > report.cursor or entry.seq in queued:
            report.pending += 1
        elif entry.seq in dead:
            report.dead += 1
        elif not routed(entry):
            report.not_routed += 1
        elif dropped(entry):
            report.self_events += 1
        else:
            e = entry.event
            expected[e.event_id] = Expected(entry.seq, e.event_id, e.bucket, e.key,
                                            entry.received_at,
                                            _digest(auditlog.record_bytes(e.record)))  # fmt: skip
    report.expected = len(expected)
    return expected


# -- what the trail holds -----------------------------------------------------------------------


async def check_trail(
    reader: TrailReader,
    prefix: str,
    expected: dict[str, Expected],
    report: Report,
    lookback: float,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    by_bucket: dict[str, list[Expected]] = {}
    for e in expected.values():
        by_bucket.setdefault(e.bucket, []).append(e)
    names: list[str] = []
    for bucket, events in by_bucket.items():
        low = min(e.seq for e in events)
        high = max(e.seq for e in events)
        start = min(e.received_at for e in events) - lookback
        segment = auditlog.bucket_segment(bucket)
        for day in _days(start, report.until):
            day_prefix = "/".join(p for p in (prefix, segment, f"{day:%Y/%m/%d}") if p)
            for name in await reader.list_objects(day_prefix):
                parsed = auditlog.parse_name(name)
                if parsed is None or parsed.bucket != segment:
                    continue
                stamp = parsed.time.timestamp()
                # (arrival times may trail the seq order by a few ms: a minute of slack)
                if stamp < start - 1 or stamp > report.until + 60:
                    continue
                if parsed.last_seq < low or parsed.first_seq > high:
                    continue
                names.append(name)
    seen: Counter[str] = Counter()
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(name: str) -> None:
        async with gate:
            try:
                body = await reader.read_object(name)
            except DeliveryError as exc:
                report.unreadable.append(f"{name}: {exc_text(exc)}")
                return
        report.objects += 1
        if progress:
            progress(report.objects, len(names))
        if name.endswith(".gz"):
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                report.unreadable.append(f"{name}: not gzip ({exc})")
                return
        for number, text in enumerate(body.splitlines(), 1):
            if not text.strip():
                continue
            report.lines += 1
            try:
                line = _line.decode(text)
            except msgspec.DecodeError as exc:
                report.unreadable.append(f"{name} line {number}: {exc}")
                continue
            e = expected.get(line.event_id)
            if e is None:
                report.other += 1
                continue
            seen[line.event_id] += 1
            if _digest(bytes(line.record)) != e.record:
                report.altered.append((e, f"{name} line {number}"))

    await asyncio.gather(*(read(n) for n in sorted(set(names))))
    for event_id, e in sorted(expected.items(), key=lambda item: item[1].seq):
        n = seen.get(event_id, 0)
        if n == 0:
            report.missing.append(e)
        elif n > 1:
            report.duplicated.append((e, n))
        else:
            report.present += 1


def _days(start: float, end: float) -> list[dt.date]:
    first = dt.datetime.fromtimestamp(start, dt.UTC).date()
    last = dt.datetime.fromtimestamp(end, dt.UTC).date()
    days = []
    while first <= last:
        days.append(first)
        first += dt.timedelta(days=1)
    return days


# -- the command --------------------------------------------------------------------------------


async def verify(
    spec: SinkSpec,
    reader: TrailReader,
    log: LogBackend,
    routed: Callable[[LogEntry], bool],
    since: float,
    until: float,
    lookback: float = 86400.0,
    allow_duplicates: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check the trail of one audit sink (`reader` is that sink, built from `spec`)."""
    if spec.type not in AUDIT_TYPES:
        raise admin.AdminError(f"{spec.name} is not an audit sink ({', '.join(AUDIT_TYPES)})")
    report = Report(spec.name, since, until, allow_duplicates=allow_duplicates)
    config = spec.typed(auditlog.AuditConfig)
    audit_bucket = spec.options.get("bucket") if spec.type == "audit_bucket" else None

    def dropped(entry: LogEntry) -> bool:
        return audit_bucket is not None and entry.event.bucket == audit_bucket

    expected = await expected_events(log, report, routed, dropped)
    if not expected:
        return report
    prefix = auditlog.normalise_prefix(config.prefix, spec.variable("prefix"))
    await reader.start()
    try:
        await check_trail(reader, prefix, expected, report, lookback, progress)
    finally:
        await reader.close()
    shown = redact.for_spec(spec)  # the readers' errors, as every sink error is shown
    report.unreadable = [shown(text) for text in report.unreadable]
    return report


def add_parser(sub: Any) -> None:
    """`relay audit verify …` (cli.py calls this with its subparsers)."""
    audit = sub.add_parser("audit", help="the audit trail sinks").add_subparsers(metavar="action")
    v = audit.add_parser(
        "verify",
        help="check that every event an audit sink took is in its trail exactly once",
    )
    v.add_argument("--sink", required=True, help="an audit_bucket or nats_objects sink")
    v.add_argument("--since", required=True, help="RFC 3339 time or a duration ago (2h)")
    v.add_argument("--until", help="RFC 3339 time or a duration ago; default: now")
    v.add_argument(
        "--lookback", default="1d",
        help="how long before an event its object may have started (an outage's length); "
        "default 1d",
    )  # fmt: skip
    v.add_argument(
        "--allow-duplicates", action="store_true",
        help="report duplicated events but do not fail on them (after a replay)",
    )  # fmt: skip
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(run=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    config = app.load_config(os.environ)
    names = {s.name.lower(): s for s in config.specs}
    spec = names.get(args.sink.lower())
    if spec is None:
        configured = ", ".join(s.name for s in config.specs) or "none"
        raise admin.AdminError(f"no sink {args.sink!r} (configured: {configured})")
    now = time.time()
    since = admin.parse_when(args.since, now)
    until = admin.parse_when(args.until, now) if args.until else now + 1
    try:
        lookback = parse_duration(args.lookback)
    except ValueError as exc:
        raise ConfigError(f"--lookback: {exc}") from None
    reader: TrailReader = sinks.create(spec)  # type: ignore[assignment]
    with Bar("audit verify", "objects") as bar:
        try:
            report = asyncio.run(app.operate(config.settings, lambda log: verify(
                spec, reader, log, lambda e: config.router.matches(spec.name, e.event),
                since, until, lookback, args.allow_duplicates, bar,
            )))  # fmt: skip
        except DeliveryError as exc:
            why = redact.for_spec(spec)(exc_text(exc))
            raise admin.AdminError(f"cannot read the trail of {spec.name}: {why}") from None
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2, default=str))
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


def _digest(record: bytes) -> bytes:
    return hashlib.blake2b(record, digest_size=16).digest()


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
