"""Per-object order, parking and stale events, with the real Dispatcher and Log.

The sinks here are test doubles of our own Sink interface (not of a client library): they
produce on demand what a real target does only by accident, e.g. a pipelined batch whose
earlier event failed while a later one of the same object was acknowledged. Each sink
suite in tests/integration shows the same against its real server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from relay import metrics
from relay.delivery.dispatcher import Dispatcher, Policy
from relay.delivery.plan import Limits, Round, plan, unfinished
from relay.events import Event, order_token
from relay.queue import admin, stats
from relay.queue.log import Log, LogEntry
from relay.rules import Router
from relay.sinks.base import Health, NotSent, Result, Retryable
from tests.support.pipeline import minio_event
from tests.support.waiting import eventually


class BatchDouble:
    """A pipelined sink: every event of a batch is handed over; `verdict` decides each."""

    def __init__(self, name: str = "double:batch") -> None:
        self.name = name
        self.received: list[LogEntry] = []
        self.verdict: Callable[[LogEntry], Result] = lambda entry: None

    async def start(self) -> None:
        pass

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        results = []
        for entry in batch:
            result = self.verdict(entry)
            if result is None:
                self.received.append(entry)
            results.append(result)
        return results

    async def close(self) -> None:
        pass

    async def health(self) -> Health:
        return Health(True, "double")


class EventDouble(BatchDouble):
    """A one-event-at-a-time sink (the layer runs its lanes)."""

    async def send_event(self, entry: LogEntry) -> None:
        result = self.verdict(entry)
        if result is not None:
            raise result
        self.received.append(entry)


@pytest.fixture
async def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    event_log = Log(tmp_path / "relay.db", retention=3600)
    event_log.open()
    yield event_log
    await event_log.close()


async def start(log: Log, sink: BatchDouble, **policy: object):  # type: ignore[no-untyped-def]
    log.set_sinks([sink.name])
    await log.init_cursors([sink.name])
    d = Dispatcher(sink, log, Router([], [sink.name]),
                   Policy(backoff_max=0.05, quick_attempts=1, **policy))  # type: ignore[arg-type]  # fmt: skip
    return d, asyncio.create_task(d.run())


async def finish(d: Dispatcher, task: asyncio.Task[None]) -> None:
    d.stop()
    await asyncio.wait_for(task, 10)


def event(key: str, n: int, sequencer: int | None = None) -> Event:
    e = minio_event("b", key, n)
    if sequencer is not None:
        e.sequencer = f"{sequencer:016X}"
    return e


def num(entry: LogEntry) -> int:
    """The `n` an event was made with (tests.support.bodies: size = 100 + n)."""
    return (entry.event.size or 0) - 100


def last_occurrence_order(received: Sequence[LogEntry], key: str) -> list[int]:
    """The seqs of one object in the order their last copies reached the target."""
    last: dict[int, int] = {}
    for position, entry in enumerate(received):
        if entry.event.key == key:
            last[entry.seq] = position
    return sorted(last, key=lambda seq: last[seq])


def resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


# -- the plan alone ------------------------------------------------------------------------------


def entry(seq: int, key: str) -> LogEntry:
    return LogEntry(seq, 0.0, event(key, seq))


def test_plan_parks_a_failing_object_and_moves_the_cursor_past_the_rest() -> None:
    sent = [entry(1, "a"), entry(2, "x"), entry(3, "a"), entry(4, "y")]
    results: list[Result] = [Retryable("500 for a"), None, None, None]
    out = plan(Round("s", sent, results, scan_end=4), Limits(), now=100.0)
    s = out.settlement
    assert s.cursor == 4 and s.park == [1, 3]
    assert [r[0] for r in s.retries] == [1]
    assert [e.seq for e in out.delivered] == [2, 4]
    assert out.resends == 1  # seq 3 was acknowledged before seq 1 went: it goes again after


def test_plan_holds_the_cursor_when_nothing_went_through() -> None:
    sent = [entry(1, "a"), entry(2, "b")]
    out = plan(Round("s", sent, [Retryable("down")] * 2, scan_end=2), Limits(), 0.0)
    assert (out.settlement.cursor, out.settlement.park, out.held_at) == (0, [], sent[0])


def test_plan_holds_instead_of_parking_past_max_parked() -> None:
    sent = [entry(1, "x"), entry(2, "a"), entry(3, "y"), entry(4, "a")]
    results: list[Result] = [None, Retryable("no"), None, None]
    r = Round("s", sent, results, scan_end=4, parked=9)
    out = plan(r, Limits(max_parked=10), 0.0)
    assert out.settlement.cursor == 1 and out.settlement.park == []
    assert [e.seq for e in out.delivered] == [1]
    assert out.resends == 2  # 3 and 4 are read and sent again after the hold


def test_plan_dead_letter_does_not_block_its_object() -> None:
    from relay.sinks.base import Permanent

    sent = [entry(1, "a"), entry(2, "a")]
    out = plan(Round("s", sent, [Permanent("bad"), None], scan_end=2), Limits(), 0.0)
    assert [d[0].seq for d in out.dead] == [1] and [e.seq for e in out.delivered] == [2]
    assert out.settlement.cursor == 2 and out.settlement.park == []


def test_plan_settles_parked_events_beside_a_held_cursor() -> None:
    parked, fresh = entry(1, "p"), entry(5, "a")
    r = Round("s", [parked, fresh], [None, Retryable("down")], frozenset({1}), scan_end=5)
    out = plan(r, Limits(), 0.0)
    # the parked event went through, so the target is up: the new failure is parked
    assert out.settlement.done == [1] and out.settlement.park == [5]
    assert out.settlement.cursor == 5 and out.held_at is None
    r = Round("s", [parked, fresh], [Retryable("x"), Retryable("down")], frozenset({1}), scan_end=5)
    out = plan(r, Limits(), 0.0)
    assert out.held_at is fresh and out.settlement.cursor == 4
    assert out.settlement.park == [1]  # still parked, with its next attempt scheduled
    assert sorted(t[0] for t in out.settlement.retries) == [1, 5]


def test_unfinished_resends_from_the_first_failure_of_each_object() -> None:
    batch = [entry(1, "a"), entry(2, "b"), entry(3, "a"), entry(4, "b")]
    results: list[Result] = [None, Retryable("x"), None, None]
    assert unfinished(batch, results) == [1, 3]


def test_order_tokens_follow_each_senders_rule() -> None:
    minio_old, minio_new = event("k", 1, 0x17B0E1C2D3E4F5A6), event("k", 2, 0x17B0E1C2D3E4F5A7)
    assert order_token(minio_old) < order_token(minio_new)  # type: ignore[operator]
    short, long = event("k", 1), event("k", 2)
    short.sequencer, long.sequencer = "0A", "0A01"  # AWS: right-pad the shorter with 0
    assert order_token(short) < order_token(long)  # type: ignore[operator]
    # Ceph: little-endian utime_t bytes; as written, the later event sorts first
    early, late = event("k", 1), event("k", 2)
    early.dialect = late.dialect = "ceph"

    def ceph(sec: int, nsec: int) -> str:
        return (sec.to_bytes(4, "little") + nsec.to_bytes(4, "little")).hex().upper()

    early.sequencer, late.sequencer = ceph(0x6553F1FF, 900), ceph(0x6553F200, 5)
    assert early.sequencer > late.sequencer
    assert order_token(early) < order_token(late)  # type: ignore[operator]
    none = event("k", 3)
    none.sequencer = None
    assert order_token(none) is None


# -- order with the real dispatcher and log ------------------------------------------------------


async def test_a_later_event_acknowledged_before_an_earlier_failure_is_sent_again_after_it(
    log: Log,
) -> None:
    sink = BatchDouble()
    failed_once: set[int] = set()

    def verdict(e: LogEntry) -> Result:
        if e.event.key == "obj" and num(e) == 1 and e.seq not in failed_once:
            failed_once.add(e.seq)
            return Retryable("ack timed out")
        return None

    sink.verdict = verdict
    before = resends(sink.name)
    d, task = await start(log, sink)
    await log.append([event("obj", 1), event("other", 2), event("obj", 3), event("obj", 4)])
    await eventually(lambda: len(sink.received) >= 5)
    await finish(d, task)
    assert last_occurrence_order(sink.received, "obj") == [1, 3, 4]
    assert resends(sink.name) - before == 2


@pytest.mark.parametrize("double", [BatchDouble, EventDouble])
async def test_a_poison_object_is_parked_and_every_other_object_flows(
    log: Log, double: type[BatchDouble]
) -> None:
    sink = double()
    poisoned = {"bad"}
    sink.verdict = lambda e: Retryable("HTTP 500") if e.event.key in poisoned else None
    d, task = await start(log, sink, batch_size=10, concurrency=4)
    events = [event("bad" if n % 10 == 3 else f"k{n}", n) for n in range(55)]
    await log.append(events)
    healthy = [e for e in events if e.key != "bad"]
    await eventually(lambda: len(sink.received) == len(healthy))
    bad = len(events) - len(healthy)  # all parked once the round that read the last settles
    await eventually(lambda: log.read(lambda c: stats.sink_stats(c, sink.name).parked == bad))
    poisoned.clear()
    await eventually(lambda: len(sink.received) == len(events))
    await finish(d, task)
    bad = [e.seq for e in sink.received if e.event.key == "bad"]
    assert bad == sorted(bad)
    assert await log.read(lambda c: stats.sink_stats(c, sink.name).parked) == 0


async def test_parked_objects_and_their_schedule_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    event_log = Log(path)
    event_log.open()
    sink = BatchDouble()
    sink.verdict = lambda e: Retryable("500") if e.event.key == "bad" else None
    d, task = await start(event_log, sink)
    await event_log.append([event("bad", 1), event("ok", 2), event("bad", 3)])
    await eventually(lambda: len(sink.received) == 1)
    await eventually(lambda: event_log.read(lambda c: stats.sink_stats(c, sink.name).parked == 2))
    await finish(d, task)
    await event_log.close()
    attempts = sqlite3.connect(path).execute("SELECT attempts FROM retries").fetchall()
    assert attempts and attempts[0][0] >= 1
    event_log = Log(path)
    event_log.open()
    sink = BatchDouble()
    d, task = await start(event_log, sink)
    await event_log.append([event("bad", 4)])
    await eventually(lambda: len(sink.received) == 3)
    await finish(d, task)
    await event_log.close()
    assert [num(e) for e in sink.received] == [1, 3, 4]


async def test_past_max_parked_the_sink_holds_and_loses_nothing(log: Log) -> None:
    sink = BatchDouble()
    poisoned = {"bad1", "bad2", "bad3"}
    sink.verdict = lambda e: Retryable("500") if e.event.key in poisoned else None
    d, task = await start(log, sink, batch_size=5, max_parked=2)
    events = [event(k, n) for n, k in enumerate(["bad1", "a", "bad2", "b", "bad3", "c", "d"])]
    await log.append(events)
    await eventually(lambda: log.read(lambda c: stats.sink_stats(c, sink.name).parked >= 2))
    parked = await log.read(lambda c: stats.sink_stats(c, sink.name).parked)
    assert parked <= 2 + 5  # the bound, plus at most the batch that crossed it
    poisoned.clear()
    await eventually(lambda: {e.seq for e in sink.received} == set(range(1, 8)))
    await finish(d, task)


# -- stale events --------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "sent_again"), [("flag", True), ("drop", False)])
async def test_a_dead_letter_retried_after_a_newer_event_of_its_object_is_stale(
    log: Log, mode: str, sent_again: bool
) -> None:
    from relay.sinks.base import Permanent

    sink = BatchDouble()
    fixed = asyncio.Event()
    sink.verdict = lambda e: Permanent("schema") if num(e) == 1 and not fixed.is_set() else None
    d, task = await start(log, sink, stale=mode)
    await log.append([event("obj", 1, sequencer=100)])
    await eventually(lambda: log.read(lambda c: admin.list_dead_letters(c, None, 10)))
    await log.append([event("obj", 2, sequencer=200)])  # the DELETE, delivered
    await eventually(lambda: len(sink.received) == 1)
    fixed.set()
    assert (
        await log.write(lambda c: admin.retry_dead_letters_tx(c, None, None, lambda *_: None)) == 1
    )
    await eventually(lambda: log.read(lambda c: stats.sink_stats(c, sink.name).pending == 0))
    await finish(d, task)
    again = [e for e in sink.received if num(e) == 1]
    assert bool(again) is sent_again
    assert all(e.stale for e in again)


async def test_an_event_the_store_sent_out_of_order_is_flagged(log: Log) -> None:
    sink = BatchDouble()
    d, task = await start(log, sink)
    await log.append([event("obj", 1, sequencer=300)])
    await eventually(lambda: len(sink.received) == 1)
    await log.append([event("obj", 2, sequencer=200), event("obj", 3, sequencer=400)])
    await eventually(lambda: len(sink.received) == 3)
    await finish(d, task)
    assert [(num(e), e.stale) for e in sink.received] == [(1, False), (2, True), (3, False)]


async def test_not_sent_is_no_attempt_of_its_own(log: Log) -> None:
    assert isinstance(NotSent(), Retryable)


# -- waves: one event per object in each call ----------------------------------------------------


class WaveDouble(BatchDouble):
    """A batch sink whose target cannot take a resend (`one_per_object`); records each call."""

    one_per_object = True

    def __init__(self) -> None:
        super().__init__("double:waves")
        self.calls: list[list[int]] = []

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        self.calls.append([e.seq for e in batch])
        return await super().send_batch(batch)


async def test_waves_hand_over_an_objects_next_event_only_after_the_one_before() -> None:
    from relay.delivery.lanes import send_in_waves

    sink = WaveDouble()
    batch = [entry(1, "a"), entry(2, "b"), entry(3, "a"), entry(4, "c"), entry(5, "a"),
             entry(6, "c")]  # fmt: skip
    sink.verdict = lambda e: Retryable("no PubAck") if e.seq == 3 else None
    results = await send_in_waves(batch, sink.send_batch)
    assert sink.calls == [[1, 2, 4], [3, 6]]  # 5 waits for 3, which failed: not sent
    assert [type(r).__name__ if r else None for r in results] == [
        None, None, "Retryable", None, "NotSent", None,
    ]  # fmt: skip


async def test_a_one_per_object_sink_is_never_resent_to(log: Log) -> None:
    sink = WaveDouble()
    failed_once: set[int] = set()

    def verdict(e: LogEntry) -> Result:
        if e.event.key == "obj" and num(e) == 1 and e.seq not in failed_once:
            failed_once.add(e.seq)
            return Retryable("no PubAck")
        return None

    sink.verdict = verdict
    before = resends(sink.name)
    d, task = await start(log, sink)
    await log.append([event("obj", 1), event("other", 2), event("obj", 3), event("obj", 4)])
    await eventually(lambda: len(sink.received) >= 4)
    await finish(d, task)
    assert [num(e) for e in sink.received if e.event.key == "obj"] == [1, 3, 4]  # once each
    assert resends(sink.name) == before


async def test_a_seq_a_duplicate_used_up_is_no_missed_event(log: Log) -> None:
    """An ignored insert still takes its AUTOINCREMENT number: the hole it leaves is no
    pruned range, and no relay:MissedEvents marker is sent for it."""
    sink = BatchDouble()
    d, task = await start(log, sink)
    first = event("a", 1)
    await log.append([first])
    await log.append([first])  # a sender's retry: a duplicate, and a hole in the seqs
    await log.append([event("b", 2)])
    await eventually(lambda: len(sink.received) == 2)
    await finish(d, task)
    assert [e.event.key for e in sink.received] == ["a", "b"]
    assert sink.received[1].seq > sink.received[0].seq + 1  # the hole is there
