"""A sink's parked objects, in memory: the mirror of its `parked` redeliveries in the log.

An object is parked when one of its events failed while the sink's other objects went on:
that event and every later one of the object wait here, in seq order, and the first of them
carries the retry schedule. The log holds the same (rows written in the same transaction as
the round that parked them); this copy is loaded once at start and kept in step by the
dispatcher, so a round never reads the log to learn whether an object is parked.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from relay.queue.log import ParkedRow

Lane = tuple[str, str]


class Parked:
    def __init__(self) -> None:
        self._lanes: dict[Lane, list[int]] = {}
        self._due: dict[Lane, float] = {}  # next attempt of each lane's first event
        self._failing: set[Lane] = set()  # its first event failed last time: send it alone
        self._lane_of: dict[int, Lane] = {}

    def __len__(self) -> int:
        return len(self._lane_of)

    def __contains__(self, lane: Lane) -> bool:
        return lane in self._lanes

    @property
    def objects(self) -> int:
        return len(self._lanes)

    def load(self, rows: Iterable[ParkedRow]) -> None:
        for row in rows:
            self.add(row.seq, (row.bucket, row.key))
            if row.next_at is not None:
                self.schedule(row.seq, row.next_at)

    def add(self, seq: int, lane: Lane) -> None:
        if seq in self._lane_of:
            return
        self._lane_of[seq] = lane
        bisect.insort(self._lanes.setdefault(lane, []), seq)
        self._due.setdefault(lane, 0.0)

    def schedule(self, seq: int, next_at: float) -> None:
        lane = self._lane_of.get(seq)
        if lane is not None and self._lanes[lane][0] == seq:
            self._due[lane] = next_at
            self._failing.add(lane)

    def remove(self, seq: int) -> None:
        lane = self._lane_of.pop(seq, None)
        if lane is None:
            return
        queue = self._lanes[lane]
        was_head = queue[0] == seq
        queue.remove(seq)
        if not queue:
            del self._lanes[lane], self._due[lane]
            self._failing.discard(lane)
        elif was_head:
            self._due[lane] = 0.0  # the next event of the object may go at once
            self._failing.discard(lane)

    def due(self, now: float, limit: int) -> list[int]:
        """Seqs of the objects whose next attempt is due, each object's in order, up to
        `limit` events (an object that does not fit whole goes with its first events). An
        object whose first event failed last time sends that one alone: its others would
        only be held back behind it again."""
        seqs: list[int] = []
        for lane, at in sorted(self._due.items(), key=lambda item: item[1]):
            if at > now or len(seqs) >= limit:
                break
            take = 1 if lane in self._failing else limit - len(seqs)
            seqs += self._lanes[lane][:take]
        return sorted(seqs)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def heads(self) -> list[tuple[Lane, int, float]]:
        """(object, its first parked seq, next attempt), soonest first."""
        return sorted(
            ((lane, self._lanes[lane][0], at) for lane, at in self._due.items()),
            key=lambda item: item[2],
        )
