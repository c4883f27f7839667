"""The replicated log's backend (relay/queue/jetstream) on a real 3-node JetStream cluster:
two instances of it on one log stand for two relay replicas."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest

from relay.config import load_settings
from relay.queue.admin import DeadLetterFilter
from relay.queue.backend import LeaseLost
from relay.queue.jetstream.log import JetStreamLog, LogFull, LogUnavailable
from relay.queue.log import Settlement
from tests.support.bodies import minio_body
from tests.support.nats_cluster import Cluster, drop_log, nats_cluster
from tests.support.pipeline import minio_event
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
Make = Callable[..., JetStreamLog]


@pytest.fixture
async def make(log_cluster: Cluster) -> AsyncIterator[Make]:
    """Instances of one log of a name of its own (keyword arguments: more RELAY_* keys)."""
    name = "i" + uuid.uuid4().hex[:10]
    made: list[JetStreamLog] = []

    def new(**env: str) -> JetStreamLog:
        settings = load_settings({
            "RELAY_LOG": log_cluster.urls, "RELAY_LOG_NAME": name, "RELAY_MAX_BYTES": "16MiB",
            "RELAY_LOG_LEASE": "2s", **{f"RELAY_{k.upper()}": v for k, v in env.items()},
        })  # fmt: skip
        log = JetStreamLog(settings)
        log.open()
        made.append(log)
        return log

    yield new
    for log in made:
        await log.close()
    await drop_log(log_cluster.urls, name)


async def test_append_stores_each_event_id_once_in_and_past_the_duplicate_window(
    make: Make, log_cluster: Cluster
) -> None:
    a, b = make(), make()
    events = [minio_event("b", f"k{n}", n) for n in range(5)]
    assert (await a.append(events)).accepted == 5
    again = await b.append(events[:3])  # another replica, inside the window
    assert (again.accepted, again.duplicates) == (0, 3)
    assert await a.head() == 5
    # past the window the server no longer knows the message id: what a sender's late
    # retry looks like to it. The event's subject already holds its one message.
    nc = await nats.connect(log_cluster.urls.split(","))
    try:
        js = nc.jetstream()
        with pytest.raises(nats.js.errors.APIError, match="maximum messages per subject"):
            await js.publish(a.names.event_subject(events[0].event_id), b"x",
                             headers={"Nats-Msg-Id": "a-new-id"})  # fmt: skip
    finally:
        await nc.close()
    assert await a.head() == 5


async def test_with_dedup_by_window_only_ids_are_refused_inside_the_window(
    make: Make,
) -> None:
    log = make(log_dedup="window")
    events = [minio_event("b", f"k{n}", n) for n in range(3)]
    assert (await log.append(events)).accepted == 3
    assert (await log.append(events)).duplicates == 3
    await log.head()
    js = await log._ready()
    config = (await js.stream_info(log.names.events)).config
    assert config.max_msgs_per_subject in (-1, None, 0)  # no index entry per id
    assert [e.event.key for e in await log.page(0, 10)] == ["k0", "k1", "k2"]


async def test_reads_from_the_window_and_from_the_stream(make: Make) -> None:
    first = make()
    await first.append([minio_event("b", f"old{n}", n) for n in range(30)])
    reader = make()  # its window starts after the 30 already there
    await reader.init_cursors({"webhook:t": "earliest"})
    await reader.append([minio_event("b", f"new{n}", 100 + n) for n in range(10)])
    await eventually(lambda: reader.last_seq == 40)
    older = await asyncio.to_thread(reader.entries_after, 0, 25)
    assert [e.seq for e in older] == list(range(1, 26))
    assert older[0].event.key == "old0" and older[0].event.record
    newer = await asyncio.to_thread(reader.entries_after, 35, 100)
    assert [e.event.key for e in newer] == [f"new{n}" for n in range(5, 10)]
    assert await asyncio.to_thread(reader.entries_after, 40, 10) == []
    before = await asyncio.to_thread(reader.entries_before, 32, 4)
    assert [e.seq for e in before] == [32, 31, 30, 29]
    picked = await asyncio.to_thread(reader.entries, [3, 38, 12])
    assert [e.seq for e in picked] == [3, 12, 38]
    assert [e.seq for e in await reader.page(10, 3)] == [11, 12, 13]
    since = older[0].received_at
    seen = [e.seq async for e in reader.received_between(since, time.time() + 1)]
    assert seen == list(range(1, 41))
    assert (await reader.oldest_received()) == since


async def test_a_sinks_state_and_dead_letters_survive_the_replica_that_wrote_them(
    make: Make,
) -> None:
    a = make()
    await a.init_cursors({"webhook:t": "earliest"})
    await a.append([minio_event("b", f"k{n}", n) for n in range(8)])
    assert await a.hold("webhook:t")
    now = time.time()
    await a.settle(Settlement(
        "webhook:t", cursor=6, dead=[(2, 3, "HTTP 400: no")], park=[4, 5],
        retries=[(4, 2, now - 5, now + 30, "HTTP 503")],
    ))  # fmt: skip
    await a.set_paused("webhook:t", "operator")
    await a.close()  # the replica goes; its lease is let go
    b = make()
    assert await b.hold("webhook:t")
    assert await asyncio.to_thread(b.cursor, "webhook:t") == 6
    parked = await asyncio.to_thread(b.parked, "webhook:t")
    assert [(p.seq, p.key, p.attempts) for p in parked] == [(4, "k3", 2), (5, "k4", None)]
    assert (await asyncio.to_thread(b.retry_state, "webhook:t", 4))[:1] == (2,)
    assert (await asyncio.to_thread(b.sink_state, "webhook:t")).paused == "operator"
    [letter] = await b.dead_letters()
    assert (letter.sink, letter.seq, letter.key, letter.error) == ("webhook:t", 2, "k1",
                                                                    "HTTP 400: no")  # fmt: skip
    shown = await b.dead_letter(letter.id)
    assert json.loads(shown["record"])["s3"]["object"]["key"] == "k1"
    assert await b.dead_letter_counts() == {"webhook:t": 1}
    [stats] = await b.sink_stats(["webhook:t"])
    assert (stats.cursor, stats.parked, stats.pending) == (6, 2, 2 + 2)
    # a dead letter retried is queued for the sink, and leaves once that is finished
    assert await b.retry_dead_letters(DeadLetterFilter(sink="webhook:t")) == 1

    async def queued() -> list[int]:
        return [e.seq for e, _ in await asyncio.to_thread(b.redeliveries, "webhook:t", 10)]

    await eventually(lambda: queued(), timeout=5)  # the holder re-reads within DOC_FRESH
    assert await queued() == [2]
    await b.settle(Settlement("webhook:t", done=[2]))
    assert await b.dead_letters() == []


async def test_one_replica_holds_a_sink_and_another_takes_over_once_it_stops_renewing(
    make: Make,
) -> None:
    a, b = make(), make()
    await a.init_cursors({"webhook:t": "latest"})
    assert await a.hold("webhook:t")
    assert not await b.hold("webhook:t")
    # a renews (four times per lease): b stays out for longer than the lease
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert not await b.hold("webhook:t")
        await asyncio.sleep(0.2)
    for task in a._tasks:  # a stops renewing, as a replica that froze or lost the servers
        task.cancel()
    stopped = time.monotonic()
    await eventually(lambda: b.hold("webhook:t"), timeout=10, interval=0.1)
    print(f"\ntakeover after {time.monotonic() - stopped:.1f} s (lease 2 s)")
    with pytest.raises(LeaseLost):
        await a.settle(Settlement("webhook:t", cursor=1))
    await b.settle(Settlement("webhook:t", cursor=0))


async def test_quarantined_bodies_are_kept_and_taken_in_once_they_parse(make: Make) -> None:
    log = make()
    qid = await log.quarantine("default", "not json", json.dumps({"X-A": "1"}), b"{oops")
    good = await log.quarantine("default", "was unreadable", "{}", minio_body("b", "q", 1))
    assert await log.quarantine_count() == 2
    assert [row[0] for row in await log.quarantined(10)] == [qid, good]
    body = await log.quarantined_body(qid)
    assert body["body"] == "{oops" and body["headers"] == {"X-A": "1"}
    results = {r.id: r.ok for r in await log.retry_quarantine(None)}
    assert results == {qid: False, good: True}
    assert await log.quarantine_count() == 1
    assert [e.event.key for e in await log.page(0, 10)] == ["q"]


async def test_replay_queues_the_events_of_a_time_range_for_a_sink(make: Make) -> None:
    log = make()
    await log.init_cursors({"webhook:t": "latest"})
    started = time.time()
    await log.append([minio_event("b", f"k{n}", n) for n in range(6)])
    selected, queued = await log.replay(
        "webhook:t", started - 1, time.time() + 1, "b", "k", lambda e: e.event.key != "k2"
    )
    assert (selected, queued) == (5, 5)
    assert await log.pending_seqs("webhook:t") == {1, 2, 4, 5, 6}


async def test_a_full_stream_refuses_events(make: Make) -> None:
    log = make(max_events="5")
    await log.append([minio_event("b", f"k{n}", n) for n in range(5)])
    with pytest.raises(LogFull):
        await log.append([minio_event("b", "k9", 9)])


async def test_without_a_quorum_an_append_fails_within_its_bound(tmp_path: Path) -> None:
    with nats_cluster(tmp_path) as cluster:
        settings = load_settings({
            "RELAY_LOG": cluster.urls, "RELAY_LOG_NAME": "quorum", "RELAY_MAX_BYTES": "64MiB",
            "RELAY_LOG_PUBLISH_TIMEOUT": "1s",
        })  # fmt: skip
        log = JetStreamLog(settings)
        log.open()
        try:
            assert (await log.append([minio_event("b", "k", 1)])).accepted == 1
            for node in cluster.nodes[1:]:
                node.server.stop()
            started = time.monotonic()
            with pytest.raises(LogUnavailable):
                await log.append([minio_event("b", "k2", 2)])
            print(f"\nappend without a quorum failed after {time.monotonic() - started:.1f} s")
        finally:
            await log.close()


async def test_trace_finds_an_id_and_an_object_without_an_index_within_its_scan(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELAY_LOG_DEDUP=window keeps every event on one subject: an id and an object are
    found by reading the newest events, and a trace that found nothing says how far back it
    read."""
    from relay.queue import trace
    from relay.queue.jetstream import trace as jetstream_trace

    log = make(log_dedup="window")
    events = [minio_event("b", f"k{n % 4}", n) for n in range(1, 41)]
    assert (await log.append(events)).accepted == 40
    routing = trace.Routing(["webhook:a"], lambda sink, event: None)

    async def seqs(text: str) -> list[int]:
        found = await log.trace(trace.TraceQuery.parse(text), routing)
        return [e.seq for e in found.events]

    assert await seqs("b/k1") == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37]
    assert await seqs(events[6].event_id) == [7]
    [event] = (await log.trace(trace.TraceQuery.parse("12"), routing)).events
    assert event.sinks[0].state == "waiting"  # the sink has no cursor yet
    monkeypatch.setattr(jetstream_trace, "SCAN", 10)
    assert await seqs("b/k1") == [33, 37]  # seqs 31..40 read
    assert await seqs(events[6].event_id) == []
    found = await log.trace(trace.TraceQuery.parse("b/k9"), routing)
    assert found.notes[1] == (
        "the log has no index by object: only seqs 31..40, the newest, were searched"
    )


async def test_a_retry_and_a_replay_carry_the_stale_checks_token(make: Make) -> None:
    """What the sink has had of an object since an event: the newest order token, so
    delivery can tell the event sent again is stale."""
    from relay.events import order_token

    log = make()
    await log.init_cursors({"webhook:t": "earliest", "webhook:u": "earliest"})
    events = [minio_event("b", "k1", 1), minio_event("b", "k2", 2), minio_event("b", "k1", 3)]
    await log.append(events)
    for sink in ("webhook:t", "webhook:u"):
        assert await log.hold(sink)
    await log.settle(Settlement("webhook:t", cursor=3, dead=[(1, 1, "HTTP 400")]))
    await log.settle(Settlement("webhook:u", cursor=3))
    assert await log.retry_dead_letters(DeadLetterFilter(sink="webhook:t")) == 1
    assert await log.replay("webhook:u", 0, time.time() + 60, "b", None, lambda e: True) == (3, 3)

    async def newer(sink: str) -> dict[int, str | None]:
        queued = await asyncio.to_thread(log.redeliveries, sink, 10)
        return {e.seq: token for e, token in queued}

    newest = order_token(events[2])
    assert newest is not None and newest > (order_token(events[0]) or "")
    await eventually(lambda: newer("webhook:t"), timeout=5)
    assert await newer("webhook:t") == {1: newest}
    assert await newer("webhook:u") == {1: newest, 2: None, 3: None}


async def test_a_sink_configured_again_is_told_what_it_missed_and_earliest_resumes(
    make: Make,
) -> None:
    """As on SQLite (tests/unit/test_sink_life_cycle.py): START=latest skips what arrived
    while the sink was away with a `sink_removed` marker; START=earliest resumes from its
    old cursor."""
    log = make()
    await log.append([minio_event("b", f"k{n}", n) for n in range(3)])
    await log.init_cursors({"webhook:w": "latest", "webhook:e": "earliest"})
    assert await log.hold("webhook:w") and await log.hold("webhook:e")
    await log.settle(Settlement("webhook:w", cursor=3, park=[3]))
    await log.settle(Settlement("webhook:e", cursor=2))
    started = await log.init_cursors({"webhook:other": "latest"})  # both removed
    assert sorted(started.orphaned) == ["webhook:e", "webhook:w"]
    await log.append([minio_event("b", f"later{n}", 10 + n) for n in range(4)])  # seqs 4-7
    started = await log.init_cursors({"webhook:w": "latest", "webhook:e": "earliest",
                                      "webhook:other": "latest"})  # fmt: skip
    assert sorted(started.returned) == ["webhook:e", "webhook:w"]
    doc = await log.sink_document("webhook:w")
    assert doc is not None and doc.cursor == 7 and doc.queued == {}
    assert [(m.first_seq, m.last_seq, m.count, m.reason) for m in doc.markers] == [
        (4, 7, None, "sink_removed")]  # fmt: skip
    again = await log.sink_document("webhook:e")
    assert again is not None and again.cursor == 2 and again.markers == []
