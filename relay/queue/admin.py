"""Operator actions on the SQLite log, in SQL: dead letters, quarantine, replay.

The SQLite log's operator methods (relay/queue/log.py, the `LogBackend` interface) are built
of these: reads (`select_*`, `show_*`, a replay's selection, the stale tokens, re-parsing a
quarantined body) take any connection and run on a reader thread; writes (`*_tx`) take a
connection already inside a transaction and run in the log writer's next one. The CLI opens
the log as a client next to a running relay: its writer and the relay's are serialised by
SQLite's lock, and the relay's dispatchers pick up queued redeliveries within a second.

`progress`, where taken, is called as `progress(done, total)` while the work goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from relay.config import parse_duration
from relay.events import Event, Unparseable, lane, order_token, parse_body
from relay.queue.log import AppendResult, LogEntry, entry_from_row
from relay.queue.queries import Q


class AdminError(Exception):
    pass


class NotFound(AdminError):
    """The named dead letter or quarantined body does not exist."""


Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    pass


# -- dead letters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterFilter:
    """The dead letters an operator action covers: every filter given must hold."""

    id: int | None = None
    sink: str | None = None  # the sink that gave up on the event (any case)
    bucket: str | None = None
    prefix: str | None = None  # of the decoded key
    since: float | None = None  # dead-lettered at or after (unix seconds)
    until: float | None = None  # … and before
    error: str | None = None  # a substring of the last error (any case)

    @property
    def narrows(self) -> bool:
        """Whether it names anything, rather than every dead letter."""
        return any(v is not None for v in dataclasses.astuple(self))


EVERY_DEAD_LETTER = DeadLetterFilter()


@dataclass(frozen=True)
class DeadLetter:
    id: int
    sink: str
    seq: int
    attempts: int
    error: str
    at: float
    event_name: str | None
    bucket: str | None
    key: str | None
    retrying_to: str | None = None  # the sink its redelivery is queued for, until finished

    @property
    def state(self) -> str:
        return f"being retried to {self.retrying_to}" if self.retrying_to else "waiting"


_DEAD_LETTER_FIELDS = [f.name for f in dataclasses.fields(DeadLetter)]


def _named(conn: sqlite3.Connection, query: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
    """A query whose rows are read by column name (whatever the connection's row factory,
    which the relay's readers share)."""
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(Q[query], params)


def select_dead_letters(
    conn: sqlite3.Connection, which: DeadLetterFilter | None = None, limit: int = -1
) -> list[DeadLetter]:
    params = {**dataclasses.asdict(which or EVERY_DEAD_LETTER), "limit": limit}
    return [
        DeadLetter(**{name: row[name] for name in _DEAD_LETTER_FIELDS})
        for row in _named(conn, "select_dead_letters", params)
    ]


def list_dead_letters(
    conn: sqlite3.Connection, which: DeadLetterFilter | str | None, limit: int
) -> list[DeadLetter]:
    """The dead letters `which` names, oldest first (a sink's name alone: that sink's)."""
    if not isinstance(which, DeadLetterFilter):
        which = DeadLetterFilter(sink=which)
    return select_dead_letters(conn, which, limit)


def show_dead_letter(conn: sqlite3.Connection, dlq_id: int) -> dict[str, Any]:
    row = _named(conn, "get_dead_letter", {"id": dlq_id}).fetchone()
    if row is None:
        raise NotFound(f"no dead letter {dlq_id}")
    out = dict(row)
    out["record"] = bytes(out["record"]).decode("utf-8", "replace") if out["record"] else None
    out["state"] = DeadLetter(**{k: out[k] for k in _DEAD_LETTER_FIELDS}).state
    return out


# the target sink's rules: (sink, entry) → whether the sink would have had it
Routes = Callable[[str, LogEntry], bool]


@dataclass(frozen=True)
class RetryPlan:
    """What a dead-letter retry queues: each dead letter with the sink it goes to."""

    letters: list[tuple[DeadLetter, str]]

    def by_sink(self) -> dict[str, int]:
        """How many go to each sink (a dry run's answer)."""
        counts: dict[str, int] = {}
        for _, target in self.letters:
            counts[target] = counts.get(target, 0) + 1
        return dict(sorted(counts.items()))


def plan_dead_letter_retry(
    conn: sqlite3.Connection, which: DeadLetterFilter | None, to: str | None = None
) -> RetryPlan:
    """The dead letters `which` names, each for `to` (default: its own sink), leaving out
    those already being retried to that sink (their redelivery is queued). Read only: a
    dry run is this."""
    letters = [
        (letter, to or letter.sink)
        for letter in select_dead_letters(conn, which)
        if letter.retrying_to != (to or letter.sink)
    ]
    return RetryPlan(letters)


def dead_letter_retry_reads(
    conn: sqlite3.Connection,
    which: DeadLetterFilter | None,
    to: str | None = None,
    routes: Routes | None = None,
) -> tuple[RetryPlan, dict[tuple[str, int], str | None]]:
    """What a retry queues, and for each (target sink, seq) the newest order token its
    object has had at that sink since (the stale check; `routes`: the sinks' rules, so what
    they kept away does not count as had). Read only."""
    plan = plan_dead_letter_retry(conn, which, to)
    seqs_by_sink: dict[str, list[int]] = {}
    for letter, target in plan.letters:
        seqs_by_sink.setdefault(target, []).append(letter.seq)
    newer: dict[tuple[str, int], str | None] = {}
    for target, seqs in seqs_by_sink.items():
        accept = functools.partial(routes, target) if routes else None
        for seq, token in newer_tokens(conn, target, seqs, accept).items():
            newer[(target, seq)] = token
    return plan, newer


def queue_dead_letter_retry_tx(
    conn: sqlite3.Connection,
    plan: RetryPlan,
    newer: Mapping[tuple[str, int], str | None],
    progress: Progress | None = None,
) -> int:
    """Queue the planned redeliveries, inside the caller's transaction. The dead letters
    stay, marked as being retried, until the delivery loop finishes their redelivery
    (queries.sql finish_retried_dead_letters). Returns how many were queued."""
    for done, (letter, target) in enumerate(plan.letters, 1):
        conn.execute(
            Q["requeue_dead_letter"],
            {"sink": target, "seq": letter.seq, "newer": newer.get((target, letter.seq))},
        )
        conn.execute(Q["mark_dead_letter_retrying"], {"id": letter.id, "sink": target})
        if progress:
            progress(done, len(plan.letters))
    return len(plan.letters)


def retry_dead_letters_tx(
    conn: sqlite3.Connection,
    which: DeadLetterFilter | None,
    to: str | None = None,
    progress: Progress = _no_progress,
    *,
    routes: Routes | None = None,
) -> int:
    """Queue dead letters (those `which` names; None: all) for redelivery to `to`, any
    configured sink (default: each one's own sink), inside the caller's transaction."""
    plan, newer = dead_letter_retry_reads(conn, which, to, routes)
    return queue_dead_letter_retry_tx(conn, plan, newer, progress)


def newer_tokens(
    conn: sqlite3.Connection,
    sink: str,
    seqs: Sequence[int],
    accept: Callable[[LogEntry], bool] | None = None,
) -> dict[int, str | None]:
    """For events about to be sent to `sink` again: the newest order token of the same
    object among the events the sink has had since each of them (None: nothing newer), so
    delivery can tell a stale one. One pass over the log from the oldest of them to the
    sink's cursor. `accept`: the sink's rules (an event they keep away was not had)."""
    if not seqs:
        return {}
    again = [entry_from_row(r) for r in conn.execute(Q["entries_by_seq"], {"seqs": _ids(seqs)})]
    objects = sorted({lane(e.event) for e in again})
    later = [
        entry_from_row(r)
        for r in conn.execute(
            Q["later_events_of"],
            {"sink": sink, "after": min(seqs), "objects": json.dumps(objects)},
        )
    ]
    return newest_since(again, later, accept)


def newest_since(
    again: Sequence[LogEntry],
    later: Iterable[LogEntry],
    accept: Callable[[LogEntry], bool] | None = None,
) -> dict[int, str | None]:
    """For each event of `again`, the newest order token among the events of its object in
    `later` (what the sink has had) that came after it (None: nothing newer)."""
    tokens: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for entry in later:
        token = order_token(entry.event)
        if token is not None and (accept is None or accept(entry)):
            tokens.setdefault(lane(entry.event), []).append((entry.seq, token))
    result: dict[int, str | None] = {}
    for entry in again:
        after = [t for seq, t in tokens.get(lane(entry.event), ()) if seq > entry.seq]
        result[entry.seq] = max(after, default=None)
    return result


def _ids(seqs: Sequence[int]) -> str:
    return json.dumps([int(seq) for seq in seqs])


def purge_dead_letters_tx(conn: sqlite3.Connection, which: DeadLetterFilter | None) -> int:
    """Delete the dead letters `which` names, whatever their state: a redelivery already
    queued for one still goes ahead."""
    letters = select_dead_letters(conn, which)
    for letter in letters:
        conn.execute(Q["delete_dead_letter"], {"id": letter.id})
    return len(letters)


# -- quarantine ---------------------------------------------------------------------------------


def list_quarantine(conn: sqlite3.Connection, limit: int) -> list[tuple[Any, ...]]:
    return conn.execute(Q["list_quarantine"], (limit,)).fetchall()


def show_quarantine(conn: sqlite3.Connection, qid: int) -> dict[str, Any]:
    row = _named(conn, "get_quarantine", {"id": qid}).fetchone()
    if row is None:
        raise NotFound(f"no quarantined body {qid}")
    return {
        "id": row["id"],
        "received_at": row["received_at"],
        "source": row["source"],
        "reason": row["reason"],
        "headers": json.loads(row["headers"]),
        "body": bytes(row["body"]).decode("utf-8", "replace"),
    }


@dataclass(frozen=True)
class QuarantineRetry:
    id: int
    ok: bool
    detail: str


def quarantine_ids(conn: sqlite3.Connection, qid: int | None) -> list[int]:
    """The bodies a retry covers: `qid`, or all of them."""
    return [qid] if qid is not None else [r[0] for r in conn.execute(Q["list_quarantine"], (-1,))]


def reparse_quarantined(conn: sqlite3.Connection, qid: int) -> list[Event] | QuarantineRetry:
    """Parse one quarantined body of the SQLite log again (read only)."""
    row = _named(conn, "get_quarantine", {"id": qid}).fetchone()
    if row is None:
        return QuarantineRetry(qid, False, "no such quarantined body")
    return reparse(qid, row["source"], row["headers"], bytes(row["body"]))


def reparse(qid: int, source: str, headers: str, body: bytes) -> list[Event] | QuarantineRetry:
    """A quarantined body parsed again, whichever log kept it: its events, or why it stays."""
    fields = CIMultiDict((k, v) for k, v in json.loads(headers).items() if isinstance(v, str))
    try:
        parsed = parse_body(body, fields, source)
    except Unparseable as exc:
        return QuarantineRetry(qid, False, f"still unreadable: {exc.reason}")
    return list(parsed.events)


async def retry_quarantined(
    items: Iterable[int],
    reparse: Callable[[int], Awaitable[list[Event] | QuarantineRetry]],
    append: Callable[[list[Event]], Awaitable[AppendResult]],
    drop: Callable[[int], Awaitable[object]],
    select: Select | None = None,
) -> list[QuarantineRetry]:
    """The retry of quarantined bodies on either log: the events of a body that now parses
    go into the log as ingest's do (`append`), then the body leaves quarantine (`drop`). A
    crash between the two leaves it there, and retrying again stores nothing twice: the
    log refuses an event id it holds."""
    results = []
    for item in items:
        parsed = await reparse(item)
        if isinstance(parsed, QuarantineRetry):
            results.append(parsed)
            continue
        events, left_out = select(parsed) if select else (parsed, 0)
        accepted = (await append(events)).accepted if events else 0
        await drop(item)
        results.append(QuarantineRetry(item, True, ingested(accepted, left_out)))
    return results


def drop_quarantined_tx(conn: sqlite3.Connection, qid: int) -> None:
    conn.execute(Q["delete_quarantine"], (qid,))


# RELAY_INGEST_EVENTS (relay/ingest.py IngestFilter.split): the events to store, and how
# many were left out
Select = Callable[[list[Event]], tuple[list[Event], int]]


def ingested(accepted: int, left_out: int) -> str:
    """What a quarantine retry did with a body that now parses."""
    outside = f", {left_out} outside RELAY_INGEST_EVENTS not stored" if left_out else ""
    return f"{accepted} event(s) accepted{outside}"


# -- replay -------------------------------------------------------------------------------------


def replay_selection(
    conn: sqlite3.Connection,
    since: float,
    until: float,
    bucket: str | None,
    prefix: str | None,
    accept: Callable[[LogEntry], bool],
    progress: Progress | None = None,
) -> list[int]:
    """The seqs of the log's events in [since, until) that pass the filters and `accept`
    (the target sink's rules, unless the operator overrides them). Read only."""
    args = (since, until, bucket, bucket, prefix, prefix, prefix)
    total = conn.execute(Q["replay_count"], args).fetchone()[0] if progress else 0
    seqs = []
    for done, row in enumerate(conn.execute(Q["replay_select"], args), 1):
        entry = entry_from_row(row)
        if accept(entry):
            seqs.append(entry.seq)
        if progress:
            progress(done, max(total, done))
    return seqs


def queue_redeliveries_tx(
    conn: sqlite3.Connection,
    sink: str,
    seqs: Sequence[int],
    reason: str = "replay",
    newer: Mapping[int, str | None] | None = None,
) -> int:
    """Queue events for redelivery to `sink` (any configured sink, not only the one that
    got them first), inside the caller's transaction; events no longer in the log and
    those already queued are skipped. `newer`: from `newer_tokens`. Returns how many were
    queued."""
    insert = Q["insert_redelivery_if_present"]
    tokens = newer or {}
    return sum(
        conn.execute(
            insert, {"sink": sink, "reason": reason, "seq": seq, "newer": tokens.get(seq)}
        ).rowcount
        for seq in seqs
    )


def parse_when(text: str, now: float) -> float:
    """An RFC 3339 time, or a duration ago (`2h`), as unix seconds."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"{text!r} is neither an RFC 3339 time nor a duration") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
