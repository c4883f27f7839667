"""Integrity check and salvage of a damaged log.

`check` runs SQLite's integrity check. `repair` copies every row that can still be read into
a fresh database, narrowing down around damaged pages by bisection, and reports what could
not be read; the damaged file is kept beside it. Both run with the relay stopped.

The copy statements are built per table from its columns, so unlike the rest of the log
they are not named queries in queries.sql.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from relay.queue import migrations, salvage

# table → its integer key column; rows are copied in key ranges
TABLES = {
    "events": "seq",
    "cursors": "rowid",
    "retries": "seq",
    "dead_letters": "id",
    "redeliveries": "seq",
    "quarantine": "id",
}


class LogDamaged(Exception):
    """The log cannot be opened or read; the message says where and what to do."""


@dataclass
class RepairReport:
    copied: dict[str, int] = field(default_factory=dict)
    lost_ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    lost_events_estimate: int = 0
    highest_seq: int = 0  # of the events kept; the end of a truncated file is past it
    cursors_reset: list[str] = field(default_factory=list)
    damaged_copy: Path | None = None


def check(path: Path) -> list[str]:
    """SQLite's integrity check; [] when the file is sound."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    problems = [r[0] for r in rows]
    return [] if problems == ["ok"] else problems


def set_aside(path: Path) -> Path:
    """Move a damaged log (and its WAL) out of the way; returns where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            shutil.move(source, Path(str(target) + suffix))
    return target


def repair(
    path: Path,
    sinks: list[str],
    progress: Callable[[str], None] = lambda _: None,
    meter: Callable[[str, int, int], None] | None = None,
) -> RepairReport:
    """`sinks`: the configured sinks. If the cursors cannot be read, each starts again from
    the first event kept: delivered twice rather than never (at-least-once). `meter(table,
    done, total)` follows the copy of each table through its key range (a progress bar)."""
    report = RepairReport()
    fresh = path.with_name(path.name + ".repairing")
    for suffix in ("", "-wal", "-shm"):
        Path(str(fresh) + suffix).unlink(missing_ok=True)
    migrations.migrate(fresh)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    target = sqlite3.connect(fresh, isolation_level=None)
    try:
        target.execute("BEGIN")
        for table, key in TABLES.items():
            copied, lost = _copy_table(source, target, table, key, meter)
            report.copied[table] = copied
            if lost:
                report.lost_ranges[table] = lost
            progress(f"{table}: {copied} rows copied, {len(lost)} unreadable range(s)")
        if report.lost_ranges.get("events") or report.copied["events"] == 0:
            # SQL cannot reach leaves below a lost interior page: read the pages themselves
            found = _salvage_events(path, target)
            report.copied["events"] += found
            progress(f"events: {found} more rows read from the pages directly")
            report.lost_ranges["events"] = _missing_seqs(target)
        if report.copied["cursors"] == 0 and sinks:
            now = time.time()
            for sink in sinks:
                target.execute(
                    "INSERT INTO cursors (sink, seq, updated_at) VALUES (?, 0, ?)", (sink, now)
                )
            report.cursors_reset = list(sinks)
            progress(f"cursors unreadable: {', '.join(sinks)} start again from the first event")
        report.highest_seq = target.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[
            0
        ]
        target.execute("COMMIT")
        _restore_sequence(target)
    finally:
        source.close()
        target.close()
    report.lost_events_estimate = sum(
        hi - lo + 1 for lo, hi in report.lost_ranges.get("events", [])
    )
    report.damaged_copy = set_aside(path)
    for suffix in ("", "-wal"):
        candidate = Path(str(fresh) + suffix)
        if candidate.exists():
            shutil.move(candidate, Path(str(path) + suffix))
    Path(str(fresh) + "-shm").unlink(missing_ok=True)
    return report


def _copy_table(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    table: str,
    key: str,
    meter: Callable[[str, int, int], None] | None = None,
) -> tuple[int, list[tuple[int, int]]]:
    try:
        low, high = source.execute(f"SELECT min({key}), max({key}) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        try:
            low, high = _bounds_by_probe(source, table, key)
        except sqlite3.DatabaseError:
            return 0, []  # nothing reachable through SQL
    if low is None:
        return 0, []
    columns = _columns(target, table)
    select = f"SELECT {', '.join(columns)} FROM {table} WHERE {key} BETWEEN ? AND ?"
    insert = (f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) "
              f"VALUES ({', '.join('?' * len(columns))})")  # fmt: skip
    copied = 0
    lost: list[tuple[int, int]] = []
    stack = [(low, high)]
    span, covered = high - low + 1, 0
    while stack:
        lo, hi = stack.pop()
        try:
            rows = source.execute(select, (lo, hi)).fetchall()
        except sqlite3.DatabaseError:
            if lo == hi:
                lost.append((lo, hi))
                covered += 1
                if meter:
                    meter(table, covered, span)
            else:
                mid = (lo + hi) // 2
                stack.extend([(mid + 1, hi), (lo, mid)])
            continue
        if len(rows) > 50_000 and lo < hi:  # keep memory bounded on big logs
            mid = (lo + hi) // 2
            stack.extend([(mid + 1, hi), (lo, mid)])
            continue
        target.executemany(insert, rows)
        copied += len(rows)
        covered += hi - lo + 1
        if meter:
            meter(table, covered, span)
    return copied, _merge(lost)


def _salvage_events(path: Path, target: sqlite3.Connection) -> int:
    columns = _columns(target, "events")
    insert = (f"INSERT OR IGNORE INTO events ({', '.join(columns)}) "
              f"VALUES ({', '.join('?' * len(columns))})")  # fmt: skip
    before = target.total_changes
    for row in salvage.event_rows(path):
        target.execute(insert, row)
    return target.total_changes - before


def _missing_seqs(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """Gaps in the seqs between the lowest and highest event kept (pruned events leave gaps
    too, so this is an upper bound of what was lost)."""
    seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    return [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b > a + 1]


def _bounds_by_probe(
    source: sqlite3.Connection, table: str, key: str
) -> tuple[int | None, int | None]:
    """min/max when the index pages are damaged: walk the table order from each end."""
    bounds: list[int | None] = []
    for order in ("ASC", "DESC"):
        try:
            row = source.execute(
                f"SELECT {key} FROM {table} ORDER BY {key} {order} LIMIT 1"
            ).fetchone()
            bounds.append(row[0] if row else None)
        except sqlite3.DatabaseError:
            bounds.append(None)
    low, high = bounds
    if low is None and high is None:
        return None, None
    return (low if low is not None else 0), (high if high is not None else 2**62)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _restore_sequence(conn: sqlite3.Connection) -> None:
    # seqs must never be reused (cursors point at them): carry the highest one over
    high = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    cursor_high = conn.execute("SELECT coalesce(max(seq), 0) FROM cursors").fetchone()[0]
    conn.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'",
        (max(high, cursor_high),),
    )
    if conn.execute("SELECT changes()").fetchone()[0] == 0:
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)",
            (max(high, cursor_high),),
        )
