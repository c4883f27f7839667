"""Read-only views of the log for metrics, `relay queue stats` and the admin commands."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from relay.queue.queries import Q


@dataclass(frozen=True, slots=True)
class SinkStats:
    sink: str
    cursor: int
    pending: int  # events past the cursor (before rules) + queued redeliveries
    oldest: float | None  # received_at of the oldest pending event
    redeliveries: int  # queued again: dead letters retried, replays, and parked events
    parked: int  # waiting behind a failing event of their own object


def sink_stats(conn: sqlite3.Connection, sink: str) -> SinkStats:
    row = conn.execute(Q["get_cursor"], (sink,)).fetchone()
    cursor = int(row[0]) if row else 0
    max_seq = conn.execute(Q["max_seq"]).fetchone()[0]
    # seqs are never reused and only done rows are pruned, so this is exact and O(1)
    after = max(0, max_seq - cursor)
    oldest_row = conn.execute(Q["oldest_after"], (cursor,)).fetchone()
    redeliveries, parked, oldest_redelivery = conn.execute(
        Q["redelivery_stats"], {"sink": sink}
    ).fetchone()
    candidates = [t for t in (oldest_row and oldest_row[0], oldest_redelivery) if t]
    return SinkStats(
        sink, cursor, after + redeliveries, min(candidates, default=None), redeliveries, parked
    )


def dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {sink: n for sink, n in conn.execute(Q["dead_letter_counts"])}


def quarantine_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute(Q["quarantine_count"]).fetchone()[0])


@dataclass(frozen=True, slots=True)
class Orphan:
    """A sink the log holds state for but the configuration no longer has."""

    sink: str
    cursor: int
    orphaned_at: float
    dead_letters: int
    redeliveries: int


def orphans(conn: sqlite3.Connection) -> list[Orphan]:
    return [Orphan(**row) for row in _rows(conn, Q["orphans"])]


def _rows(conn: sqlite3.Connection, sql: str) -> list[dict[str, Any]]:
    """Rows by column name (the query's AS names)."""
    cur = conn.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur]
