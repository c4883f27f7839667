"""Dead letters selected by filters (AND), retried to their own sink or another one with that
sink's stale-check token, kept and marked until their redelivery is finished, and purged by
the same filters. On a real log; the delivery settlement's part is the named query it runs."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from relay.events import order_token
from relay.queue import admin, migrations
from relay.queue.admin import DeadLetterFilter
from relay.queue.log import Log, Settlement
from relay.queue.queries import Q
from relay.rules import Router, Rule
from tests.support.pipeline import minio_event

A, B = "webhook:a", "webhook:b"


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Log]:
    event_log = Log(tmp_path / "relay.db")
    event_log.open()
    await event_log.init_cursors([A, B])
    yield event_log
    await event_log.close()


async def dead_letters(log: Log, *failures: tuple[int, str], at: float = 1000.0) -> None:
    """Dead letters of sink A for these (seq, error), dead-lettered at `at`."""
    await log.settle(Settlement(A, dead=[(seq, 1, error) for seq, error in failures]))
    seqs = ",".join(str(seq) for seq, _ in failures)
    await log.write(lambda c: c.execute(f"UPDATE dead_letters SET at = ? WHERE seq IN ({seqs})",
                                        (at,)))  # fmt: skip


def rows(conn: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    return conn.execute(sql).fetchall()


async def test_filters_combine_and_a_dry_run_changes_nothing(log: Log) -> None:
    await log.append([
        minio_event("photos", "2024/a.jpg", 1), minio_event("photos", "2025/b.jpg", 2),
        minio_event("docs", "2024/c.txt", 3), minio_event("photos", "2024/d.jpg", 4),
    ])  # fmt: skip
    await dead_letters(log, (1, "HTTP 400: schema"), (2, "HTTP 400: schema"), at=1000.0)
    await dead_letters(log, (3, "HTTP 413: too large"), (4, "HTTP 400: Schema"), at=2000.0)

    def seqs(which: DeadLetterFilter) -> list[int]:
        return [d.seq for d in admin.select_dead_letters(log.reader(), which)]

    assert seqs(DeadLetterFilter()) == [1, 2, 3, 4]
    assert seqs(DeadLetterFilter(bucket="photos")) == [1, 2, 4]
    assert seqs(DeadLetterFilter(bucket="photos", prefix="2024/")) == [1, 4]
    assert seqs(DeadLetterFilter(prefix="2024/", since=1500.0)) == [3, 4]
    assert seqs(DeadLetterFilter(until=1500.0)) == [1, 2]
    assert seqs(DeadLetterFilter(since=1000.0, until=2000.0)) == [1, 2]  # [since, until)
    assert seqs(DeadLetterFilter(error="schema")) == [1, 2, 4]  # any case
    assert seqs(DeadLetterFilter(error="413", bucket="photos")) == []
    assert seqs(DeadLetterFilter(sink="WEBHOOK:A", bucket="docs")) == [3]
    assert seqs(DeadLetterFilter(sink=B)) == []
    ids = [d.id for d in admin.select_dead_letters(log.reader())]
    assert seqs(DeadLetterFilter(id=ids[1], bucket="photos")) == [2]
    assert seqs(DeadLetterFilter(id=ids[1], bucket="docs")) == []
    assert not DeadLetterFilter().narrows and DeadLetterFilter(error="x").narrows

    plan = admin.plan_dead_letter_retry(log.reader(), DeadLetterFilter(bucket="photos"), B)
    assert plan.by_sink() == {B: 3}
    assert admin.plan_dead_letter_retry(log.reader(), DeadLetterFilter(until=1500.0)).by_sink() \
        == {A: 2}  # fmt: skip
    conn = log.reader()
    assert rows(conn, "SELECT count(*) FROM redeliveries") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM dead_letters WHERE retrying_to IS NULL") == [(4,)]


async def test_a_retried_dead_letter_stays_marked_until_its_redelivery_is_finished(
    log: Log,
) -> None:
    await log.append([minio_event("b", f"k{n}", n) for n in range(1, 4)])
    await dead_letters(log, (1, "HTTP 400"), (2, "HTTP 400"), (3, "HTTP 400"))
    to_b = DeadLetterFilter(until=2000.0, prefix="k1")
    assert await log.write(lambda c: admin.retry_dead_letters_tx(c, to_b, B)) == 1
    # queued once: the same retry again queues nothing
    assert await log.write(lambda c: admin.retry_dead_letters_tx(c, to_b, B)) == 0
    assert await log.write(lambda c: admin.retry_dead_letters_tx(c, DeadLetterFilter(
        prefix="k2"))) == 1  # fmt: skip
    conn = log.reader()
    assert rows(conn, "SELECT sink, seq, reason FROM redeliveries ORDER BY seq") == [
        (B, 1, "dlq-retry"), (A, 2, "dlq-retry")]  # fmt: skip
    letters = admin.select_dead_letters(conn)
    assert [(d.seq, d.state) for d in letters] == [
        (1, "being retried to webhook:b"),
        (2, "being retried to webhook:a"),
        (3, "waiting"),
    ]
    assert admin.show_dead_letter(conn, letters[0].id)["state"] == "being retried to webhook:b"
    # a dead letter being retried can be sent elsewhere instead
    assert await log.write(lambda c: admin.retry_dead_letters_tx(c, DeadLetterFilter(
        prefix="k2"), B)) == 1  # fmt: skip
    assert [d.state for d in admin.select_dead_letters(conn, DeadLetterFilter(prefix="k2"))] == [
        "being retried to webhook:b"]  # fmt: skip

    # what the delivery settlement runs for each redelivery it finishes (Settlement.done)
    def finish(sink: str, seq: int) -> None:
        log_conn = sqlite3.connect(log.path)
        with log_conn:
            log_conn.execute(Q["finish_retried_dead_letters"], {"sink": sink, "seq": seq})
        log_conn.close()

    finish(A, 1)  # not where it was retried to: stays
    finish(B, 3)  # not being retried: stays
    assert [d.seq for d in admin.select_dead_letters(conn)] == [1, 2, 3]
    finish(B, 1)
    assert [d.seq for d in admin.select_dead_letters(conn)] == [2, 3]
    # dead-lettered again at B: the settlement writes B's dead letter, then finishes seq 2
    await log.settle(Settlement(B, dead=[(2, 1, "HTTP 500 at b")]))
    finish(B, 2)
    assert [(d.sink, d.seq, d.state, d.error) for d in admin.select_dead_letters(conn)] == [
        (A, 3, "waiting", "HTTP 400"), (B, 2, "waiting", "HTTP 500 at b")]  # fmt: skip


async def test_the_stale_token_is_the_target_sinks(log: Log) -> None:
    """Seq 1 failed at A; the object's later event (seq 2) reached B but not A, whose rules
    keep it away: retried to B the event is known stale, retried to A it is not."""
    first, later = minio_event("b", "obj", 1), minio_event("b", "obj", 2, "s3:ObjectRemoved:Delete")
    await log.append([first, later])
    await log.settle(Settlement(A, cursor=2))
    await log.settle(Settlement(B, cursor=2))
    await dead_letters(log, (1, "HTTP 400"))
    router = Router([Rule("puts", events=("s3:ObjectCreated:*",), sinks=(A,)),
                     Rule("all", sinks=(B,))], [A, B])  # fmt: skip

    def routes(sink: str, entry: object) -> bool:
        return router.matches(sink, entry.event)  # type: ignore[attr-defined]

    def newer() -> list[tuple[object, ...]]:
        return rows(log.reader(), "SELECT sink, newer FROM redeliveries ORDER BY sink")

    assert await log.write(lambda c: admin.retry_dead_letters_tx(c, None, routes=routes)) == 1
    assert await log.write(lambda c: admin.retry_dead_letters_tx(c, None, B, routes=routes)) == 1
    assert newer() == [(A, None), (B, order_token(later))]


async def test_purge_takes_the_same_filters(log: Log) -> None:
    await log.append([minio_event("b", f"k{n}", n) for n in range(1, 4)])
    await dead_letters(log, (1, "HTTP 400"), (2, "HTTP 413"), at=1000.0)
    await dead_letters(log, (3, "HTTP 413"), at=2000.0)
    assert await log.write(lambda c: admin.purge_dead_letters_tx(c, DeadLetterFilter(
        error="413", until=1500.0))) == 1  # fmt: skip
    assert [d.seq for d in admin.list_dead_letters(log.reader(), None, 10)] == [1, 3]
    assert [d.seq for d in admin.list_dead_letters(log.reader(), A, 1)] == [1]
    assert await log.write(lambda c: admin.purge_dead_letters_tx(c, None)) == 2
    assert admin.list_dead_letters(log.reader(), None, 10) == []


async def test_dead_letters_of_a_version_3_log_are_waiting(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = Database(conn)
    migrations.MIGRATIONS.ensure_migrations_table(db)
    for migration in migrations.MIGRATIONS._migrations[:3]:  # the schema up to version 3
        migration.fn(db)
        migrations.MIGRATIONS._record_applied(db, migration.name)
    assert "retrying_to" not in {c.name for c in db["dead_letters"].columns}
    conn.execute("INSERT INTO dead_letters (sink, seq, attempts, error, at) "
                 "VALUES ('webhook:a', 1, 3, 'HTTP 400', 1000)")  # fmt: skip
    conn.close()
    log = Log(path)
    log.open()
    try:
        assert [(d.sink, d.state) for d in admin.select_dead_letters(log.reader())] == [
            (A, "waiting")]  # fmt: skip
    finally:
        await log.close()
