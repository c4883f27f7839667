"""Operator actions on the log: dead letters, quarantine, replay.

They run in the CLI's own process with their own connection, next to a running relay:
SQLite serialises the two writers (busy_timeout), and the relay's dispatchers pick up
queued redeliveries within a second.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from relay.events import Unparseable, parse_body
from relay.queue.log import LogEntry, entry_from_row, event_row
from relay.queue.queries import Q


class AdminError(Exception):
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
        raise AdminError(f"no dead letter {dlq_id}")
    keys = ("id", "sink", "seq", "attempts", "error", "at", "event_id", "event_name", "bucket",
            "key", "record")  # fmt: skip
    out = dict(zip(keys, row))
    out["record"] = bytes(out["record"]).decode("utf-8", "replace") if out["record"] else None
    return out


def retry_dead_letters(conn: sqlite3.Connection, dlq_id: int | None, sink: str | None) -> int:
    """Queue dead letters for redelivery to their sink; the dead-letter rows go away."""
    with transaction(conn):
        rows = conn.execute(Q["dead_letters_for_retry"], (dlq_id, dlq_id, sink, sink)).fetchall()
        for row_id, row_sink, seq in rows:
            conn.execute(Q["requeue_dead_letter"], (row_sink, seq))
            conn.execute(Q["delete_dead_letter"], (row_id,))
    return len(rows)


def purge_dead_letters(conn: sqlite3.Connection, dlq_id: int | None, sink: str | None) -> int:
    with transaction(conn):
        rows = conn.execute(Q["dead_letters_for_retry"], (dlq_id, dlq_id, sink, sink)).fetchall()
        for row_id, _, _ in rows:
            conn.execute(Q["delete_dead_letter"], (row_id,))
    return len(rows)


# -- quarantine ---------------------------------------------------------------------------------


def list_quarantine(conn: sqlite3.Connection, limit: int) -> list[tuple[Any, ...]]:
    return conn.execute(Q["list_quarantine"], (limit,)).fetchall()


def show_quarantine(conn: sqlite3.Connection, qid: int) -> dict[str, Any]:
    row = conn.execute(Q["get_quarantine"], (qid,)).fetchone()
    if row is None:
        raise AdminError(f"no quarantined body {qid}")
    return {
        "id": row[0], "received_at": row[1], "source": row[2], "reason": row[3],
        "headers": json.loads(row[4]), "body": bytes(row[5]).decode("utf-8", "replace"),
    }  # fmt: skip


@dataclass(frozen=True)
class QuarantineRetry:
    id: int
    ok: bool
    detail: str


def retry_quarantine(conn: sqlite3.Connection, qid: int | None) -> list[QuarantineRetry]:
    """Parse quarantined bodies again (after a fix to the relay or a config change); those
    that now parse become events and leave quarantine."""
    ids = [qid] if qid is not None else [r[0] for r in conn.execute(Q["list_quarantine"], (-1,))]
    results = []
    for item in ids:
        row = conn.execute(Q["get_quarantine"], (item,)).fetchone()
        if row is None:
            results.append(QuarantineRetry(item, False, "no such quarantined body"))
            continue
        headers = CIMultiDict((k, v) for k, v in json.loads(row[4]).items() if isinstance(v, str))
        try:
            parsed = parse_body(bytes(row[5]), headers, row[2])
        except Unparseable as exc:
            results.append(QuarantineRetry(item, False, f"still unreadable: {exc.reason}"))
            continue
        now = time.time()
        with transaction(conn):
            accepted = 0
            for event in parsed.events:
                accepted += conn.execute(Q["insert_event"], event_row(event, now)).rowcount
            conn.execute(Q["delete_quarantine"], (item,))
        results.append(QuarantineRetry(item, True, f"{accepted} event(s) accepted"))
    return results


# -- replay -------------------------------------------------------------------------------------


def replay(
    conn: sqlite3.Connection,
    sink: str,
    since: float,
    until: float,
    bucket: str | None,
    prefix: str | None,
    accept: Callable[[LogEntry], bool],
) -> int:
    """Queue the log's events in [since, until) that pass the filters and `accept` (the
    sink's rules, unless the operator overrides them) for redelivery to `sink`."""
    args = (since, until, bucket, bucket, prefix, prefix, prefix)
    count = 0
    with transaction(conn):
        for row in conn.execute(Q["replay_select"], args).fetchall():
            entry = entry_from_row(row)
            if accept(entry):
                count += conn.execute(Q["insert_redelivery"], (sink, entry.seq, "replay")).rowcount
    return count
