"""A sink's life in the log: where a new sink starts, what becomes of one that is no longer
configured (an orphan), and forgetting one.

- A new sink starts where its START key says: `latest` (the head: what arrives from now on),
  `earliest` (the oldest event the log still holds), or a time (the first event received
  then or later; a time older than what retention kept leaves the cursor before the pruned
  range, so the sink is sent a `relay:MissedEvents` marker for it, never a silent gap).
- A sink in the log but not in the configuration is an orphan from the start that found it
  missing: it pins no event (retention ignores its cursor, dead letters and redeliveries),
  and its state goes after RELAY_RETENTION, or at once with `relay sinks forget`.
- An orphan configured again starts afresh where START says; its old retry schedules and
  parked events go, its dead letters stay. With START=latest, what arrived while it was
  away is announced by a marker (reason `sink_removed`), not skipped in silence; with
  `earliest` it resumes from its old cursor (a pruned part of that is marked too).

The SQLite log's functions here run inside the caller's transaction; `place` and `removed`
decide for both logs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from relay.queue.queries import Q


@dataclass
class Started:
    new: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)  # orphans configured again
    orphaned: list[str] = field(default_factory=list)  # found missing from the configuration


def start_sinks(conn: sqlite3.Connection, starts: Mapping[str, str | float], now: float) -> Started:
    """Place every configured sink's cursor; mark the others orphaned."""
    rows = {sink: (seq, orphaned_at) for sink, seq, orphaned_at in conn.execute(Q["cursor_rows"])}
    head = int(conn.execute(Q["max_seq"]).fetchone()[0])
    oldest = conn.execute(Q["oldest_event"]).fetchone()

    def before(since: float) -> int:
        return int(conn.execute(Q["seq_before_time"], {"since": since}).fetchone()[0])

    started = Started()
    for sink, start in starts.items():
        row = rows.get(sink)
        if row is not None and row[1] is None:
            continue  # carries on from its cursor
        old = row[0] if row is not None else None
        position = place(start, old, head, tuple(oldest) if oldest else None, before)
        if old is not None:
            started.returned.append(sink)
            conn.execute(Q["forget_parked"], {"sink": sink})
            conn.execute(Q["forget_retries"], {"sink": sink})
            away = removed(start, old, position)
            if away is not None:
                conn.execute(
                    Q["insert_missed"],
                    {"sink": sink, "first_seq": away[0], "last_seq": away[1], "count": None,
                     "first_at": None, "last_at": None, "reason": "sink_removed"},
                )  # fmt: skip
        else:
            started.new.append(sink)
        conn.execute(Q["start_cursor"], {"sink": sink, "seq": position, "now": now})
    for sink in rows:
        if sink in starts:
            continue
        if conn.execute(Q["orphan_cursor"], {"sink": sink, "now": now}).rowcount:
            started.orphaned.append(sink)
    return started


def place(
    start: str | float,
    old: int | None,
    head: int,
    oldest: tuple[int, float] | None,
    before: Callable[[float], int],
) -> int:
    """Where a sink's cursor starts: `old` its cursor from before it was removed (None: a
    new sink), `head` the newest seq, `oldest` the (seq, received_at) of the oldest event
    kept, `before(t)` the seq just before the first event received at t or later."""
    if start == "latest":
        return head
    if start == "earliest":
        first = oldest[0] - 1 if oldest else head
        return old if old is not None else first
    assert isinstance(start, float)
    if oldest is not None and start < oldest[1] and oldest[0] > 1:
        return 0  # before what retention kept: the dispatcher marks the pruned range
    return before(start)


def removed(start: str | float, old: int, position: int) -> tuple[int, int] | None:
    """The seqs a returning sink skips (first, last), for its `sink_removed` marker."""
    return (old + 1, position) if start == "latest" and old < position else None


def forget(conn: sqlite3.Connection, sink: str) -> dict[str, int]:
    """Remove everything the log keeps for a sink; how many rows of each kind went."""
    counts = {}
    for kind in ("dead_letters", "redeliveries", "retries", "missed", "cursor"):
        counts[kind] = conn.execute(Q[f"forget_{kind}"], {"sink": sink}).rowcount
    return counts


def expire_orphans(conn: sqlite3.Connection, before: float) -> dict[str, dict[str, int]]:
    """Forget the orphans found missing before `before` (RELAY_RETENTION ago)."""
    sinks: Iterable[str] = [r[0] for r in conn.execute(Q["orphans_past"], {"before": before})]
    return {sink: forget(conn, sink) for sink in sinks}
