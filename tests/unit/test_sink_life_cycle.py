"""Where a sink starts, what becomes of one no longer configured, and forgetting one
(relay/queue/lifecycle.py), on a real log."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relay.queue import lifecycle, stats
from relay.queue.log import Log
from tests.support.pipeline import minio_event
from tests.support.waiting import eventually


async def _log_with(path: Path, n: int, **options: object) -> Log:
    """A log of `n` events, each in a commit of its own (a received_at of its own)."""
    log = Log(path, **options)  # type: ignore[arg-type]
    log.open()
    for i in range(n):
        await log.append([minio_event("b", f"k{i}", i)])
    return log


def _cursor(log: Log, sink: str) -> int:
    return log.cursor(sink)


async def test_a_new_sink_starts_where_start_says(tmp_path: Path) -> None:
    log = await _log_with(tmp_path / "r.db", 10)
    try:
        middle = await log.read(
            lambda c: c.execute("SELECT received_at FROM events WHERE seq = 6").fetchone()[0]
        )
        await log.init_cursors({"a:latest": "latest", "b:earliest": "earliest", "c:time": middle})
        assert (_cursor(log, "a:latest"), _cursor(log, "b:earliest"), _cursor(log, "c:time")) == (
            10,
            0,
            5,
        )
    finally:
        await log.close()


async def test_a_start_time_older_than_what_retention_kept_leaves_the_pruned_range_before_it(
    tmp_path: Path,
) -> None:
    log = await _log_with(tmp_path / "r.db", 10)
    try:
        await log.write(lambda c: c.execute("DELETE FROM events WHERE seq <= 4"))
        await log.init_cursors({"t:old": time.time() - 3600})
        assert _cursor(log, "t:old") == 0  # the dispatcher finds seqs 1-4 gone: a marker
    finally:
        await log.close()


async def test_a_sink_no_longer_configured_pins_nothing_and_is_forgotten_after_retention(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    log = await _log_with(path, 6, retention=3600, prune_every=0.2)
    await log.init_cursors(["webhook:kept", "webhook:gone"])
    # the sink about to go has a dead letter and a redelivery pinning events
    await log.write(lambda c: c.execute(
        "INSERT INTO dead_letters (sink, seq, attempts, error, at) VALUES ('webhook:gone', 2, 1, 'x', 0)"))  # fmt: skip
    await log.write(lambda c: c.execute(
        "INSERT INTO redeliveries (sink, seq, reason) VALUES ('webhook:gone', 3, 'replay')"))  # fmt: skip
    await log.close()

    log = Log(path, retention=0, prune_every=0.2)
    log.open()
    try:
        log.set_sinks(["webhook:kept"])
        started = await log.init_cursors(["webhook:kept"])
        assert started.orphaned == ["webhook:gone"]
        orphans = await log.read(stats.orphans)
        assert [(o.sink, o.dead_letters, o.redeliveries) for o in orphans] == [
            ("webhook:gone", 1, 1)
        ]
        # retention 0: every event the kept sink has had goes, the orphan's pins included,
        # and the orphan's state with them
        await log.write(
            lambda c: c.execute("UPDATE cursors SET seq = 6 WHERE sink = 'webhook:kept'")
        )
        await eventually(lambda: log.events == 0)
        await eventually(lambda: log.read(lambda c: stats.orphans(c) == []))
        assert (
            await log.read(lambda c: c.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
            == 0
        )
    finally:
        await log.close()


async def test_a_sink_configured_again_starts_afresh_and_is_told_what_it_missed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    log = await _log_with(path, 3)
    await log.init_cursors(["webhook:w"])  # at the head: 3
    await log.write(lambda c: c.execute(
        "INSERT INTO redeliveries (sink, seq, reason) VALUES ('webhook:w', 3, 'parked')"))  # fmt: skip
    await log.init_cursors(["webhook:other"])  # webhook:w removed
    await log.append([minio_event("b", f"later{i}", 10 + i) for i in range(4)])  # seqs 4-7
    started = await log.init_cursors(["webhook:w"])  # configured again, START=latest
    try:
        assert started.returned == ["webhook:w"] and started.orphaned == ["webhook:other"]
        assert _cursor(log, "webhook:w") == 7
        assert await log.read(lambda c: stats.sink_stats(c, "webhook:w").parked) == 0
        (marker,) = await log.read(lambda c: c.execute(
            "SELECT first_seq, last_seq, count, reason FROM missed").fetchall())  # fmt: skip
        assert marker == (4, 7, None, "sink_removed")
    finally:
        await log.close()


def test_forget_removes_every_row_of_a_sink(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    from relay.queue import migrations

    conn.close()
    migrations.migrate(tmp_path / "f.db")
    conn = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    conn.execute("INSERT INTO cursors (sink, seq, updated_at) VALUES ('s:x', 1, 0)")
    conn.execute(
        "INSERT INTO dead_letters (sink, seq, attempts, error, at) VALUES ('s:x', 1, 1, 'e', 0)"
    )
    counts = lifecycle.forget(conn, "s:x")
    assert counts == {"dead_letters": 1, "redeliveries": 0, "retries": 0, "missed": 0, "cursor": 1}
