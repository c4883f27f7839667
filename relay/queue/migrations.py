"""Schema versions, applied in order at start-up (before the writer thread exists)."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from relay.queue.queries import Q

MIGRATIONS = Migrations("s3-notify-relay")


def _statements(sql: str) -> list[str]:
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


@MIGRATIONS(name="0001_schema")
def _schema(db: Database) -> None:
    sql = resources.files("relay.queue").joinpath("schema.sql").read_text("utf-8")
    for statement in _statements(sql):
        db.execute(statement)


@MIGRATIONS(name="0002_dedup_index_in_time_order")
def _dedup_in_time_order(db: Database) -> None:
    db.execute(Q["drop_event_id_index"])
    db.execute(Q["create_dedup_index"])


@MIGRATIONS(name="0003_redelivery_newer")
def _redelivery_newer(db: Database) -> None:
    db.execute(Q["add_redelivery_newer"])


@MIGRATIONS(name="0004_missed_events")
def _missed_events(db: Database) -> None:
    db.execute(Q["create_missed"])


@MIGRATIONS(name="0005_sink_life_cycle")
def _sink_life_cycle(db: Database) -> None:
    db.execute(Q["add_cursor_orphaned_at"])
    db.execute(Q["create_log_state"])


@MIGRATIONS(name="0006_dead_letter_retrying_to")
def _dead_letter_retrying_to(db: Database) -> None:
    db.execute(Q["add_dead_letter_retrying_to"])


@MIGRATIONS(name="0007_sink_pause")
def _sink_pause(db: Database) -> None:
    db.execute(Q["add_cursor_paused"])
    db.execute(Q["add_cursor_paused_at"])
    db.execute(Q["add_cursor_failing_since"])


def migrate(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            # Only settable before the first table: lets the writer hand pages back to the
            # file system after a backlog drains, in small steps, without a full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        MIGRATIONS.apply(Database(conn))
    finally:
        conn.close()
