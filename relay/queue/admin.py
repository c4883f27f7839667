"""Operator actions on the log: dead letters, quarantine, replay.

One code path for the CLI and the admin HTTP API. Every write is a body that takes a
connection already inside a transaction (`*_tx`): the admin API runs it in the log writer's
next transaction (`Log.write`), so it never contends with the relay's own writer; the CLI
runs it through the wrapper of the same name without `_tx`, in its own process and its own
`BEGIN IMMEDIATE` transaction, next to a running relay (SQLite serialises the two writers
with busy_timeout; the relay's dispatchers pick up queued redeliveries within a second).
Reads (`list_*`, `show_*`, the selection of a replay, re-parsing a quarantined body) take
any connection, a read-only one included.

`progress`, where taken, is called as `progress(done, total)` while the work goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from relay.config import parse_duration
from relay.events import Event, Unparseable, lane, order_token, parse_body
from relay.queue.log import LogEntry, entry_from_row, event_row
from relay.queue.queries import Q


class AdminError(Exception):
    pass


class NotFound(AdminError):
    """The named dead letter or quarantined body does not exist."""


Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    pass


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise AdminError(f"no log at {path} (is RELAY_DATA_DIR right?)")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# -- dead letters -------------------------------------------------------------------------------


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


def list_dead_letters(conn: sqlite3.Connection, sink: str | None, limit: int) -> list[DeadLetter]:
    return [DeadLetter(*row) for row in conn.execute(Q["list_dead_letters"], (sink, sink, limit))]


def show_dead_letter(conn: sqlite3.Connection, dlq_id: int) -> dict[str, Any]:
    row = conn.execute(Q["get_dead_letter"], (dlq_id,)).fetchone()
    if row is None:
        raise NotFound(f"no dead letter {dlq_id}")
    keys = ("id", "sink", "seq", "attempts", "error", "at", "event_id", "event_name", "bucket",
            "key", "record")  # fmt: skip
    out = dict(zip(keys, row))
    out["record"] = bytes(out["record"]).decode("utf-8", "replace") if out["record"] else None
    return out


def retry_dead_letters_tx(
    conn: sqlite3.Connection, dlq_id: int | None, sink: str | None,
    progress: Progress = _no_progress,
) -> int:  # fmt: skip
    """Queue dead letters (one, a sink's, or all) for redelivery to their sink; the
    dead-letter rows go away. Inside the caller's transaction. Each carries the newest
    order token its object has had at the sink since (stale check)."""
    rows = conn.execute(Q["dead_letters_for_retry"], (dlq_id, dlq_id, sink, sink)).fetchall()
    newer: dict[tuple[str, int], str | None] = {}
    by_sink: dict[str, list[int]] = {}
    for _, row_sink, seq in rows:
        by_sink.setdefault(row_sink, []).append(seq)
    for row_sink, seqs in by_sink.items():
        for seq, token in newer_tokens(conn, row_sink, seqs).items():
            newer[(row_sink, seq)] = token
    for done, (row_id, row_sink, seq) in enumerate(rows, 1):
        conn.execute(
            Q["requeue_dead_letter"],
            {"sink": row_sink, "seq": seq, "newer": newer.get((row_sink, seq))},
        )
        conn.execute(Q["delete_dead_letter"], (row_id,))
        progress(done, len(rows))
    return len(rows)


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


def retry_dead_letters(
    conn: sqlite3.Connection, dlq_id: int | None, sink: str | None,
    progress: Progress = _no_progress,
) -> int:  # fmt: skip
    with transaction(conn):
        return retry_dead_letters_tx(conn, dlq_id, sink, progress)


def purge_dead_letters_tx(conn: sqlite3.Connection, dlq_id: int | None, sink: str | None) -> int:
    rows = conn.execute(Q["dead_letters_for_retry"], (dlq_id, dlq_id, sink, sink)).fetchall()
    for row_id, _, _ in rows:
        conn.execute(Q["delete_dead_letter"], (row_id,))
    return len(rows)


def purge_dead_letters(conn: sqlite3.Connection, dlq_id: int | None, sink: str | None) -> int:
    with transaction(conn):
        return purge_dead_letters_tx(conn, dlq_id, sink)


# -- quarantine ---------------------------------------------------------------------------------


def list_quarantine(conn: sqlite3.Connection, limit: int) -> list[tuple[Any, ...]]:
    return conn.execute(Q["list_quarantine"], (limit,)).fetchall()


def show_quarantine(conn: sqlite3.Connection, qid: int) -> dict[str, Any]:
    row = conn.execute(Q["get_quarantine"], (qid,)).fetchone()
    if row is None:
        raise NotFound(f"no quarantined body {qid}")
    return {
        "id": row[0], "received_at": row[1], "source": row[2], "reason": row[3],
        "headers": json.loads(row[4]), "body": bytes(row[5]).decode("utf-8", "replace"),
    }  # fmt: skip


@dataclass(frozen=True)
class QuarantineRetry:
    id: int
    ok: bool
    detail: str


def quarantine_ids(conn: sqlite3.Connection, qid: int | None) -> list[int]:
    """The bodies a retry covers: `qid`, or all of them."""
    return [qid] if qid is not None else [r[0] for r in conn.execute(Q["list_quarantine"], (-1,))]


def reparse_quarantined(conn: sqlite3.Connection, qid: int) -> list[Event] | QuarantineRetry:
    """Parse one quarantined body again (read only): its events, or why it stays."""
    row = conn.execute(Q["get_quarantine"], (qid,)).fetchone()
    if row is None:
        return QuarantineRetry(qid, False, "no such quarantined body")
    headers = CIMultiDict((k, v) for k, v in json.loads(row[4]).items() if isinstance(v, str))
    try:
        parsed = parse_body(bytes(row[5]), headers, row[2])
    except Unparseable as exc:
        return QuarantineRetry(qid, False, f"still unreadable: {exc.reason}")
    return list(parsed.events)


def ingest_reparsed_tx(conn: sqlite3.Connection, qid: int, events: Sequence[Event]) -> int:
    """Store the events of a body that now parses and take it out of quarantine, inside the
    caller's transaction; returns how many were new to the log. (The admin API hands the
    events to `Log.append`, which keeps the writer's own accounting, then runs
    `drop_quarantined_tx`: a crash between the two leaves the body in quarantine, and
    retrying it again stores nothing twice, as the log deduplicates.)"""
    now = time.time()
    accepted = 0
    for event in events:
        accepted += conn.execute(Q["insert_event"], event_row(event, now)).rowcount
    drop_quarantined_tx(conn, qid)
    return accepted


def drop_quarantined_tx(conn: sqlite3.Connection, qid: int) -> None:
    conn.execute(Q["delete_quarantine"], (qid,))


# RELAY_INGEST_EVENTS (relay/ingest.py IngestFilter.split): the events to store, and how
# many were left out
Select = Callable[[list[Event]], tuple[list[Event], int]]


def retry_quarantine(
    conn: sqlite3.Connection, qid: int | None, select: Select | None = None
) -> list[QuarantineRetry]:
    """Parse quarantined bodies again (after a fix to the relay or a config change); those
    that now parse become events (those `select` keeps, as ingest would) and leave
    quarantine."""
    results = []
    for item in quarantine_ids(conn, qid):
        parsed = reparse_quarantined(conn, item)
        if isinstance(parsed, QuarantineRetry):
            results.append(parsed)
            continue
        events, left_out = select(parsed) if select else (parsed, 0)
        with transaction(conn):
            accepted = ingest_reparsed_tx(conn, item, events)
        results.append(QuarantineRetry(item, True, ingested(accepted, left_out)))
    return results


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


def replay(
    conn: sqlite3.Connection,
    sink: str,
    since: float,
    until: float,
    bucket: str | None,
    prefix: str | None,
    accept: Callable[[LogEntry], bool],
    progress: Progress | None = None,
) -> int:
    """Select and queue in one transaction (the CLI)."""
    with transaction(conn):
        seqs = replay_selection(conn, since, until, bucket, prefix, accept, progress)
        newer = newer_tokens(conn, sink, seqs, accept)
        return queue_redeliveries_tx(conn, sink, seqs, newer=newer)


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
