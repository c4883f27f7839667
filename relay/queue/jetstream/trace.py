"""Where is my event, on the replicated log: relay/queue/trace.py's `TraceSource`, answered
from the stream, the sinks' documents and the dead-letter bucket.

The stream has no index by object, nor by event id when dedup is the duplicate window's
(RELAY_LOG_DEDUP=window: every event on one subject): those look-ups read the newest SCAN
events of the stream at most, and the trace says so when it found nothing. With
RELAY_LOG_DEDUP=stream each event id has a subject of its own, read directly.

Synchronous, on a thread of the operator's: each read runs its coroutine on the log's loop
(`JetStreamLog._call`), as the dispatchers' reads do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from relay.events import lane
from relay.queue.jetstream.log import SEARCH_LIMIT
from relay.queue.log import LogEntry
from relay.queue.trace import (
    SINCE_SLACK,
    CursorRow,
    DeadLetterRow,
    RedeliveryRow,
    Retry,
    Shed,
)

if TYPE_CHECKING:
    from relay.queue.jetstream.log import JetStreamLog
    from relay.queue.jetstream.state import SinkDoc

# events read, the newest, to find an object's events or an id without a subject of its own
SCAN = SEARCH_LIMIT


class JetStreamSource:
    def __init__(self, log: JetStreamLog, sinks: Sequence[str]) -> None:
        self.log = log
        self.first, self.last = log._call(log.stream_bounds())
        docs = ((sink, log._call(log.sink_document(sink))) for sink in sinks)
        self.docs: dict[str, SinkDoc] = {sink: doc for sink, doc in docs if doc is not None}
        self.scan_from = max(self.first, self.last - SCAN + 1)
        self.scanned_from = 0  # set once a look-up could not read the whole stream

    def _scan(self, from_seq: int, keep: Callable[[LogEntry], bool]) -> list[LogEntry]:
        """The events from `from_seq` on (the newest SCAN at most) that `keep` keeps."""
        if from_seq < self.scan_from and self.scan_from > self.first:
            self.scanned_from = self.scan_from
        after = max(from_seq, self.scan_from) - 1
        return self.log._call(self.log.scan(after, self.last, keep))

    def by_seq(self, seq: int) -> list[LogEntry]:
        return self.log.entries([seq])

    def by_event_id(self, event_id: str) -> list[LogEntry]:
        if self.log.per_id:
            found = self.log._call(self.log.entry_of_id(event_id))
            return [found] if found is not None else []
        return self._scan(0, lambda e: e.event.event_id == event_id)

    def of_object(self, bucket: str, key: str, from_seq: int, since: float) -> list[LogEntry]:
        return self._scan(
            from_seq,
            lambda e: (e.event.bucket, e.event.key) == (bucket, key) and e.received_at >= since,
        )

    def first_seq_since(self, since: float) -> int:
        first = self.log.first_seq_received(0, since - SINCE_SLACK)
        return first if first is not None else self.last + 1

    def pruned_upto(self) -> int:
        return self.first - 1

    def head(self) -> int:
        return self.last

    def cursors(self) -> dict[str, CursorRow]:
        return {
            sink: CursorRow(doc.cursor, doc.cursor_at, doc.paused)
            for sink, doc in self.docs.items()
        }

    def missed(self) -> dict[str, list[Shed]]:
        return {
            sink: [Shed(m.first_seq, m.last_seq, m.count, m.reason)
                   for m in sorted(doc.markers, key=lambda m: m.first_seq)]
            for sink, doc in self.docs.items()
            if doc.markers
        }  # fmt: skip

    def dead_letters(self, seqs: Iterable[int]) -> list[DeadLetterRow]:
        wanted = set(seqs)
        return [
            DeadLetterRow(r.id, r.sink, r.seq, r.attempts, r.error, r.at, r.retrying_to)
            for _, r in self.log._call(self.log.dead_records())
            if r.seq in wanted
        ]

    def redeliveries(self, seqs: Iterable[int]) -> dict[tuple[str, int], RedeliveryRow]:
        wanted = set(seqs)
        return {
            (sink, seq): RedeliveryRow(queued.reason, queued.newer)
            for sink, doc in self.docs.items()
            for seq, queued in doc.queued.items()
            if seq in wanted
        }

    def retries(self) -> dict[tuple[str, int], Retry]:
        return {
            (sink, seq): Retry(seq, r.attempts, r.next_at, r.error)
            for sink, doc in self.docs.items()
            for seq, r in doc.retries.items()
        }

    def parked(self, objects: Sequence[tuple[str, str]]) -> dict[tuple[str, str, str], list[int]]:
        by_sink = {
            sink: sorted(seq for seq, q in doc.queued.items() if q.reason == "parked")
            for sink, doc in self.docs.items()
        }
        events = {
            e.seq: e for e in self.log.entries(sorted({s for v in by_sink.values() for s in v}))
        }
        wanted = set(objects)
        out: dict[tuple[str, str, str], list[int]] = {}
        for sink, seqs in by_sink.items():
            for seq in seqs:
                entry = events.get(seq)
                if entry is not None and lane(entry.event) in wanted:
                    out.setdefault((sink, *lane(entry.event)), []).append(seq)
        return out

    def entries_between(self, after: int, upto: int) -> list[LogEntry]:
        return self.log.entries_between(after, upto)

    def searched_from(self) -> int:
        return self.scanned_from

    def count_between(self, after: int, before: int) -> int:
        """Stream seqs have no holes: those below the first were purged."""
        return max(0, before - max(after, self.first - 1) - 1)
