"""Every Prometheus metric of the relay, in one place.

Counters and histograms are updated where things happen. Gauges about the log (size, pending,
oldest pending, dead letters) are read from the log when /metrics is scraped, so they cost
nothing on the ingest or delivery paths and are always exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from relay.queue import stats

if TYPE_CHECKING:
    from relay.ingest import Gate
    from relay.processes.board import Board
    from relay.queue.backend import LogBackend

disable_created_metrics()  # the *_created series only double the scrape size
REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_RECEIVED = Counter(
    "relay_events_received_total", "Events accepted into the log (after dedup).",
    ["source", "dialect"], registry=REGISTRY,
)  # fmt: skip
EVENTS_DUPLICATE = Counter(
    "relay_events_duplicate_total",
    "Events answered 2xx but not stored: already in the log.",
    registry=REGISTRY,
)
EVENTS_FILTERED = Counter(
    "relay_events_filtered_total",
    "Events answered 2xx but not stored: outside RELAY_INGEST_EVENTS, by canonical event name.",
    ["event"], registry=REGISTRY,
)  # fmt: skip
INGEST_REJECTED = Counter(
    "relay_ingest_rejected_total",
    "Requests not stored: unauthorized, too_large, slow_client, quarantined, log_full_events, "
    "log_full_bytes, disk_low, sink_backlog, log_damaged, error.",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
INGEST_COMMIT_SECONDS = Histogram(
    "relay_ingest_commit_seconds", "From hand-off to the writer until the fsynced commit.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)  # fmt: skip
TEST_EVENTS = Counter(
    "relay_test_events_total",
    "AWS s3:TestEvent and empty-body pings answered 200.",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "relay_deliveries_total", "Events handed to a sink, by outcome: delivered, retry, dead_letter.",
    ["sink", "outcome"], registry=REGISTRY,
)  # fmt: skip
DELIVERY_SECONDS = Histogram(
    "relay_delivery_seconds", "Time a sink took to take one batch.", ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)  # fmt: skip
RESENDS = Counter(
    "relay_resends_total",
    "Events the target had acknowledged that were sent again after an earlier event of the "
    "same object that had failed (per-object order; the event id makes most targets drop "
    "the repeat).",
    ["sink"], registry=REGISTRY,
)  # fmt: skip
EVENTS_STALE = Counter(
    "relay_events_stale_total",
    "Events older than one the sink already had of the same object, by what STALE did: "
    "deliver, flag, drop.",
    ["sink", "action"], registry=REGISTRY,
)  # fmt: skip
MISSED_EVENTS = Counter(
    "relay_sink_missed_events_total",
    "Events a sink will never get, announced to it by a relay:MissedEvents marker: shed "
    "past its MAX_BACKLOG* bound (ON_FULL=shed), or pruned before it got them.",
    ["sink", "reason"], registry=REGISTRY,
)  # fmt: skip
RETRIES = Counter(
    "relay_retries_total", "Retryable failures, each followed by a scheduled retry.",
    ["sink"], registry=REGISTRY,
)  # fmt: skip
AUDIT_SELF_EVENTS = Counter(
    "relay_audit_self_events_total",
    "Events about an audit sink's own bucket, not written (the self-loop guard).",
    ["sink"], registry=REGISTRY,
)  # fmt: skip
UNEXPECTED_PRINCIPAL = Counter(
    "relay_unexpected_principal_total",
    "Events written to an audit trail whose principal is not in RELAY_EXPECTED_PRINCIPALS.",
    ["bucket"], registry=REGISTRY,
)  # fmt: skip
SINK_PAUSED = Gauge(
    "relay_sink_paused",
    "1 while the sink is paused: by an operator (reason=operator) or because it failed "
    "PAUSE_AFTER long without a delivery (reason=pause_after); resumed only by an operator.",
    ["sink", "reason"], registry=REGISTRY, multiprocess_mode="livemax",
)  # fmt: skip
SINK_UP = Gauge(
    "relay_sink_up", "1 when the sink's last attempt succeeded, 0 while it is failing.",
    ["sink"], registry=REGISTRY, multiprocess_mode="livemax",
)  # fmt: skip


_RECEIVED: dict[tuple[str, str], Any] = {}


def received(source: str, dialect: str) -> Any:
    """The events-received counter of a (source, dialect), looked up once per pair (the
    ingest path calls this for every request)."""
    child = _RECEIVED.get((source, dialect))
    if child is None:
        child = _RECEIVED[(source, dialect)] = EVENTS_RECEIVED.labels(source, dialect)
    return child


@dataclass(frozen=True)
class LogView:
    """What the log's gauges show, read from the log just before a scrape renders them."""

    per_sink: list[stats.SinkStats]
    dead: dict[str, int]
    quarantined: int
    orphans: list[stats.Orphan]


class LogCollector(Collector):
    """The log's gauges: the attributes the log keeps current, and a `LogView` read at
    scrape time (see `scrape`)."""

    def __init__(self, log: LogBackend, sinks: Sequence[str], gate: Gate) -> None:
        self.log = log
        self.sinks = list(sinks)
        self.gate = gate  # backpressure and the integrity check, as ingest answers by them
        self.view = LogView([], {}, 0, [])

    async def read(self) -> None:
        log = self.log
        per_sink, dead, quarantined, orphans = await asyncio.gather(
            log.sink_stats(self.sinks), log.dead_letter_counts(), log.quarantine_count(),
            log.orphans(),
        )  # fmt: skip
        self.view = LogView(per_sink, dead, quarantined, orphans)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        log, view, gate = self.log, self.view, self.gate.view()
        yield GaugeMetricFamily("relay_log_events", "Events in the log.", value=log.events)
        yield GaugeMetricFamily("relay_log_bytes", "Bytes in use in the log file.", value=log.bytes)
        yield GaugeMetricFamily(
            "relay_disk_free_bytes", "Free space under the data dir.", value=log.free_disk
        )
        yield GaugeMetricFamily(
            "relay_backpressure", "1 while ingest answers 503 (log over a mark).",
            value=1 if gate.pressure else 0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "relay_log_damaged", "1 when the integrity check found damage in the log, else 0.",
            value=1 if gate.check_state == "damaged" else 0,
        )  # fmt: skip
        now = time.time()
        pending = GaugeMetricFamily(
            "relay_sink_pending", "Events past the sink's cursor, plus queued redeliveries.",
            labels=["sink"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "relay_sink_oldest_pending_seconds", "Age of the sink's oldest pending event.",
            labels=["sink"],
        )  # fmt: skip
        dead = GaugeMetricFamily("relay_dead_letters", "Dead letters per sink.", labels=["sink"])
        parked = GaugeMetricFamily(
            "relay_sink_parked",
            "Events waiting behind a failing event of their own object while the sink's other "
            "objects go on.",
            labels=["sink"],
        )  # fmt: skip
        for s in view.per_sink:
            pending.add_metric([s.sink], s.pending)
            oldest.add_metric([s.sink], max(0.0, now - s.oldest) if s.oldest else 0.0)
            dead.add_metric([s.sink], view.dead.get(s.sink, 0))
            parked.add_metric([s.sink], s.parked)
        blocked = GaugeMetricFamily(
            "relay_ingest_blocked_by",
            "1 while this sink is why ingest answers 503 (over its MAX_BACKLOG* bound with "
            "ON_FULL=block, or the furthest behind when the log is full).",
            labels=["sink"],
        )  # fmt: skip
        for sink in self.sinks:
            blocked.add_metric([sink], 1 if sink in gate.blocked_by else 0)
        orphaned = GaugeMetricFamily(
            "relay_sink_orphaned",
            "1 for a sink the log keeps state for that is no longer configured (it pins no "
            "event; its state goes after RELAY_RETENTION, or with `relay sinks forget`).",
            labels=["sink"],
        )  # fmt: skip
        for orphan in view.orphans:
            orphaned.add_metric([orphan.sink], 1)
        yield pending
        yield oldest
        yield dead
        yield parked
        yield blocked
        yield orphaned
        yield GaugeMetricFamily(
            "relay_quarantined", "Bodies in quarantine.", value=view.quarantined
        )


_COLLECTORS: list[LogCollector] = []
_SCRAPE = asyncio.Lock()


class WorkerCollector(Collector):
    """The supervisor's restarts of worker processes (RELAY_WORKERS > 1)."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def collect(self) -> Iterator[CounterMetricFamily]:
        restarts = CounterMetricFamily(
            "relay_worker_restarts", "Worker processes started again after they died, by role.",
            labels=["role"],
        )  # fmt: skip
        for role, count in self.board.restarts().items():
            restarts.add_metric([role], count)
        yield restarts


class _EveryProcess(Collector):
    """Every process's counters, histograms and gauges (prometheus-client's multiprocess
    mode), and the families none of them has a series of yet (a labelled counter nothing
    has counted), as one process shows them."""

    def __init__(self) -> None:
        self.processes = MultiProcessCollector(None)

    def collect(self) -> Iterator[Any]:
        seen = set()
        for family in self.processes.collect():
            seen.add(family.name)
            yield family
        for metric in list(globals().values()):
            if isinstance(metric, MetricWrapperBase):
                for family in metric.describe():
                    if family.name not in seen:
                        yield family


_SCRAPED: list[CollectorRegistry] = [REGISTRY]  # what /metrics renders


def install(
    log: LogBackend,
    sinks: Sequence[str],
    gate: Gate,
    *,
    delivering: bool = True,
    board: Board | None = None,
) -> None:
    """The log's gauges, and each sink's series at 0 where the sinks are delivered. With
    `board` (a worker of several), /metrics renders every process's counters (prometheus
    client's multiprocess mode: each process's values in files of PROMETHEUS_MULTIPROC_DIR,
    set by the supervisor) and the supervisor's restarts."""
    collector = LogCollector(log, sinks, gate)
    _COLLECTORS.append(collector)
    if board is None:
        REGISTRY.register(collector)
    else:
        registry = CollectorRegistry()
        registry.register(_EveryProcess())
        registry.register(collector)
        registry.register(WorkerCollector(board))
        _SCRAPED[:] = [registry]
    if not delivering:
        return
    for sink in sinks:
        SINK_UP.labels(sink).set(0)
        for reason in ("operator", "pause_after"):
            SINK_PAUSED.labels(sink, reason).set(0)
        for outcome in ("delivered", "retry", "dead_letter"):
            DELIVERIES.labels(sink, outcome)
        RETRIES.labels(sink)
        RESENDS.labels(sink)


def render() -> bytes:
    return generate_latest(_SCRAPED[0])


async def scrape() -> bytes:
    """/metrics: the log's view read first (a whole operation of the log, whatever keeps
    it), then everything rendered off the event loop."""
    async with _SCRAPE:
        for collector in _COLLECTORS:
            await collector.read()
        return await asyncio.to_thread(render)
