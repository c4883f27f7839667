"""Where is my event: the trace built from the log's rows (relay/queue/trace.py), by hand-made
rows for each state, and read back from a real log whose states the delivery settlements
wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from relay.queue import trace
from relay.queue.admin import AdminError
from relay.queue.log import Log, LogEntry, Missed, Settlement
from relay.queue.trace import (
    CursorRow,
    DeadLetterRow,
    RedeliveryRow,
    Retry,
    Routing,
    Shed,
    TraceQuery,
    TraceRows,
)
from relay.rules import Router, Rule
from tests.support.pipeline import minio_event

KAFKA, IMAGES = "kafka:main", "webhook:images"
SINKS = (KAFKA, IMAGES)
ROUTER = Router([Rule("images", suffix=".jpg", sinks=(IMAGES,)), Rule("all", sinks=(KAFKA,))],
                SINKS)  # fmt: skip
ROUTING = Routing(SINKS, ROUTER.why_not_to, {KAFKA: "flag", IMAGES: "drop"})
PDF = "invoices/2026/03/x.pdf"


def entry(seq: int, key: str = "2026/03/x.pdf", n: int | None = None) -> LogEntry:
    """An event of bucket "invoices"; `n` orders it among its object's (its sequencer)."""
    return LogEntry(
        seq, 1_700_000_000.0 + seq, minio_event("invoices", key, seq if n is None else n)
    )


def rows(*matched: LogEntry, cursor: int = 0, **kwargs: object) -> TraceRows:
    made = TraceRows(matched=list(matched), **kwargs)  # type: ignore[arg-type]
    made.cursors = made.cursors or {
        KAFKA: CursorRow(cursor, 1_700_000_500.0, None),
        IMAGES: CursorRow(cursor, 1.0, None),
    }
    if not made.history:
        for e in matched:
            made.history.setdefault((e.event.bucket, e.event.key), []).append(e)
    return made


def sink(t: trace.Trace, name: str, event: int = 0) -> trace.SinkTrace:
    return next(s for s in t.events[event].sinks if s.sink == name)


def build(r: TraceRows, text: str = PDF) -> trace.Trace:
    return trace.build(TraceQuery.parse(text), r, ROUTING)


# -- the query ----------------------------------------------------------------------------------


def test_a_query_is_an_event_id_a_seq_or_bucket_and_key() -> None:
    assert TraceQuery.parse(" 0123456789ABCDEF0123456789abcdef ").event_id == (
        "0123456789abcdef0123456789abcdef"
    )
    assert TraceQuery.parse("1042").seq == 1042
    q = TraceQuery.parse("invoices/2026/03/x.pdf", since=5.0)
    assert (q.bucket, q.key, q.since) == ("invoices", "2026/03/x.pdf", 5.0)
    for bad in ("invoices", "invoices/", "/x.pdf", "", "12ab"):
        with pytest.raises(AdminError, match=r"event id .* a seq, or bucket/key"):
            TraceQuery.parse(bad)


# -- one state per sink, from rows ----------------------------------------------------------------


def test_delivered_by_the_time_the_cursor_last_moved_and_filtered_with_the_failing_rule() -> None:
    t = build(rows(entry(7), cursor=9))
    [event] = t.events
    assert (event.seq, event.bucket, event.key, event.source) == (7, "invoices", "2026/03/x.pdf",
                                                                  "test")  # fmt: skip
    assert event.duplicates is None  # the log does not count them: not invented
    kafka = sink(t, KAFKA)
    assert (kafka.state, kafka.delivered_by, kafka.cursor) == ("delivered", 1_700_000_500.0, 9)
    assert kafka.detail.startswith("delivered by 2023-11-14T22:21:40Z")
    images = sink(t, IMAGES)
    assert images.state == "filtered"
    assert images.why_not == ['rule "images": suffix ".jpg" does not match key "2026/03/x.pdf"']
    assert images.detail == images.why_not[0]


def test_waiting_counts_the_sinks_events_ahead_and_says_the_sink_is_paused() -> None:
    r = rows(entry(12), cursor=3, ahead={(KAFKA, 12): (8, True)})
    r.cursors[KAFKA] = CursorRow(3, 1.0, "operator")
    kafka = sink(build(r), KAFKA)
    assert (kafka.state, kafka.ahead, kafka.ahead_exact, kafka.paused) == (
        "waiting", 8, True, "operator")  # fmt: skip
    assert "8 events of the sink ahead of it" in kafka.detail
    assert "the sink is paused (operator)" in kafka.detail
    # too far behind to read: every event ahead, before rules
    r = rows(entry(12), cursor=3, ahead={(KAFKA, 12): (8, False)})
    assert "8 events of the log (before rules) ahead" in sink(build(r), KAFKA).detail


def test_waiting_behind_a_cursor_that_holds_at_a_failing_event() -> None:
    failing = Retry(4, 3, 1_700_000_600.0, "HTTP 503")
    r = rows(entry(12), cursor=3, retries={(KAFKA, 4): failing})
    kafka = sink(build(r), KAFKA)
    assert (kafka.state, kafka.retry) == ("waiting", failing)
    assert "the cursor holds at seq 4, which failed 3 times" in kafka.detail
    assert "last error: HTTP 503" in kafka.detail


def test_parked_behind_the_failing_event_of_its_object_which_is_retrying() -> None:
    head, later = entry(5), entry(8)
    failing = Retry(5, 2, 1_700_000_700.0, "HTTP 500: nope")
    r = rows(head, later, cursor=10,
             redeliveries={(KAFKA, 5): RedeliveryRow("parked", None),
                           (KAFKA, 8): RedeliveryRow("parked", None)},
             retries={(KAFKA, 5): failing},
             parked={(KAFKA, "invoices", "2026/03/x.pdf"): [5, 8]})  # fmt: skip
    t = build(r)
    first, second = sink(t, KAFKA, 0), sink(t, KAFKA, 1)
    assert (first.state, first.retry) == ("retrying", failing)
    assert first.detail.startswith("failed 2 times, next attempt at 2023-11-14T22:25:00Z")
    assert (second.state, second.retry) == ("parked", failing)
    assert second.detail.startswith("parked behind seq 5 of its object, which failed 2 times")
    # the failing one went through: the next of the object goes next
    del r.redeliveries[(KAFKA, 5)], r.retries[(KAFKA, 5)]
    r.parked[(KAFKA, "invoices", "2026/03/x.pdf")] = [8]
    r.matched = [later]
    assert sink(build(r), KAFKA).state == "parked"
    assert "it goes next" in sink(build(r), KAFKA).detail


def test_retrying_where_the_cursor_holds() -> None:
    failing = Retry(4, 1, 1_700_000_600.0, "ConnectionRefusedError: [Errno 111]")
    kafka = sink(build(rows(entry(4), cursor=3, retries={(KAFKA, 4): failing})), KAFKA)
    assert (kafka.state, kafka.retry) == ("retrying", failing)
    assert "the sink's cursor holds at it" in kafka.detail


def test_dead_lettered_with_or_without_a_retry_under_way() -> None:
    letter = DeadLetterRow(3, KAFKA, 7, 1, "HTTP 400: bad request", 1_700_000_100.0, None)
    kafka = sink(build(rows(entry(7), cursor=9, dead_letters=[letter])), KAFKA)
    assert kafka.state == "dead-lettered"
    assert kafka.dead_letter == trace.DeadLetter(3, 1, "HTTP 400: bad request",
                                                 1_700_000_100.0, None)  # fmt: skip
    assert kafka.detail == ("dead-lettered at 2023-11-14T22:15:00Z after 1 attempt: HTTP 400: "
                            "bad request; no retry under way (relay dlq retry 3)")  # fmt: skip
    retried = msgspec.structs.replace(letter, retrying_to=IMAGES)
    r = rows(entry(7), cursor=9, dead_letters=[retried],
             redeliveries={(IMAGES, 7): RedeliveryRow("dlq-retry", None)})  # fmt: skip
    t = build(r)
    assert sink(t, KAFKA).detail.endswith("a retry is under way to webhook:images")
    # the target sink has it queued again, though its rules would not send it there
    images = sink(t, IMAGES)
    assert (images.state, images.queued) == ("queued again", "dlq-retry")
    assert images.detail.startswith("queued again (a dead letter of kafka:main retried)")


def test_queued_again_and_stale_when_the_sink_has_since_had_a_newer_event() -> None:
    newer = "0000000000000009".ljust(64, "0")
    r = rows(entry(7, key="a.jpg"), cursor=9,
             redeliveries={(KAFKA, 7): RedeliveryRow("replay", newer),
                           (IMAGES, 7): RedeliveryRow("replay", newer)})  # fmt: skip
    t = build(r)
    kafka, images = sink(t, KAFKA), sink(t, IMAGES)
    assert (kafka.state, kafka.queued, kafka.stale) == ("queued again", "replay", True)
    assert kafka.detail.endswith("the sink has since had a newer event of its object: it will be "
                                 "marked stale (STALE=flag)")  # fmt: skip
    assert (images.state, images.stale) == ("stale", True)  # STALE=drop: never sent
    assert "dropped, not sent (STALE=drop)" in images.detail
    r.redeliveries = {(KAFKA, 7): RedeliveryRow("replay", None)}
    assert not sink(build(r), KAFKA).stale


def test_in_cursor_order_an_event_older_than_one_the_sink_had_is_stale() -> None:
    # seq 7 carries a newer sequencer than seq 8: the sink had 7 first
    first, late = entry(7, key="a.jpg", n=20), entry(8, key="a.jpg", n=10)
    t = build(rows(first, late, cursor=9))
    kafka, images = sink(t, KAFKA, 1), sink(t, IMAGES, 1)
    assert (kafka.state, kafka.stale) == ("delivered", True)
    assert kafka.detail.endswith(
        "; stale: the sink had a newer event of its object (seq 7): it was marked stale "
        "(STALE=flag)")  # fmt: skip
    assert (images.state, images.stale) == ("stale", True)
    assert images.detail.startswith("not sent: older than seq 7 of its object")
    assert not sink(t, KAFKA, 0).stale
    # one the sink dead-lettered was not had
    letter = DeadLetterRow(1, KAFKA, 7, 1, "HTTP 400", 1.0, None)
    assert not sink(build(rows(first, late, cursor=9, dead_letters=[letter])), KAFKA, 1).stale


def test_shed_inside_a_range_the_sink_is_owed_a_marker_for() -> None:
    gap = Shed(1, 4000, 4000, "max_backlog")
    kafka = sink(build(rows(entry(7), cursor=4500, missed={KAFKA: [gap]})), KAFKA)
    assert (kafka.state, kafka.shed) == ("shed", gap)
    assert kafka.detail == ("shed: past the sink's MAX_BACKLOG (ON_FULL=shed); one of 4000 "
                            "events of the sink in seqs 1..4000, for which the sink is owed a "
                            "relay:MissedEvents marker")  # fmt: skip


def test_nothing_matched_says_what_the_log_knows() -> None:
    base = {"pruned_upto": 100, "head": 500}
    gap = Shed(40, 60, None, "pruned")
    t = trace.build(TraceQuery.parse("50"), TraceRows([], missed={KAFKA: [gap]}, **base), ROUTING)
    assert t.events == []
    assert t.notes[0].startswith("seq 50 is no longer in the log: retention pruned it")
    assert t.notes[1].startswith("kafka:main: shed: retention pruned them")
    t = trace.build(TraceQuery.parse("900"), TraceRows([], **base), ROUTING)
    assert t.notes == ["no event has seq 900: the newest in the log is seq 500"]
    t = trace.build(TraceQuery.parse("300"), TraceRows([], **base), ROUTING)
    assert "a duplicate that was not stored used the number up" in t.notes[0]
    t = trace.build(TraceQuery.parse(PDF), TraceRows([], **base), ROUTING)
    assert t.notes[0].startswith("no event of invoices/2026/03/x.pdf in the log")


def test_every_state_has_a_name_the_page_and_the_cli_know() -> None:
    assert set(trace.STATES) == {"delivered", "waiting", "parked", "retrying", "dead-lettered",
                                 "queued again", "stale", "filtered", "shed"}  # fmt: skip


# -- read back from a real log --------------------------------------------------------------------


@pytest.fixture
async def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    event_log = Log(tmp_path / "relay.db", retention=3600)
    event_log.open()
    await event_log.init_cursors(list(SINKS))
    yield event_log
    await event_log.close()


async def test_read_from_the_log_each_state_the_settlements_wrote(log: Log) -> None:
    keys = ["a.pdf", "b.pdf", "c.jpg", "b.pdf", "d.pdf", "e.pdf", "f.pdf"]
    await log.append([minio_event("invoices", k, n) for n, k in enumerate(keys, 1)])
    # kafka: 1 delivered, 2 failing (head of b.pdf), 4 parked behind it, 3 dead-lettered,
    # 5 queued again (a replay), the cursor at 5; 6 and 7 wait
    await log.settle(Settlement(
        KAFKA, cursor=5, dead=[(3, 1, "HTTP 400")], park=[2, 4],
        retries=[(2, 2, 1_700_000_000.0, 1_700_000_900.0, "HTTP 500")],
    ))  # fmt: skip
    await log.replay(KAFKA, 0, 2e9, "invoices", "d.pdf", lambda e: True)
    # images: shed 1..6 (a marker owed), the rest waits
    await log.settle(Settlement(IMAGES, cursor=6, missed=Missed(1, 6, 1, None, None,
                                                                "max_backlog")))  # fmt: skip

    async def states(text: str) -> list[tuple[int, str, str]]:
        t = await log.trace(TraceQuery.parse(text), ROUTING)
        return [(e.seq, s.sink, s.state) for e in t.events for s in e.sinks]

    assert await states("1") == [(1, KAFKA, "delivered"), (1, IMAGES, "filtered")]
    assert await states("invoices/b.pdf") == [
        (2, KAFKA, "retrying"), (2, IMAGES, "filtered"),
        (4, KAFKA, "parked"), (4, IMAGES, "filtered"),
    ]  # fmt: skip
    assert await states("invoices/c.jpg") == [(3, KAFKA, "dead-lettered"), (3, IMAGES, "shed")]
    assert await states("invoices/d.pdf") == [(5, KAFKA, "queued again"), (5, IMAGES, "filtered")]
    [event] = (await log.trace(TraceQuery.parse("7"), ROUTING)).events
    kafka = event.sinks[0]
    assert (kafka.state, kafka.ahead, kafka.ahead_exact) == ("waiting", 1, True)  # 6 is ahead
    by_id = await log.trace(TraceQuery.parse(event.event_id), ROUTING)
    assert by_id.events == [event]
    # the newest events of an object, and how many older ones are not shown
    t = await log.trace(TraceQuery.parse("invoices/b.pdf", limit=1), ROUTING)
    assert ([e.seq for e in t.events], t.more) == ([4], 1)
    # since: only events received then or later
    t = await log.trace(TraceQuery.parse("invoices/b.pdf", since=event.received_at + 60), ROUTING)
    assert t.events == [] and "received since" in t.notes[0]
    assert (await log.trace(TraceQuery.parse("99"), ROUTING)).notes == [
        "no event has seq 99: the newest in the log is seq 7"]  # fmt: skip


async def test_since_starts_the_scan_where_the_log_reaches_it(log: Log) -> None:
    await log.append([minio_event("invoices", f"k{n % 3}", n) for n in range(1, 101)])
    # received a minute apart, one event after the other
    with sqlite3.connect(log.path) as conn:
        conn.execute("UPDATE events SET received_at = 1000000 + seq * 60")
    conn = log.reader()
    assert trace._first_seq_since(conn, 1_000_000 + 50 * 60) == 49  # a minute early
    assert trace._first_seq_since(conn, 0) == 0
    assert trace._first_seq_since(conn, 2e9) == 101  # past the end
    t = await log.trace(TraceQuery.parse("invoices/k1", since=1_000_000 + 90 * 60), ROUTING)
    assert [e.seq for e in t.events] == [91, 94, 97, 100]


async def test_too_much_ahead_to_read_counts_every_event_before_rules(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.append([minio_event("invoices", f"k{n}.jpg" if n % 2 else f"k{n}", n)
                      for n in range(1, 21)])  # fmt: skip
    [event] = (await log.trace(TraceQuery.parse("20"), ROUTING)).events
    images = next(s for s in event.sinks if s.sink == IMAGES)
    assert (images.state, images.ahead, images.ahead_exact) == ("filtered", None, True)
    [event] = (await log.trace(TraceQuery.parse("19"), ROUTING)).events
    images = next(s for s in event.sinks if s.sink == IMAGES)
    assert (images.ahead, images.ahead_exact) == (9, True)  # the .jpg ones: 1, 3, … 17
    monkeypatch.setattr(trace, "AHEAD_SCAN", 5)
    [event] = (await log.trace(TraceQuery.parse("19"), ROUTING)).events
    images = next(s for s in event.sinks if s.sink == IMAGES)
    assert (images.ahead, images.ahead_exact) == (18, False)
    assert "18 events of the log (before rules) ahead of it" in images.detail
