"""What a round of delivery did, decided without I/O: which events are done, which are
dead-lettered, which wait for an earlier event of their object (parked), where the cursor
goes, and what is sent again to keep an object's order.

A round carries events from outside the cursor (parked objects whose retry is due, and
redeliveries an operator queued) ahead of the next events past the cursor. The rules, per
object (lane), in the order the round handed the events over:
- delivered → done; a permanent failure, or a retryable one past MAX_ATTEMPTS/MAX_AGE →
  dead letter, and the lane goes on (a dead letter never holds its object back);
- the first retryable failure blocks the lane: that event gets a persisted retry schedule
  and it and every later event of the object are parked; a later one the target already
  acknowledged is sent again after it (a resend, counted).
The cursor then moves past everything the round read: the parked events wait in the log,
per object, on their own schedule, and the other objects go on. Two exceptions hold the
cursor instead, with a retry schedule for the event it holds at: nothing of the round went
through (the target is down, not one object's events: hold at the first failure read from
the cursor), or parking would pass the sink's MAX_PARKED (objects are parked in order while
they fit; hold at the first that does not). Whatever the round read past that point is
read and sent again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.delivery.lanes import by_lane
from relay.queue.log import LogEntry, Settlement
from relay.sinks.base import NotSent, Permanent, Result, Retryable, exc_text


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int = 0
    max_age: float = 0.0
    backoff_max: float = 30.0
    max_parked: int = 10_000
    schedule: tuple[float, ...] = ()  # RETRY_SCHEDULE: the waits after attempt 1, 2, …


@dataclass(slots=True)
class Round:
    """One round's events and what became of them."""

    sink: str
    sent: list[LogEntry]
    results: list[Result]
    redelivered: frozenset[int] = frozenset()  # seqs of events from outside the cursor
    held: list[LogEntry] = field(default_factory=list)  # not sent: their object is parked
    dropped: list[LogEntry] = field(default_factory=list)  # stale, STALE=drop
    scan_end: int | None = None  # the last seq read past the cursor; None: none was read
    prior: dict[int, tuple[int, float]] = field(default_factory=dict)  # seq → attempts, first
    parked: int = 0  # events of the sink parked before this round


@dataclass(slots=True)
class Outcome:
    settlement: Settlement
    delivered: list[LogEntry] = field(default_factory=list)
    dead: list[tuple[LogEntry, int, str]] = field(default_factory=list)
    failing: list[tuple[LogEntry, int, float, str]] = field(default_factory=list)  # heads
    parked: list[LogEntry] = field(default_factory=list)  # waiting after this round
    dropped: list[LogEntry] = field(default_factory=list)  # stale, not sent (STALE=drop)
    resends: int = 0  # acknowledged events that will be sent again, after an earlier one
    held_at: LogEntry | None = None  # the cursor holds before this event

    @property
    def progressed(self) -> bool:
        return bool(self.delivered or self.dead)


def backoff(attempts: int, cap: float) -> float:
    """Exponential with full jitter: uniform in [0, min(cap, 2^(attempts-1)) s]."""
    return random.uniform(0.0, min(cap, 2.0 ** min(max(0, attempts - 1), 62)))


def retry_delay(limits: Limits, attempts: int) -> float:
    """The wait after the `attempts`-th failure: the schedule's step (its last repeats), as
    written, or the exponential backoff."""
    if limits.schedule:
        return limits.schedule[min(max(attempts, 1), len(limits.schedule)) - 1]
    return backoff(attempts, limits.backoff_max)


def exhausted(limits: Limits, entry: LogEntry, attempts: int, now: float) -> bool:
    return bool(
        (limits.max_attempts and attempts >= limits.max_attempts)
        or (limits.max_age and now - entry.received_at >= limits.max_age)
    )


def unfinished(batch: Sequence[LogEntry], results: Sequence[Result]) -> list[int]:
    """Indexes to send again in an in-process retry: per object, from its first retryable
    failure on, acknowledged or not (an acknowledged one must follow the failed one)."""
    todo: list[int] = []
    for indexes in by_lane(batch).values():
        for position, index in enumerate(indexes):
            if isinstance(results[index], Retryable):
                todo.extend(indexes[position:])
                break
    return sorted(todo)


def plan(r: Round, limits: Limits, now: float) -> Outcome:
    s = Settlement(r.sink)
    out = Outcome(s)
    # per failing object: its first failure (the head) and what must follow it
    failing: list[tuple[tuple[LogEntry, int, float, str], list[tuple[LogEntry, Result]]]] = []
    for indexes in by_lane(r.sent).values():
        behind: list[tuple[LogEntry, Result]] | None = None
        for index in indexes:
            entry, result = r.sent[index], r.results[index]
            if behind is not None:
                behind.append((entry, result))
                continue
            if result is None:
                out.delivered.append(entry)
                continue
            attempts, first_at = r.prior.get(entry.seq, (0, now))
            attempts += 0 if isinstance(result, NotSent) else 1
            if isinstance(result, Permanent) or exhausted(limits, entry, attempts, now):
                out.dead.append((entry, max(attempts, 1), exc_text(result)))
                continue
            behind = []
            failing.append(((entry, attempts, first_at, exc_text(result)), behind))

    hold = _hold_at(r, out, failing, limits)
    held = r.held
    out.dropped = r.dropped
    if hold is not None:
        # what the round read from the cursor past `cut` is read again; the rest stands
        cut = hold[0].seq
        out.held_at = hold[0]

        def stands(seq: int) -> bool:
            return seq < cut or seq in r.redelivered

        out.delivered = [e for e in out.delivered if stands(e.seq)]
        out.dead = [d for d in out.dead if stands(d[0].seq)]
        out.dropped = [e for e in r.dropped if stands(e.seq)]
        out.resends = sum(
            1 for e, res in zip(r.sent, r.results) if not stands(e.seq) and res is None
        )
        failing = [f for f in failing if stands(f[0][0].seq)]
        held = [e for e in r.held if stands(e.seq)]

    heads = [head for head, _ in failing] + ([hold] if hold is not None else [])
    for entry, attempts, first_at, error in heads:
        next_at = now + retry_delay(limits, attempts)
        s.retries.append((entry.seq, attempts, first_at, next_at, error))
    out.failing = heads
    out.parked = [head[0] for head, _ in failing]
    out.parked += [e for _, behind in failing for e, _ in behind] + held
    out.resends += sum(1 for _, behind in failing for _, res in behind if res is None)
    s.park = sorted(e.seq for e in out.parked)
    s.dead = [(e.seq, attempts, error) for e, attempts, error in out.dead]
    finished = [*out.delivered, *(e for e, _, _ in out.dead), *out.dropped]
    s.done = sorted(e.seq for e in finished if e.seq in r.redelivered)
    if r.scan_end is not None:
        s.cursor = hold[0].seq - 1 if hold is not None else r.scan_end
    return out


def _hold_at(
    r: Round,
    out: Outcome,
    failing: list[tuple[tuple[LogEntry, int, float, str], list[tuple[LogEntry, Result]]]],
    limits: Limits,
) -> tuple[LogEntry, int, float, str] | None:
    """Where the cursor holds, if it does: at the first failure read from the cursor when
    nothing of the round went through, or at the first failing object that parking would
    take past MAX_PARKED. Objects that fit are parked (they stay in `failing`)."""
    fresh = sorted(
        (f for f in failing if f[0][0].seq not in r.redelivered), key=lambda f: f[0][0].seq
    )
    if r.scan_end is None or not fresh:
        return None
    if not out.progressed:
        failing[:] = [f for f in failing if f[0][0].seq in r.redelivered]
        return fresh[0][0]
    room = limits.max_parked - r.parked
    for position, (head, behind) in enumerate(fresh):
        room -= 1 + len(behind)
        if room < 0:
            cut = {f[0][0].seq for f in fresh[position:]}
            failing[:] = [f for f in failing if f[0][0].seq not in cut]
            return head
    return None
