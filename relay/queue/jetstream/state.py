"""What the replicated log keeps of a sink besides its events: one document per sink in a
key-value bucket, written whole by the replica that holds the sink (compare-and-set on its
revision), so that a settlement is one write, as it is one transaction on SQLite.

The document holds the cursor, the retry schedules, the events queued outside the cursor's
order (parked, dead letters retried, replays), the markers owed, the pause and the run of
failures. Dead letters live in a bucket of their own (relay/queue/jetstream/log.py): they
are many, long-lived and read by operators, not by the delivery loop.
"""

from __future__ import annotations

import msgspec

from relay.queue.log import Missed, Settlement


class Retry(msgspec.Struct, array_like=True):
    attempts: int
    first_at: float
    next_at: float
    error: str


class Queued(msgspec.Struct, array_like=True):
    """An event to hand outside the cursor's order."""

    reason: str  # parked | dlq-retry | replay
    newer: str | None = None  # the object's newest order token the sink had when queued
    # keys of the dead letters (in the dead-letter bucket) this redelivery retries
    letters: list[str] = []


class Marker(msgspec.Struct, array_like=True):
    id: int
    first_seq: int
    last_seq: int
    count: int | None
    first_at: float | None
    last_at: float | None
    reason: str

    def missed(self) -> Missed:
        return Missed(
            self.first_seq, self.last_seq, self.count, self.first_at, self.last_at,
            self.reason, self.id,
        )  # fmt: skip


class SinkDoc(msgspec.Struct, kw_only=True):
    cursor: int = 0
    cursor_at: float = 0.0
    holder: str = ""  # the replica that last took the sink
    paused: str | None = None
    paused_at: float | None = None
    failing_since: float | None = None
    orphaned_at: float | None = None
    retries: dict[int, Retry] = {}
    queued: dict[int, Queued] = {}
    markers: list[Marker] = []
    next_marker: int = 1


ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(SinkDoc)


def apply(doc: SinkDoc, s: Settlement, now: float) -> list[str]:
    """`s` applied to `doc` (in place), as relay/queue/log.py `_settle` does to the tables;
    returns the keys of the dead letters a finished redelivery retried (they leave)."""
    finished_letters: list[str] = []
    for seq, _attempts, _error in s.dead:
        doc.retries.pop(seq, None)
        doc.queued.pop(seq, None)
    for seq in s.done:
        done = doc.queued.pop(seq, None)
        doc.retries.pop(seq, None)
        if done is not None:
            finished_letters += done.letters
    for seq in s.park:
        current = doc.queued.get(seq)
        doc.queued[seq] = Queued("parked", current.newer if current else None,
                                 current.letters if current else [])  # fmt: skip
    if s.cursor is not None:
        doc.cursor = max(doc.cursor, s.cursor)
        doc.cursor_at = now
        for seq in [q for q in doc.retries if q <= s.cursor and q not in doc.queued]:
            del doc.retries[seq]
    for seq, attempts, first_at, next_at, error in s.retries:
        kept = doc.retries.get(seq)
        doc.retries[seq] = Retry(attempts, kept.first_at if kept else first_at, next_at, error)
    if s.missed is not None:
        m = s.missed
        last = next(
            (k for k in reversed(doc.markers)
             if k.reason == m.reason and k.last_seq == m.first_seq - 1),
            None,
        )  # fmt: skip
        if last is not None:
            last.last_seq = m.last_seq
            if last.count is not None or m.count is not None:
                last.count = (last.count or 0) + (m.count or 0)
            last.first_at = last.first_at if last.first_at is not None else m.first_at
            last.last_at = m.last_at if m.last_at is not None else last.last_at
        else:
            doc.markers.append(Marker(doc.next_marker, m.first_seq, m.last_seq, m.count,
                                      m.first_at, m.last_at, m.reason))  # fmt: skip
            doc.next_marker += 1
    if s.markers_done:
        gone = set(s.markers_done)
        doc.markers = [k for k in doc.markers if k.id not in gone]
    return finished_letters
