"""Fill a relay log with N events, fast, through the log's own contract: the schema is created
by relay.queue.migrations, every row is built by relay.events.parse_body + relay.queue.log.
event_row from the bodies of bench/shapes.py (MinIO, RustFS, Ceph in rotation) and written
with the named query `insert_event` of queries.sql, one transaction per 10 000 rows.

    python -m bench.fill --events 1000000 --data-dir /tmp/relay-data [--sink webhook:x ...]

The filler's own connection runs with synchronous=OFF and a large page cache: it is a set-up
step, not a measurement (the relay is not running). `--sink` writes a cursor row at 0 for
that sink, so the whole log is pending for it when `relay serve` starts.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench import shapes
from relay.app import DB_NAME
from relay.events import Event, parse_body
from relay.queue import migrations
from relay.queue.log import event_row
from relay.queue.queries import Q

CHUNK = 10_000


@dataclass
class Filled:
    events: int
    seconds: float
    db: Path

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


# event_row() has taken the commit time as a parameter since the log's group-commit rework;
# before it, the writer put the time in second place itself. Either way a row is the
# parameters of `insert_event`: (event_id, received_at, source, ...).
_ROW_TAKES_TIME = "received_at" in inspect.signature(event_row).parameters


def insert_params(event: Event, received_at: float) -> tuple[Any, ...]:
    if _ROW_TAKES_TIME:
        return tuple(event_row(event, received_at))  # type: ignore[call-arg]
    row = event_row(event)  # type: ignore[call-arg]
    return (row[0], received_at, *row[1:])


# The backlog is stamped as received an hour ago, as one that built up while its sink was
# away: a sink that holds a partial batch back for company until it is MAX_OBJECT_AGE old
# (the audit bucket) then writes the tail of the backlog at once instead of waiting.
AGE = 3600.0


def rows(first: int, count: int, tag: str) -> list[tuple[Any, ...]]:
    """Rows of `insert_event` for events first..first+count-1, as Log.append builds them."""
    now = time.time() - AGE
    out = []
    for n in range(first, first + count):
        path, body = shapes.body(n, tag)
        for event in parse_body(body, {}, path.strip("/")).events:
            out.append(insert_params(event, now))
    return out


def _rows_job(job: tuple[int, int, str]) -> list[tuple[Any, ...]]:
    return rows(*job)


def _chunks(n: int, tag: str) -> Iterable[tuple[int, int, str]]:
    for first in range(0, n, CHUNK):
        yield first, min(CHUNK, n - first), tag


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / DB_NAME


def fill(data_dir: Path, n: int, tag: str = "fill", progress: bool = False) -> Filled:
    """Append `n` events to the log in `data_dir` (created if missing). Rows are built in a
    second process while this one inserts (both cores busy, the relay is not running)."""
    db = db_path(data_dir)
    db.parent.mkdir(parents=True, exist_ok=True)
    migrations.migrate(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the event_id index is random-order
    insert = Q["insert_event"]
    started = time.monotonic()
    done = 0
    try:
        with get_context("fork").Pool(1) as pool:
            for chunk in pool.imap(_rows_job, _chunks(n, tag), chunksize=1):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(insert, chunk)
                conn.execute("COMMIT")
                done += len(chunk)
                if progress and done % (10 * CHUNK) == 0:
                    rate = done / (time.monotonic() - started)
                    print(f"  filled {done:>10,} events ({rate:,.0f}/s)", file=sys.stderr,
                          flush=True)  # fmt: skip
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    # synchronous=OFF left the whole log in the page cache, dirty: write it out now, or the
    # kernel does it during the next measurement and every fsync of the relay waits behind it
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()
    return Filled(done, time.monotonic() - started, db)


def set_cursors(data_dir: Path, sinks: Iterable[str], seq: int = 0) -> None:
    """Write each sink's cursor (the relay must not be running): at 0 the whole log is
    pending for it. `init_cursor` would put a new sink at the head of the log instead."""
    conn = sqlite3.connect(db_path(data_dir), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = FULL")
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        for sink in sinks:
            conn.execute(
                "INSERT INTO cursors (sink, seq, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
                (sink, seq, now),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def max_seq(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def truncate(data_dir: Path, upto: int) -> int:
    """Delete the events after seq `upto` (what a benchmark's own ingest added), so the log
    is back at its size for the next measurement; the relay must not be running."""
    conn = sqlite3.connect(db_path(data_dir), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        deleted = conn.execute("DELETE FROM events WHERE seq > ?", (upto,)).rowcount
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.sync()
    return int(deleted)


def log_size(data_dir: Path) -> int:
    """Bytes of the log on disk: the database, its WAL and shared-memory files."""
    db = db_path(data_dir)
    total = 0
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            total += os.stat(path).st_blocks * 512
    return total


def count(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--tag", default="fill", help="makes the events of a run unique")
    parser.add_argument("--sink", action="append", default=[], help="cursor at 0 for this sink")
    args = parser.parse_args()
    filled = fill(args.data_dir, args.events, args.tag, progress=True)
    if args.sink:
        set_cursors(args.data_dir, args.sink)
    print(f"{filled.events:,} events in {filled.seconds:.1f} s ({filled.rate:,.0f}/s), "
          f"log {log_size(args.data_dir) / 1e6:,.0f} MB: {filled.db}")  # fmt: skip


if __name__ == "__main__":
    main()
