"""The log and the dispatcher's delivery semantics, with a scripted sink.

ScriptedSink is a test double of our own Sink interface (not of any client library): it
lets a test say "the 3rd event fails permanently" or "fail everything until told
otherwise", failures that no real server produces on demand. Real servers are used in
tests/integration."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from relay.delivery.dispatcher import Dispatcher, Policy
from relay.events import Event
from relay.queue import admin, stats
from relay.queue import log as log_module
from relay.queue.log import Log, LogEntry, Settlement
from relay.rules import Router, Rule
from relay.sinks.base import Health, Permanent, Result, Retryable
from relay.sinks.redact import Redactor
from tests.support.damage import damage_record_page
from tests.support.pipeline import minio_event
from tests.support.waiting import eventually


class ScriptedSink:
    """Records what it receives; `verdict(event)` decides each result."""

    def __init__(self, name: str = "scripted:t") -> None:
        self.name = name
        self.received: list[Event] = []
        self.verdict: Callable[[Event], Result] = lambda event: None
        self.start_error: Exception | None = None

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        results = []
        for entry in batch:
            result = self.verdict(entry.event)
            if result is None:
                self.received.append(entry.event)
            results.append(result)
        return results

    async def close(self) -> None:
        pass

    async def health(self) -> Health:
        return Health(True, "scripted")


@pytest.fixture
async def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    event_log = Log(tmp_path / "relay.db", retention=3600)
    event_log.open()
    yield event_log
    await event_log.close()


async def run(log: Log, sink: ScriptedSink, router: Router | None = None, **policy: object):
    log.set_sinks([sink.name])
    await log.init_cursors([sink.name])
    d = Dispatcher(sink, log, router or Router([], [sink.name]),
                   Policy(backoff_max=0.05, **policy))  # type: ignore[arg-type]  # fmt: skip
    return d, asyncio.create_task(d.run())


async def stop(d: Dispatcher, task: asyncio.Task[None]) -> None:
    d.stop()
    await asyncio.wait_for(task, 10)


async def test_append_dedups_on_the_event_id(log: Log) -> None:
    a, b = minio_event("b", "k", 1), minio_event("b", "k", 2)
    assert (await log.append([a, b])).accepted == 2
    result = await log.append([a, minio_event("b", "k", 3)])
    assert (result.accepted, result.duplicates) == (1, 1)
    assert log.events == 3


async def test_appended_events_survive_reopening(tmp_path: Path) -> None:
    first = Log(tmp_path / "r.db")
    first.open()
    await first.append([minio_event("b", f"k{n}", n) for n in range(10)])
    await first.close()
    second = Log(tmp_path / "r.db")
    second.open()
    try:
        entries = await asyncio.to_thread(second.entries_after, 0, 100)
    finally:
        await second.close()
    assert [e.event.key for e in entries] == [f"k{n}" for n in range(10)]
    assert entries[0].event.record == minio_event("b", "k0", 0).record
    assert second.events == 10


async def test_concurrent_appends_share_commits(log: Log) -> None:
    commits_before = log.commits
    await asyncio.gather(*(log.append([minio_event("b", f"k{n}", n)]) for n in range(500)))
    assert log.events == 500
    assert log.commits - commits_before < 500  # grouped, not one fsync per request


async def test_new_sink_starts_at_the_head(log: Log) -> None:
    await log.append([minio_event("b", "old", 1)])
    sink = ScriptedSink()
    d, task = await run(log, sink)
    await log.append([minio_event("b", "new", 2)])
    await eventually(lambda: len(sink.received) == 1)
    await stop(d, task)
    assert [e.key for e in sink.received] == ["new"]


async def test_permanent_failure_is_dead_lettered_and_the_rest_flows(log: Log) -> None:
    sink = ScriptedSink()
    sink.verdict = lambda e: Permanent("schema says no") if e.key == "poison" else None
    d, task = await run(log, sink)
    await log.append([minio_event("b", k, n) for n, k in enumerate(["a", "poison", "c"])])
    await eventually(lambda: len(sink.received) == 2)
    await stop(d, task)
    assert [e.key for e in sink.received] == ["a", "c"]
    dead = await log.read(lambda c: admin.list_dead_letters(c, None, 10))
    assert [(x.key, x.error, x.attempts) for x in dead] == [("poison", "schema says no", 1)]


async def test_retryable_failure_holds_the_cursor_and_keeps_order(log: Log) -> None:
    sink = ScriptedSink()
    healthy = asyncio.Event()
    sink.verdict = lambda e: None if healthy.is_set() else Retryable("down")
    d, task = await run(log, sink, batch_size=7)
    await log.append([minio_event("b", f"k{n}", n) for n in range(20)])
    await eventually(lambda: d.up is False)
    # the sink is marked down as the round is planned, its schedule written just after
    state = await eventually(
        lambda: log.read(lambda c: c.execute("SELECT attempts, last_error FROM retries").fetchall())
    )
    assert state[0][1] == "down"
    healthy.set()
    await eventually(lambda: len(sink.received) == 20)
    await stop(d, task)
    assert [e.key for e in sink.received] == [f"k{n}" for n in range(20)]
    assert d.up is True
    assert await log.read(lambda c: c.execute("SELECT count(*) FROM retries").fetchone()[0]) == 0


async def test_retry_schedule_and_attempts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    event_log = Log(path)
    event_log.open()
    sink = ScriptedSink()
    sink.verdict = lambda e: Retryable("still down")
    d, task = await run(event_log, sink)
    await event_log.append([minio_event("b", "k", 1)])

    def attempts() -> int:
        row = sqlite3.connect(path).execute("SELECT attempts FROM retries").fetchone()
        return row[0] if row else 0

    await eventually(lambda: attempts() >= 2)
    await stop(d, task)
    await event_log.close()
    before = attempts()
    event_log = Log(path)
    event_log.open()
    d, task = await run(event_log, sink, max_attempts=before + 1)
    await eventually(lambda: attempts() == 0)  # exhausted → dead letter, schedule gone
    await stop(d, task)
    dead = await event_log.read(lambda c: admin.list_dead_letters(c, None, 10))
    await event_log.close()
    assert [x.attempts for x in dead] == [before + 1]


async def test_dead_letter_retry_redelivers(log: Log) -> None:
    sink = ScriptedSink()
    fixed = asyncio.Event()
    sink.verdict = lambda e: None if fixed.is_set() else Permanent("rejected")
    d, task = await run(log, sink)
    await log.append([minio_event("b", "k", 1)])
    await eventually(lambda: log.read(lambda c: admin.list_dead_letters(c, None, 10)))
    fixed.set()
    assert await log.write(lambda c: _retry_all(c)) == 1
    await eventually(lambda: len(sink.received) == 1)
    await stop(d, task)
    assert await log.read(lambda c: admin.list_dead_letters(c, None, 10)) == []


def _retry_all(conn: sqlite3.Connection) -> int:
    rows = conn.execute("SELECT id, sink, seq FROM dead_letters").fetchall()
    for row_id, sink, seq in rows:
        conn.execute(
            "INSERT INTO redeliveries (sink, seq, reason) VALUES (?, ?, 'dlq-retry')", (sink, seq)
        )
        conn.execute("DELETE FROM dead_letters WHERE id = ?", (row_id,))
    return len(rows)


async def test_rules_keep_other_events_away_and_the_cursor_moves_past_them(log: Log) -> None:
    sink = ScriptedSink()
    router = Router([Rule("jpgs", suffix=".jpg", sinks=(sink.name,))], [sink.name])
    d, task = await run(log, sink, router)
    await log.append([minio_event("b", k, n) for n, k in enumerate(["a.txt", "b.jpg", "c.txt"])])
    await eventually(lambda: log.read(lambda c: stats.sink_stats(c, sink.name).pending == 0))
    await stop(d, task)
    assert [e.key for e in sink.received] == ["b.jpg"]


async def test_a_sink_that_cannot_start_is_down_then_recovers(log: Log) -> None:
    sink = ScriptedSink()
    sink.start_error = Retryable("connection refused")
    d, task = await run(log, sink)
    await log.append([minio_event("b", "k", 1)])
    await eventually(lambda: d.up is False)
    sink.start_error = None
    await eventually(lambda: len(sink.received) == 1)
    await stop(d, task)


async def test_a_start_error_is_logged_redacted(log: Log, caplog: pytest.LogCaptureFixture) -> None:
    sink = ScriptedSink()
    sink.start_error = Retryable("cannot connect to amqp://relay:pa55-word@broker:5672/")
    log.set_sinks([sink.name])
    await log.init_cursors([sink.name])
    redact = Redactor(["pa55-word"])
    d = Dispatcher(sink, log, Router([], [sink.name]), Policy(backoff_max=0.05), redact)
    task = asyncio.create_task(d.run())
    await eventually(lambda: d.up is False)
    await stop(d, task)
    (line,) = [r for r in caplog.records if r.getMessage() == "sink down"]
    assert "amqp://***@broker" in line.error  # type: ignore[attr-defined]
    assert "pa55-word" not in line.error  # type: ignore[attr-defined]


async def test_recent_errors_say_what_failed_redacted_newest_first(log: Log) -> None:
    """What a sink's row on the status page opens: start failures, retries, dead letters."""
    sink = ScriptedSink()
    sink.start_error = Retryable("cannot connect to amqp://relay:pa55-word@broker:5672/")
    sink.verdict = lambda e: (Permanent("refused with pa55-word") if e.key == "poison"
                              else Retryable("busy") if e.key == "slow" else None)  # fmt: skip
    log.set_sinks([sink.name])
    await log.init_cursors([sink.name])
    d = Dispatcher(sink, log, Router([], [sink.name]), Policy(backoff_max=0.05),
                   Redactor(["pa55-word"]))  # fmt: skip
    task = asyncio.create_task(d.run())
    await eventually(lambda: d.errors.newest_first())
    sink.start_error = None
    await log.append([minio_event("b", k, n) for n, k in enumerate(["a", "poison", "slow"])])
    await eventually(lambda: {"retrying", "dead-lettered"} <= {
        e.outcome for e in d.errors.newest_first()})  # fmt: skip
    await stop(d, task)
    errors = d.errors.newest_first()
    assert errors[-1].outcome == "not started" and "amqp://***@broker" in errors[-1].error
    dead = next(e for e in errors if e.outcome == "dead-lettered")
    assert (dead.seq, dead.bucket, dead.key, dead.attempts) == (2, "b", "poison", 1)
    retrying = next(e for e in errors if e.outcome == "retrying")
    assert (retrying.seq, retrying.key, retrying.error) == (3, "slow", "busy")
    assert [e.at for e in errors] == sorted((e.at for e in errors), reverse=True)
    assert not any("pa55-word" in e.error for e in errors)


async def test_retention_prunes_only_delivered_events(tmp_path: Path) -> None:
    event_log = Log(tmp_path / "r.db", retention=0, prune_every=0.5)
    event_log.open()
    sink = ScriptedSink()
    blocked = {"k3"}
    sink.verdict = lambda e: Retryable("no") if e.key in blocked else None
    d, task = await run(event_log, sink)
    await event_log.append([minio_event("b", f"k{n}", n) for n in range(6)])
    # every event but k3 reaches the sink; k3 is parked, and kept while the rest is pruned
    await eventually(lambda: len(sink.received) == 5)
    await eventually(lambda: event_log.events == 1)
    keys = [e.event.key for e in await asyncio.to_thread(event_log.entries_after, 0, 10)]
    assert keys == ["k3"]
    blocked.clear()
    await eventually(lambda: len(sink.received) == 6)
    await eventually(lambda: event_log.events == 0)
    await stop(d, task)
    await event_log.close()
    # k4 and k5 (other objects) went out while k3 failed, and were not sent a second time
    assert sorted(e.key for e in sink.received) == [f"k{n}" for n in range(6)]


async def test_backpressure_over_the_high_water_mark(tmp_path: Path) -> None:
    event_log = Log(tmp_path / "r.db", max_events=5)
    event_log.open()
    await event_log.append([minio_event("b", f"k{n}", n) for n in range(5)])
    await eventually(lambda: event_log.pressure == "log_full_events")
    await event_log.close()
    assert time.time()  # nothing else to check: ingest reads `pressure` (see e2e tests)


async def _filled_log(path: Path, events: int = 2000) -> None:
    event_log = Log(path)
    event_log.open()
    for start in range(0, events, 100):
        await event_log.append([minio_event("b", f"k{n}", n) for n in range(start, start + 100)])
    await event_log.close()  # checkpoints the WAL into the file


async def test_the_check_runs_in_the_background_on_request_or_over_the_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.db"
    await _filled_log(path)
    at_start = Log(path, check="auto")
    at_start.open()
    assert (at_start.check_in_background, at_start.check_state) == (False, "ok")
    await at_start.close()
    monkeypatch.setattr(log_module, "CHECK_AT_START_BYTES", 0)  # every log is "large"

    async def passes_in_the_background(mode: str) -> None:
        event_log = Log(path, check=mode)
        event_log.open()
        try:
            assert event_log.check_in_background and event_log.events == 2000
            await eventually(lambda: event_log.check_state == "ok")
            assert event_log.pressure is None
        finally:
            await event_log.close()

    await passes_in_the_background("auto")
    await passes_in_the_background("background")


async def test_damage_found_in_the_background_refuses_ingest_for_good(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    await _filled_log(path)
    damage_record_page(path, b"REQ%012d" % 1000)
    event_log = Log(path, check="background")
    event_log.open()  # the counts do not read the damaged page: the relay would serve
    try:
        await eventually(lambda: event_log.check_state == "damaged")
        assert event_log.pressure == "log_damaged"
        # a commit measures the log again; the damage stays what ingest is told
        await event_log.append([minio_event("b", "after", 5000)])
        assert event_log.pressure == "log_damaged"
    finally:
        await event_log.close()


async def test_the_objects_of_a_multi_object_request_are_kept_in_the_log(log: Log) -> None:
    event = minio_event("b", "", 1)
    event.objects = ("q1/a.pdf", "q2/é.pdf")
    event.metadata = {}
    await log.append([event])
    (entry,) = await asyncio.to_thread(log.entries_after, 0, 10)
    assert entry.event.objects == ("q1/a.pdf", "q2/é.pdf")


async def _delivered_and_pruned(event_log: Log, sink: str) -> None:
    """Move the sink's cursor past every event, then wait for retention to prune them."""
    await event_log.settle(Settlement(sink, cursor=event_log.last_seq))
    await eventually(lambda: event_log.events == 0)


async def test_a_resend_after_retention_pruned_the_event_is_stored_again(tmp_path: Path) -> None:
    """The dedup window is RELAY_RETENTION: within it a sender's resend is a duplicate, past
    it (the event delivered and pruned) the same event is new again."""
    event_log = Log(tmp_path / "r.db", retention=0.3, prune_every=0.1)
    event_log.open()
    try:
        event_log.set_sinks(["s:x"])
        await event_log.init_cursors(["s:x"])
        event = minio_event("b", "k", 1)
        assert (await event_log.append([event])).accepted == 1
        assert (await event_log.append([event])).duplicates == 1  # inside the window
        await _delivered_and_pruned(event_log, "s:x")
        assert (await event_log.append([event])).accepted == 1  # past it
    finally:
        await event_log.close()


async def test_near_the_high_water_mark_the_dedup_window_shrinks(tmp_path: Path) -> None:
    """Retention of a day, but the log at 90 % of RELAY_MAX_EVENTS: every delivered event is
    pruned at once, and a resend of one is stored again."""
    event_log = Log(tmp_path / "r.db", retention=86400, max_events=10, prune_every=3600)
    event_log.open()
    try:
        event_log.set_sinks(["s:x"])
        await event_log.init_cursors(["s:x"])
        events = [minio_event("b", f"k{n}", n) for n in range(9)]
        await event_log.append(events)
        await _delivered_and_pruned(event_log, "s:x")
        assert (await event_log.append([events[0]])).accepted == 1
    finally:
        await event_log.close()
