"""The status page's samples (relay/series.py) and a sink's recent errors
(relay/delivery/recent.py): bounded rings, rates from counters, newest errors first."""

from __future__ import annotations

import msgspec

from relay.delivery.recent import MAX_TEXT, RecentErrors
from relay.series import Ring, Sampler, Series


def test_a_ring_keeps_the_last_values_oldest_first() -> None:
    ring = Ring(4)
    assert ring.values() == [] and len(ring) == 0
    for v in (1, 2, 3):
        ring.append(v)
    assert ring.values() == [1.0, 2.0, 3.0]
    for v in (4, 5, 6):
        ring.append(v)
    assert ring.values() == [3.0, 4.0, 5.0, 6.0] and len(ring) == 4
    for v in range(7, 107):  # many times round: still 4 slots, still in order
        ring.append(v)
    assert ring.values() == [103.0, 104.0, 105.0, 106.0]


class Counters:
    def __init__(self) -> None:
        self.now = 1000.0
        self.seq = 0
        self.delivered: dict[str, float] = {}
        self.behind: dict[str, int] = {}

    def sampler(self, points: int = 360) -> Sampler:
        return Sampler(
            ["webhook:a", "kafka:b"], lambda: self.seq, lambda: self.delivered,
            lambda: self.behind, interval=10.0, points=points,
            clock=lambda: self.now, wall=lambda: self.now + 1e9,
        )  # fmt: skip


def test_rates_are_the_change_over_the_interval_and_the_backlog_as_sampled() -> None:
    c = Counters()
    s = c.sampler()
    s.sample()  # the baseline: no point yet
    assert s.series().at == [] and s.series().ingest_rate == []
    c.now, c.seq = 1010.0, 50
    c.delivered = {"webhook:a": 30.0}
    c.behind = {"webhook:a": 20, "kafka:b": 50}
    s.sample()
    c.now, c.seq = 1020.0, 250
    c.delivered = {"webhook:a": 230.0, "kafka:b": 100.0}
    c.behind = {"webhook:a": 20, "kafka:b": 150}
    s.sample()
    got = s.series()
    assert got.at == [1e9 + 1010.0, 1e9 + 1020.0]
    assert got.ingest_rate == [5.0, 20.0]
    a, b = got.sinks
    assert (a.sink, a.delivered_rate, a.backlog) == ("webhook:a", [3.0, 20.0], [20, 20])
    assert (b.sink, b.delivered_rate, b.backlog) == ("kafka:b", [0.0, 10.0], [50, 150])
    # only what is newer than the page has
    newer = s.series(after=1e9 + 1010.0)
    assert newer.at == [1e9 + 1020.0] and newer.ingest_rate == [20.0]
    assert [(x.delivered_rate, x.backlog) for x in newer.sinks] == [([20.0], [20]), ([10.0], [150])]
    assert s.series(after=1e9 + 1020.0).at == [] and s.series(after=0).at == got.at
    # the answer of GET /admin/api/series, through JSON and back
    again = msgspec.json.decode(msgspec.json.encode(got), type=Series)
    assert again == got and again.interval == 10.0 and again.points == 360


def test_series_stay_bounded_and_counters_that_restart_give_no_negative_rate() -> None:
    c = Counters()
    s = c.sampler(points=5)
    for i in range(1, 21):
        c.now += 10.0
        c.seq = i * 10
        c.delivered = {"webhook:a": float(i * 10)}
        s.sample()
    got = s.series()
    assert len(got.at) == len(got.ingest_rate) == 5
    assert all(len(x.delivered_rate) == len(x.backlog) == 5 for x in got.sinks)
    assert got.ingest_rate == [1.0] * 5
    c.now += 10.0
    c.delivered = {"webhook:a": 0.0}  # a counter that started again from zero
    s.sample()
    assert s.series().sinks[0].delivered_rate[-1] == 0.0


def test_recent_errors_newest_first_bounded_in_number_and_length() -> None:
    errors = RecentErrors(kept=3)
    for i in range(5):
        errors.add("retrying", f"HTTP 50{i}", seq=i, bucket="b", key=f"k{i}", attempts=1)
    errors.add("dead-lettered", "x" * 5000, seq=9)
    got = errors.newest_first()
    assert [e.seq for e in got] == [9, 4, 3]
    assert got[0].outcome == "dead-lettered" and len(got[0].error) == MAX_TEXT
    assert got[1].error == "HTTP 504" and got[1].key == "k4"
