"""The status page's charts: the relay samples itself (no Prometheus needed) into fixed-size
rings — the ingest rate, and per sink the delivery rate and the backlog — every
RELAY_ADMIN_SAMPLE_INTERVAL (10 s), POINTS samples each: the last hour at the default.

Sampled in the process that serves /admin/ (the delivery process when RELAY_WORKERS > 1,
the relay itself with 1), from numbers it already keeps: the log's last committed seq,
which every process sees (ingest workers count their appends in the shared counters), the
dispatchers' `relay_deliveries_total{outcome="delivered"}` counters and their cursors.
A delivery process started again starts its charts empty.

Memory is bounded: a sample is 8 bytes (an `array('d')` slot), a series POINTS of them
(2.9 KB), and there are 2 + 2 x sinks series (the times, the ingest rate, then per sink its
rate and backlog), whatever the relay's uptime: 48 KiB for 4 sinks, 682 KiB for 100, with
the sampler's own dicts (bench/charts.py). A sample takes 15 µs with 4 sinks, 230 µs with
100, once an interval; the hour as JSON (22 KiB with 4 sinks) is built only for a page's
first request, every later poll asks for the samples since its last (~340 bytes).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections.abc import Callable, Mapping, Sequence

import msgspec

POINTS = 360  # samples kept per series: an hour at the default 10 s


class Ring:
    """The last `size` values appended, in a preallocated array (no growth, no per-sample
    object), read oldest first."""

    def __init__(self, size: int = POINTS) -> None:
        self._values = array("d", bytes(8 * size))
        self._size = size
        self._next = 0  # where the next value goes
        self._count = 0

    def append(self, value: float) -> None:
        self._values[self._next] = value
        self._next = (self._next + 1) % self._size
        self._count = min(self._count + 1, self._size)

    def __len__(self) -> int:
        return self._count

    def values(self) -> list[float]:
        start = (self._next - self._count) % self._size
        if start + self._count <= self._size:
            return self._values[start : start + self._count].tolist()
        return (self._values[start:] + self._values[: self._next]).tolist()


class SinkSeries(msgspec.Struct):
    sink: str
    delivered_rate: list[float]  # events delivered per second over each interval
    backlog: list[int]  # events behind the sink's cursor at each sample


class Series(msgspec.Struct):
    """GET /admin/api/series: the samples, oldest first, each list as long as `at`."""

    interval: float  # seconds between samples
    points: int  # samples kept per series
    at: list[float]  # when each sample was taken (unix seconds)
    ingest_rate: list[float]  # events accepted per second over each interval
    sinks: list[SinkSeries]


class Sampler:
    """`last_seq()`: the log's last committed seq; `delivered()`: each sink's delivered
    count; `behind()`: each sink's backlog in events. A rate is the change since the
    sample before over the time between the two (the first sample has no rate: it is the
    baseline)."""

    def __init__(
        self,
        sinks: Sequence[str],
        last_seq: Callable[[], int],
        delivered: Callable[[], Mapping[str, float]],
        behind: Callable[[], Mapping[str, int]],
        interval: float,
        points: int = POINTS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.points = points
        self._last_seq, self._delivered, self._behind = last_seq, delivered, behind
        self._clock, self._wall = clock, wall
        self._at = Ring(points)
        self._ingest = Ring(points)
        self._sinks = list(sinks)
        self._delivered_rate = {s: Ring(points) for s in self._sinks}
        self._backlog = {s: Ring(points) for s in self._sinks}
        self._before: tuple[float, int, Mapping[str, float]] | None = None

    def sample(self) -> None:
        now, seq, delivered = self._clock(), self._last_seq(), dict(self._delivered())
        before, self._before = self._before, (now, seq, delivered)
        if before is None or now <= before[0]:
            return
        elapsed = now - before[0]
        behind = self._behind()
        self._at.append(self._wall())
        self._ingest.append(max(0, seq - before[1]) / elapsed)
        for sink in self._sinks:
            done = delivered.get(sink, 0.0) - before[2].get(sink, 0.0)
            self._delivered_rate[sink].append(max(0.0, done) / elapsed)
            self._backlog[sink].append(behind.get(sink, 0))

    def series(self, after: float | None = None) -> Series:
        """Every sample kept, or only those taken after `after` (unix seconds): a page that
        has the hour asks for what is new, one sample per interval."""
        at = self._at.values()
        skip = bisect.bisect_right(at, after) if after is not None else 0

        def newer(ring: Ring) -> list[float]:
            return ring.values()[skip:]

        return Series(
            interval=self.interval, points=self.points, at=at[skip:],
            ingest_rate=[round(v, 3) for v in newer(self._ingest)],
            sinks=[SinkSeries(s, [round(v, 3) for v in newer(self._delivered_rate[s])],
                              [int(v) for v in newer(self._backlog[s])])
                   for s in self._sinks],
        )  # fmt: skip

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)
