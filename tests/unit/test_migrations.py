"""Schema versions: a log written by an earlier version opens, keeps its events and dedups as
before; the dedup index is the one of the latest version."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from relay.queue import migrations
from relay.queue.log import Log
from tests.support.pipeline import minio_event


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = "
                            "'events' AND sql IS NOT NULL").fetchall()  # fmt: skip
    return {r[0] for r in rows}


def version_1_log(path: Path) -> None:
    """A log as the first schema version left it (migration 0001 only)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    db = Database(conn)
    first = migrations.MIGRATIONS._migrations[0]  # sqlite-utils keeps them in order
    migrations.MIGRATIONS.ensure_migrations_table(db)
    first.fn(db)
    migrations.MIGRATIONS._record_applied(db, first.name)
    conn.close()


async def test_a_version_1_log_gets_the_time_ordered_dedup_index_and_keeps_dedup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.db"
    version_1_log(path)
    assert indexes(path) == {"events_event_id"}
    old = Log(path)
    old.open()
    try:
        assert (await old.append([minio_event("b", "k", 1)])).accepted == 1
    finally:
        await old.close()
    log = Log(path)
    log.open()
    try:
        assert indexes(path) == {"events_dedup"}
        result = await log.append([minio_event("b", "k", 1), minio_event("b", "k", 2)])
        assert (result.accepted, result.duplicates) == (1, 1)
        assert log.events == 2
    finally:
        await log.close()


async def test_dedup_holds_for_events_without_an_event_time(tmp_path: Path) -> None:
    # NULLs are distinct in a UNIQUE index: the index reads a missing time as ''
    log = Log(tmp_path / "relay.db")
    log.open()
    try:
        timeless = dataclasses.replace(minio_event("b", "k", 1), event_time=None)
        assert (await log.append([timeless])).accepted == 1
        result = await log.append([timeless])
        assert (result.accepted, result.duplicates) == (0, 1)
    finally:
        await log.close()
