"""Where is my event? For each event a query names, when and from where it arrived and, per
configured sink, what the log says became of it (`relay trace`, GET /admin/api/trace, the
status page).

Two steps: `read` takes what the log keeps about the events (the events, the cursors, dead
letters, redeliveries, retry schedules, the markers owed, how far retention pruned) on a
reader connection; `build` turns those rows into a `Trace`, without I/O. The routing rules
live outside relay/queue: the caller passes them in as `Routing`.

One state per sink, the first that holds:
- `dead-lettered`: the sink gave up on it (a retry of the dead letter may be under way);
- `retrying`: it failed and has a retry schedule (it heads its object's parked events, or
  the sink's cursor holds at it);
- `parked`: it waits behind the failing event of its object;
- `queued again`: a replay or a dead letter retried, waiting to be sent;
- `stale`: STALE=drop and the sink already had a newer event of its object (not sent);
- `filtered`: the rules do not send it to the sink (each rule's failing condition);
- `shed`: inside a range the sink will never get (ON_FULL=shed, a pruned range, a sink
  configured again), while its relay:MissedEvents marker is owed;
- `delivered`: the sink's cursor passed it and nothing above holds it;
- `waiting`: past the cursor (how many of the sink's events are ahead of it).

What the log cannot tell: how many duplicates were folded into an event (a sender's retry is
answered and not stored; nothing counts it per event); a shed range once its marker was
delivered (the marker's row goes: those events then read as delivered); the exact time of a
delivery (the cursor's last move is an upper bound for events sent in cursor order); an
event from before a sink started (START=latest: its cursor began past it); and staleness is
judged from the object's events the trace read (from `since`).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import msgspec

from relay.events import Event, lane, order_token
from relay.queue.admin import AdminError
from relay.queue.log import LogEntry, entry_from_row
from relay.queue.queries import Q

LIMIT = 20  # events of an object shown, the newest
AHEAD_SCAN = 200_000  # events read to count what is ahead of a waiting one, at most
SINCE_SLACK = 60.0  # seconds: a commit's time may run a little behind an earlier seq's
SCAN_CHUNK = 5_000

State = Literal[
    "delivered", "waiting", "parked", "retrying", "dead-lettered", "queued again", "stale",
    "filtered", "shed",
]  # fmt: skip
STATES: tuple[str, ...] = get_args(State)

_EVENT_ID = re.compile(r"[0-9a-f]{32}")


class TraceQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What to trace: one event by seq or event id, or the events of one object."""

    text: str  # as the operator wrote it
    seq: int | None = None
    event_id: str | None = None
    bucket: str | None = None
    key: str | None = None
    since: float | None = None  # only events received at or after (unix seconds)
    limit: int = LIMIT

    @classmethod
    def parse(cls, text: str, since: float | None = None, limit: int = LIMIT) -> TraceQuery:
        """An event id (32 hex digits), a seq, or bucket/key (AdminError otherwise)."""
        text = text.strip()
        if _EVENT_ID.fullmatch(text.lower()):
            return cls(text=text, event_id=text.lower(), since=since, limit=limit)
        if text.isdigit():
            return cls(text=text, seq=int(text), since=since, limit=limit)
        bucket, slash, key = text.partition("/")
        if slash and bucket and key:
            return cls(text=text, bucket=bucket, key=key, since=since, limit=limit)
        raise AdminError(
            f"{text!r} names no event: give an event id (32 hex digits), a seq, or "
            "bucket/key (the decoded key)"
        )


@dataclass(frozen=True)
class Routing:
    """What a trace needs of the configuration: the configured sinks, why the rules keep an
    event from a sink (None: they send it there; relay/rules.py Router.why_not_to), and each
    sink's STALE (deliver | flag | drop)."""

    sinks: Sequence[str]
    why_not: Callable[[str, Event], list[str] | None]
    stale: Mapping[str, str] = field(default_factory=dict)

    def routes(self, sink: str, event: Event) -> bool:
        return self.why_not(sink, event) is None


# -- the answer ----------------------------------------------------------------------------------


class Retry(msgspec.Struct, frozen=True):
    """A failing event's retry schedule."""

    seq: int
    attempts: int
    next_at: float
    error: str


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    attempts: int
    error: str
    at: float
    retrying_to: str | None  # a retry of it is under way, to this sink


class Shed(msgspec.Struct, frozen=True):
    """A range of seqs the sink will never get, whose relay:MissedEvents marker is owed."""

    first_seq: int
    last_seq: int
    count: int | None  # events of the range for the sink; None: not known (pruned)
    reason: str  # max_backlog | max_backlog_bytes | max_backlog_age | pruned | sink_removed


class SinkTrace(msgspec.Struct, frozen=True, kw_only=True):
    sink: str
    state: State
    detail: str  # the state in a line, for a terminal or the page
    why_not: list[str] = []  # filtered: the failing condition of each rule of the sink
    cursor: int | None = None  # the sink's cursor now
    delivered_by: float | None = None  # delivered: the cursor had passed it by then
    ahead: int | None = None  # waiting: the sink's events ahead of it past the cursor
    ahead_exact: bool = True  # False: `ahead` counts every event ahead, before rules
    paused: str | None = None  # the sink is paused: why (operator, pause_after)
    retry: Retry | None = None  # its own schedule, or the one of the event it waits behind
    dead_letter: DeadLetter | None = None
    queued: str | None = None  # queued again: dlq-retry | replay
    shed: Shed | None = None
    stale: bool = False  # the sink had (or has, by the time it is sent) a newer event of it


class EventTrace(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    event_id: str
    received_at: float
    source: str  # the ingest path it came in on
    dialect: str
    event_name: str
    bucket: str
    key: str
    size: int | None
    version_id: str | None
    sequencer: str | None
    # copies a sender sent again, answered and not stored: the log does not count them per
    # event, so this is None (relay_events_duplicate_total counts them all)
    duplicates: int | None = None
    sinks: list[SinkTrace] = []


class Trace(msgspec.Struct, frozen=True, kw_only=True):
    query: str
    since: float | None = None
    events: list[EventTrace] = []  # oldest first
    more: int = 0  # older events of the object that match but are not shown (limit)
    notes: list[str] = []  # what the log says when it holds no such event


# -- reading -------------------------------------------------------------------------------------


class CursorRow(msgspec.Struct, frozen=True):
    seq: int
    updated_at: float
    paused: str | None


class RedeliveryRow(msgspec.Struct, frozen=True):
    reason: str
    newer: str | None


class DeadLetterRow(msgspec.Struct, frozen=True):
    id: int
    sink: str
    seq: int
    attempts: int
    error: str
    at: float
    retrying_to: str | None


@dataclass
class TraceRows:
    """What the log keeps about the traced events, as read."""

    matched: list[LogEntry]  # the events the query names, oldest first
    more: int = 0  # further matching events not kept (older than the `limit` newest)
    history: dict[tuple[str, str], list[LogEntry]] = field(default_factory=dict)  # per object
    cursors: dict[str, CursorRow] = field(default_factory=dict)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    redeliveries: dict[tuple[str, int], RedeliveryRow] = field(default_factory=dict)
    retries: dict[tuple[str, int], Retry] = field(default_factory=dict)
    parked: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # sink, object
    missed: dict[str, list[Shed]] = field(default_factory=dict)
    ahead: dict[tuple[str, int], tuple[int, bool]] = field(default_factory=dict)
    pruned_upto: int = 0
    head: int = 0  # the highest seq in the log
    searched_from: int = 0  # the look-ups read from this seq on only (0: all of the log)


class TraceSource(Protocol):
    """What `read` asks of a log: the SQLite log answers with queries (`SqliteSource`), the
    replicated log from its stream and its sinks' documents
    (relay/queue/jetstream/trace.py). Synchronous: `read` runs on a thread of its own."""

    def by_seq(self, seq: int) -> list[LogEntry]: ...
    def by_event_id(self, event_id: str) -> list[LogEntry]: ...
    def of_object(self, bucket: str, key: str, from_seq: int, since: float) -> list[LogEntry]:
        """The object's events from `from_seq` on received at `since` or later, oldest
        first."""
        ...

    def first_seq_since(self, since: float) -> int:
        """About where the log reaches `since` (SINCE_SLACK early, never late)."""
        ...

    def pruned_upto(self) -> int: ...
    def head(self) -> int: ...
    def cursors(self) -> dict[str, CursorRow]: ...
    def missed(self) -> dict[str, list[Shed]]: ...
    def dead_letters(self, seqs: Iterable[int]) -> list[DeadLetterRow]:
        """Oldest first."""
        ...

    def redeliveries(self, seqs: Iterable[int]) -> dict[tuple[str, int], RedeliveryRow]: ...
    def retries(self) -> dict[tuple[str, int], Retry]: ...
    def parked(self, objects: Sequence[tuple[str, str]]) -> dict[tuple[str, str, str], list[int]]:
        """Per (sink, bucket, key), the object's parked seqs in order."""
        ...

    def entries_between(self, after: int, upto: int) -> list[LogEntry]: ...
    def count_between(self, after: int, before: int) -> int: ...
    def searched_from(self) -> int:
        """The oldest seq the look-ups read, when they could not read the whole log (a log
        without an index by object); 0 otherwise."""
        ...


def read(source: TraceSource, query: TraceQuery, routing: Routing) -> TraceRows:
    """Everything `build` needs, read from the log (read only)."""
    since = query.since if query.since is not None else float("-inf")
    from_seq = source.first_seq_since(query.since) if query.since is not None else 0
    if query.seq is not None:
        found = source.by_seq(query.seq)
    elif query.event_id is not None:
        found = source.by_event_id(query.event_id)
    else:
        found = source.of_object(query.bucket or "", query.key or "", from_seq, since)
    found = [e for e in found if e.received_at >= since]
    matched = found[-query.limit :] if query.limit > 0 else found
    rows = TraceRows(matched=matched, more=len(found) - len(matched))
    rows.pruned_upto = source.pruned_upto()
    rows.head = source.head()
    rows.cursors = source.cursors()
    rows.missed = source.missed()
    if not matched:
        rows.searched_from = source.searched_from()
        return rows
    # the objects' earlier events tell whether a sink had a newer one (stale)
    objects = sorted({lane(e.event) for e in matched})
    if query.bucket is not None:
        rows.history = {objects[0]: found}
    else:
        for bucket, key in objects:
            rows.history[(bucket, key)] = source.of_object(bucket, key, from_seq, since)
    seqs = {e.seq for events in rows.history.values() for e in events} | {e.seq for e in matched}
    rows.dead_letters = source.dead_letters(seqs)
    rows.redeliveries = source.redeliveries(e.seq for e in matched)
    rows.retries = source.retries()
    rows.parked = source.parked(objects)
    rows.ahead = _ahead(source, rows, routing)
    rows.searched_from = source.searched_from()
    return rows


class SqliteSource:
    """The SQLite log's answers, on a reader connection (relay/queue/queries.sql)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _named(self, query: str, params: Mapping[str, Any] | None = None) -> sqlite3.Cursor:
        """Rows read by column name (the readers' connections are shared: the row factory
        is the cursor's)."""
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(Q[query], params or {})

    def _entries(self, query: str, params: Mapping[str, Any]) -> list[LogEntry]:
        return [entry_from_row(row) for row in self.conn.execute(Q[query], params)]

    def by_seq(self, seq: int) -> list[LogEntry]:
        return self._entries("trace_by_seq", {"seq": seq})

    def by_event_id(self, event_id: str) -> list[LogEntry]:
        return self._entries("trace_by_event_id", {"event_id": event_id})

    def of_object(self, bucket: str, key: str, from_seq: int, since: float) -> list[LogEntry]:
        params = {"bucket": bucket, "key": key, "from_seq": from_seq, "since": since}
        return self._entries("trace_object", params)

    def first_seq_since(self, since: float) -> int:
        return _first_seq_since(self.conn, since)

    def pruned_upto(self) -> int:
        return int(self.conn.execute(Q["get_pruned_upto"]).fetchone()[0])

    def head(self) -> int:
        return int(self.conn.execute(Q["max_seq"]).fetchone()[0])

    def cursors(self) -> dict[str, CursorRow]:
        return {
            row["sink"]: CursorRow(row["seq"], row["updated_at"], row["paused"])
            for row in self._named("trace_cursors")
        }

    def missed(self) -> dict[str, list[Shed]]:
        out: dict[str, list[Shed]] = {}
        for row in self._named("trace_missed"):
            shed = Shed(row["first_seq"], row["last_seq"], row["count"], row["reason"])
            out.setdefault(row["sink"], []).append(shed)
        return out

    def dead_letters(self, seqs: Iterable[int]) -> list[DeadLetterRow]:
        rows = self._named("trace_dead_letters", {"seqs": _ids(seqs)})
        return [DeadLetterRow(**dict(row)) for row in rows]

    def redeliveries(self, seqs: Iterable[int]) -> dict[tuple[str, int], RedeliveryRow]:
        return {
            (row["sink"], row["seq"]): RedeliveryRow(row["reason"], row["newer"])
            for row in self._named("trace_redeliveries", {"seqs": _ids(seqs)})
        }

    def retries(self) -> dict[tuple[str, int], Retry]:
        return {
            (row["sink"], row["seq"]): Retry(
                row["seq"], row["attempts"], row["next_at"], row["last_error"]
            )
            for row in self._named("trace_retries")
        }

    def parked(self, objects: Sequence[tuple[str, str]]) -> dict[tuple[str, str, str], list[int]]:
        out: dict[tuple[str, str, str], list[int]] = {}
        for row in self._named("trace_parked_objects", {"objects": json.dumps(objects)}):
            out.setdefault((row["sink"], row["bucket"], row["key"]), []).append(row["seq"])
        return out

    def entries_between(self, after: int, upto: int) -> list[LogEntry]:
        return self._entries("entries_between", {"after": after, "upto": upto})

    def count_between(self, after: int, before: int) -> int:
        params = {"after": after, "before": before}
        return int(self.conn.execute(Q["count_between"], params).fetchone()[0])

    def searched_from(self) -> int:
        return 0  # indexes by seq, event id and object: every look-up reads the whole log


def _first_seq_since(conn: sqlite3.Connection, since: float) -> int:
    """About where the log reaches `since` (SINCE_SLACK early): the search by seq assumes
    received_at rises with seq, which a commit's time nearly does; the caller still keeps
    only events received at `since` or later."""
    want = since - SINCE_SLACK
    low, high = 0, int(conn.execute(Q["max_seq"]).fetchone()[0]) + 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(Q["event_at_or_after"], {"seq": middle}).fetchone()
        if row is None or row[1] >= want:
            high = middle
        else:
            low = row[0] + 1
    return low


def _ahead(
    source: TraceSource, rows: TraceRows, routing: Routing
) -> dict[tuple[str, int], tuple[int, bool]]:
    """For each (sink, seq) past the sink's cursor: how many events the rules send to the
    sink lie between its cursor and it (exact), or, past AHEAD_SCAN events to read, how many
    events of any kind (not exact)."""
    waiting = [
        (sink, entry.seq, rows.cursors[sink].seq)
        for entry in rows.matched
        for sink in routing.sinks
        if sink in rows.cursors and entry.seq > rows.cursors[sink].seq
    ]
    if not waiting:
        return {}
    low = min(cursor for _, _, cursor in waiting)
    high = max(seq for _, seq, _ in waiting)
    if high - low > AHEAD_SCAN:
        return {(sink, seq): (source.count_between(c, seq), False) for sink, seq, c in waiting}
    sinks = {sink: rows.cursors[sink].seq for sink, _, _ in waiting}
    theirs: dict[str, list[int]] = {sink: [] for sink in sinks}
    for start in range(low, high, SCAN_CHUNK):
        for entry in source.entries_between(start, min(start + SCAN_CHUNK, high - 1)):
            for sink, cursor in sinks.items():
                if entry.seq > cursor and routing.routes(sink, entry.event):
                    theirs[sink].append(entry.seq)
    return {(sink, seq): (bisect.bisect_left(theirs[sink], seq), True) for sink, seq, _ in waiting}


def _ids(seqs: Iterable[int]) -> str:
    return json.dumps(sorted({int(seq) for seq in seqs}))


# -- building ------------------------------------------------------------------------------------


def build(query: TraceQuery, rows: TraceRows, routing: Routing) -> Trace:
    """The trace of the events `rows` holds, per sink in `routing`'s order."""
    dead: dict[tuple[str, int], DeadLetterRow] = {}
    for letter in rows.dead_letters:  # the newest of a sink's for an event
        dead[(letter.sink, letter.seq)] = letter
    retried_from = {
        (letter.retrying_to, letter.seq): letter.sink
        for letter in rows.dead_letters
        if letter.retrying_to is not None
    }
    events = []
    for entry in rows.matched:
        e = entry.event
        sinks = [
            _sink_trace(entry, sink, rows, routing, dead, retried_from) for sink in routing.sinks
        ]
        events.append(EventTrace(
            seq=entry.seq, event_id=e.event_id, received_at=entry.received_at, source=e.source,
            dialect=e.dialect, event_name=e.event_name, bucket=e.bucket, key=e.key, size=e.size,
            version_id=e.version_id, sequencer=e.sequencer, sinks=sinks,
        ))  # fmt: skip
    notes = [] if events else _nothing(query, rows)
    return Trace(query=query.text, since=query.since, events=events, more=rows.more, notes=notes)


def _sink_trace(
    entry: LogEntry,
    sink: str,
    rows: TraceRows,
    routing: Routing,
    dead: Mapping[tuple[str, int], DeadLetterRow],
    retried_from: Mapping[tuple[str, int], str],
) -> SinkTrace:
    seq, event = entry.seq, entry.event
    cursor = rows.cursors.get(sink)
    common: dict[str, Any] = {
        "sink": sink,
        "cursor": cursor.seq if cursor else None,
        "paused": cursor.paused if cursor else None,
    }
    paused = f"; the sink is paused ({cursor.paused})" if cursor and cursor.paused else ""
    mode = routing.stale.get(sink, "flag")
    parked = rows.parked.get((sink, event.bucket, event.key), [])
    redelivery = rows.redeliveries.get((sink, seq))

    letter = dead.get((sink, seq))
    if letter is not None:
        info = DeadLetter(letter.id, letter.attempts, letter.error, letter.at, letter.retrying_to)
        if letter.retrying_to:
            again = rows.retries.get((letter.retrying_to, seq))
            how = f": it failed again {_attempts(again)}" if again else ""
            retry = f"a retry is under way to {letter.retrying_to}{how}"
        else:
            retry = f"no retry under way (relay dlq retry {letter.id})"
        return SinkTrace(
            state="dead-lettered", dead_letter=info, **common,
            detail=f"dead-lettered at {_time(letter.at)} after {letter.attempts} "
            f"attempt{_s(letter.attempts)}: {letter.error}; {retry}",
        )  # fmt: skip

    own = rows.retries.get((sink, seq))
    if redelivery is not None and redelivery.reason == "parked":
        if own is not None:
            return SinkTrace(
                state="retrying", retry=own, **common,
                detail=f"failed {_attempts(own)}; its object's later events are parked "
                f"behind it{paused}",
            )  # fmt: skip
        head = parked[0] if parked else seq
        behind = rows.retries.get((sink, head))
        if head >= seq:
            return SinkTrace(
                state="parked", **common,
                detail=f"parked; the events of its object before it went through: it goes "
                f"next{paused}",
            )  # fmt: skip
        if behind is None:
            return SinkTrace(
                state="parked", **common,
                detail=f"parked behind seq {head} of its object, which goes next{paused}",
            )  # fmt: skip
        return SinkTrace(
            state="parked", retry=behind, **common,
            detail=f"parked behind seq {head} of its object, which failed {_attempts(behind)}"
            f"{paused}",
        )  # fmt: skip

    if redelivery is not None:  # queued again: a replay, a dead letter retried
        stale = _older(event, redelivery.newer)
        why = {"replay": "replayed", "dlq-retry": "a dead letter retried"}.get(
            redelivery.reason, redelivery.reason
        )
        source = retried_from.get((sink, seq))
        if source is not None and source != sink:
            why = f"a dead letter of {source} retried"
        wait = (
            f"; its object is parked (behind seq {parked[0]}): it waits with it" if parked else ""
        )
        if stale and mode == "drop":
            return SinkTrace(
                state="stale", queued=redelivery.reason, stale=True, **common,
                detail=f"queued again ({why}), but the sink has since had a newer event of its "
                "object: it is dropped, not sent (STALE=drop)",
            )  # fmt: skip
        return SinkTrace(
            state="queued again", queued=redelivery.reason, stale=stale, **common,
            detail=f"queued again ({why}), sent ahead of new events{wait}"
            f"{_stale_note(stale, mode, 'has since had')}{paused}",
        )  # fmt: skip

    if own is not None:  # a failure where the cursor holds
        return SinkTrace(
            state="retrying", retry=own, **common,
            detail=f"failed {_attempts(own)}; the sink's cursor holds at it (nothing else "
            f"of the sink went through: the target is down, or MAX_PARKED is reached){paused}",
        )  # fmt: skip

    why_not = routing.why_not(sink, event)
    if why_not is not None:
        return SinkTrace(state="filtered", why_not=why_not, detail="; ".join(why_not), **common)

    shed = next((m for m in rows.missed.get(sink, ()) if m.first_seq <= seq <= m.last_seq), None)
    if shed is not None:
        return SinkTrace(state="shed", shed=shed, detail=_shed(shed), **common)

    if cursor is None:
        return SinkTrace(
            state="waiting", **common,
            detail="the sink has no cursor yet: the relay has not started it",
        )  # fmt: skip

    newer = _newer_had(entry, sink, rows, routing, dead)
    stale = newer is not None
    if seq <= cursor.seq:
        if stale and mode == "drop":
            return SinkTrace(
                state="stale", stale=True, delivered_by=cursor.updated_at, **common,
                detail=f"not sent: older than seq {newer} of its object, which the sink had "
                f"(STALE=drop); the cursor passed it by {_time(cursor.updated_at)}",
            )  # fmt: skip
        return SinkTrace(
            state="delivered", stale=stale, delivered_by=cursor.updated_at, **common,
            detail=f"delivered by {_time(cursor.updated_at)} (when the cursor, now at seq "
            f"{cursor.seq}, last moved){_stale_note(stale, mode, 'had', newer)}",
        )  # fmt: skip

    ahead, exact = rows.ahead.get((sink, seq), (0, True))
    counted = (f"{ahead} event{_s(ahead)} of the sink ahead of it" if exact else
               f"{ahead} event{_s(ahead)} of the log (before rules) ahead of it")  # fmt: skip
    held = rows.retries.get((sink, cursor.seq + 1))
    holds = f"; the cursor holds at seq {held.seq}, which failed {_attempts(held)}" if held else ""
    wait = (
        f"; its object is parked (behind seq {parked[0]}): it will wait with it" if parked else ""
    )
    return SinkTrace(
        state="waiting", ahead=ahead, ahead_exact=exact, retry=held, stale=stale, **common,
        detail=f"waiting past the cursor (seq {cursor.seq}): {counted}{paused}{holds}{wait}"
        f"{_stale_note(stale, mode, 'will have had', newer)}",
    )  # fmt: skip


def _older(event: Event, newer: str | None) -> bool:
    token = order_token(event)
    return token is not None and newer is not None and token < newer


def _newer_had(
    entry: LogEntry,
    sink: str,
    rows: TraceRows,
    routing: Routing,
    dead: Mapping[tuple[str, int], DeadLetterRow],
) -> int | None:
    """The seq of an earlier event of the object, for the sink and not dead-lettered by it,
    whose order token is newer: the sink had it first, so this one is stale (None: not)."""
    token = order_token(entry.event)
    if token is None:
        return None
    for earlier in rows.history.get(lane(entry.event), ()):
        if earlier.seq >= entry.seq:
            break
        other = order_token(earlier.event)
        if (
            other is not None
            and other > token
            and (sink, earlier.seq) not in dead
            and routing.routes(sink, earlier.event)
        ):
            return earlier.seq
    return None


def _stale_note(stale: bool, mode: str, had: str, newer: int | None = None) -> str:
    """`had` says when the sink had the newer event: before this one went ("had"), or
    before it goes."""
    if not stale:
        return ""
    which = f" (seq {newer})" if newer is not None else ""
    verb = "was" if had == "had" else "will be"
    action = {"flag": f"{verb} marked stale (STALE=flag)", "drop": f"{verb} dropped (STALE=drop)"}
    done = action.get(mode, f"{verb} sent as it is (STALE=deliver)")
    return f"; stale: the sink {had} a newer event of its object{which}: it {done}"


_SHED = {
    "max_backlog": "past the sink's MAX_BACKLOG (ON_FULL=shed)",
    "max_backlog_bytes": "past the sink's MAX_BACKLOG_BYTES (ON_FULL=shed)",
    "max_backlog_age": "past the sink's MAX_BACKLOG_AGE (ON_FULL=shed)",
    "pruned": "retention pruned them before the sink had them",
    "sink_removed": "they arrived while the sink was not configured",
}


def _shed(m: Shed) -> str:
    count = f"{m.count} event{_s(m.count)} of the sink" if m.count is not None else "the events"
    return (
        f"shed: {_SHED.get(m.reason, m.reason)}; one of {count} in seqs {m.first_seq}.."
        f"{m.last_seq}, for which the sink is owed a relay:MissedEvents marker"
    )


def _nothing(query: TraceQuery, rows: TraceRows) -> list[str]:
    """What the log says when no event matched."""
    since = f" received since {_time(query.since)}" if query.since is not None else ""
    if query.seq is not None:
        seq = query.seq
        if seq > rows.head:
            notes = [f"no event has seq {seq}: the newest in the log is seq {rows.head}"]
        elif seq <= rows.pruned_upto:
            notes = [f"seq {seq} is no longer in the log: retention pruned it (every event up "
                     f"to seq {rows.pruned_upto} that nothing pinned is gone)"]  # fmt: skip
        elif since:
            notes = [f"seq {seq} was not{since}"]
        else:
            notes = [f"no event has seq {seq}: a duplicate that was not stored used the "
                     "number up (seqs have holes)"]  # fmt: skip
        for sink, ranges in sorted(rows.missed.items()):
            for m in ranges:
                if m.first_seq <= seq <= m.last_seq:
                    notes.append(f"{sink}: {_shed(m)}")
        return notes
    searched = (
        [f"the log has no index by object: only seqs {rows.searched_from}..{rows.head}, the "
         "newest, were searched"]
        if rows.searched_from > rows.pruned_upto + 1 else []
    )  # fmt: skip
    if query.event_id is not None:
        return [f"no event with id {query.event_id} in the log{since}: it never arrived, "
                "RELAY_INGEST_EVENTS left it out, or retention pruned it", *searched]  # fmt: skip
    return [f"no event of {query.bucket}/{query.key} in the log{since} (the key is the "
            "decoded one; retention may have pruned older events)", *searched]  # fmt: skip


def _attempts(r: Retry) -> str:
    return (f"{r.attempts} time{_s(r.attempts)}, next attempt at {_time(r.next_at)}, last "
            f"error: {r.error}")  # fmt: skip


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):  # past what a calendar date can say
        return f"{ts:g} (unix seconds)"


def _s(n: int | None) -> str:
    return "" if n == 1 else "s"
