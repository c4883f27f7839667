"""The relay with a big log: memory and disk with N events queued, time from start to ready,
and ingest while a backlog drains.

    python -m bench.scale [--events 10000000] [--ready-events 1000000] [--seconds 10]

1. RSS and disk: N events in the log (bench/fill.py), `relay serve` idle-serving with one
   webhook sink whose server is down (its cursor at 0: everything pending, nothing drains).
   After 12 s (maintenance and a prune pass have run) and a /metrics scrape: VmRSS and VmHWM
   from /proc/<pid>/status, the log's files' size on disk. RELAY_MAX_EVENTS and
   RELAY_MAX_BYTES are raised above N so the relay is serving, not refusing (503).
2. Start to ready: spawn → first `GET /readyz` 200, with `--ready-events` queued (median of 3
   starts), at the default RELAY_LOG_CHECK (auto: in the background above 256 MiB) and with
   RELAY_LOG_CHECK=start, next to the same on an empty log; the relay's own
   `log_check_seconds` comes from its "relay listening" line (check at start) or its "log
   check passed" line (in the background, awaited before the relay is stopped).
3. Ingest during a drain: wrk (as bench.ingest, pinned the same way) for `--seconds` while
   `--ready-events` events drain to a webhook receiver in the bench process, next to the same
   relay and sink with an empty log; also the drain rate while the ingest runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import common, fill, ingest, targets
from bench.common import Relay, Table, check, mb, rate

TARGET_RSS = 100e6
TARGET_READY = 2.0
CHECK_TIMEOUT = 600.0  # a background check of 10M events took ~2 min
SETTLE = 12.0


def roomy(events: int) -> dict[str, str]:
    """High-water marks above the test size, so a big log is served, not refused."""
    return {"RELAY_MAX_EVENTS": str(max(5_000_000, 3 * events)), "RELAY_MAX_BYTES": "1TiB"}


@dataclass
class Footprint:
    events: int
    rss: int
    hwm: int
    disk: int
    ready: float  # spawn → /readyz 200 of that start


async def footprint(data: Path, log_dir: Path) -> Footprint:
    events = fill.count(data)
    name, env = targets.down_webhook(f"DOWN{common.tag().upper()}")
    fill.set_cursors(data, [name])
    relay = Relay(data, {**env, **roomy(events)}, log=log_dir / "relay-footprint.log")
    try:
        ready = await relay.start("/readyz")
        await asyncio.sleep(SETTLE)
        async with aiohttp.ClientSession() as session:
            m = await relay.metrics(session)
        pending = m.get("relay_sink_pending", sink=name)
        if pending < events:
            raise RuntimeError(f"{name} pending {pending}, expected {events}: did it drain?")
        mem = relay.memory()
        disk = fill.log_size(data)
    finally:
        await relay.stop()
    return Footprint(events, mem["VmRSS"], mem["VmHWM"], disk, ready)


@dataclass
class Ready:
    events: int
    seconds: list[float]  # RELAY_LOG_CHECK at its default (auto)
    check_seconds: list[float]  # the relay's log_check_seconds, at start or in the background
    background: bool  # whether the default ran the check in the background
    at_start: list[float]  # the same starts with RELAY_LOG_CHECK=start
    empty: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


async def _start_to_ready(data: Path, log: Path, env: dict[str, str]) -> tuple[float, float, bool]:
    """(spawn → ready, the integrity check's seconds, whether it ran in the background)."""
    relay = Relay(data, {"RELAY_LOG_LEVEL": "info", **env}, log=log)
    _forget(log)
    await common.quiet("start to ready")
    try:
        seconds = await relay.start("/readyz")
        listening = _log_line(log, "relay listening") or {}
        background = listening.get("log_check") == "background"
        if background:  # ready already; the check goes on beside ingest and delivery
            passed = await _await_log_line(log, "log check passed", CHECK_TIMEOUT)
            check = float(passed.get("log_check_seconds", "nan"))
        else:
            check = float(listening.get("log_check_seconds", "nan"))
    finally:
        await relay.stop()
    return seconds, check, background


def _forget(log: Path) -> None:
    log.unlink(missing_ok=True)


def _log_line(log: Path, message: str) -> dict[str, Any] | None:
    for line in log.read_text(errors="replace").splitlines():
        if f'"{message}"' in line:
            return dict(json.loads(line))
    return None


async def _await_log_line(log: Path, message: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (found := _log_line(log, message)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {message!r} line in {log} within {timeout:g} s")
        await asyncio.sleep(0.1)
    return found


async def ready_time(data: Path, log_dir: Path, starts: int = 3) -> Ready:
    events = fill.count(data)
    name, env = targets.down_webhook("READY")
    fill.set_cursors(data, [name])
    env = {**env, **roomy(events)}
    seconds, checks, at_start = [], [], []
    background = False
    for _ in range(starts):
        s, c, background = await _start_to_ready(data, log_dir / "relay-ready.log", env)
        seconds.append(s)
        checks.append(c)
        s, _c, _b = await _start_to_ready(data, log_dir / "relay-ready-check.log",
                                          {**env, "RELAY_LOG_CHECK": "start"})  # fmt: skip
        at_start.append(s)
    empty = []
    with common.workdir("relay-bench-empty-") as tmp:
        for _ in range(starts):
            s, _c, _b = await _start_to_ready(tmp / "data", log_dir / "relay-ready-empty.log", env)
            empty.append(s)
    return Ready(events, seconds, checks, background, at_start, empty)


@dataclass
class IngestDuringDrain:
    events: int
    during: ingest.WrkResult
    empty: ingest.WrkResult  # same relay and sink, nothing queued
    drained: int  # events the sink took during the wrk run
    seconds: float

    @property
    def drain_rate(self) -> float:
        return self.drained / self.seconds if self.seconds else 0.0


async def _ingest_with_sink(data: Path, log: Path, seconds: float, script: Path, pin: bool,
                            backlog: bool) -> tuple[ingest.WrkResult, int, float]:  # fmt: skip
    target = await targets.make("webhook", common.tag())
    relay: Relay | None = None
    last = fill.max_seq(data) if backlog else 0
    try:
        if backlog:
            fill.set_cursors(data, [target.name])
        await common.quiet("ingest during a drain" if backlog else "ingest, empty log")
        relay = Relay(data, {**target.env(), **roomy(fill.count(data) if backlog else 0)},
                      cpu=1 if pin else None, log=log)  # fmt: skip
        await relay.start()
        cpu = 0 if pin else None
        async with aiohttp.ClientSession() as session:
            await ingest.run_wrk(relay.url, 2, 64, script, cpu)  # warm-up
            before = (await relay.metrics(session)).get(
                "relay_deliveries_total", sink=target.name, outcome="delivered"
            )
            started = time.monotonic()
            result = await ingest.run_wrk(relay.url, seconds, 64, script, cpu)
            elapsed = time.monotonic() - started
            after = (await relay.metrics(session)).get(
                "relay_deliveries_total", sink=target.name, outcome="delivered"
            )
        return result, int(after - before), elapsed
    finally:
        if relay is not None:
            await relay.stop()
        await target.cleanup()
        if backlog:
            fill.truncate(data, last)  # back to its size, for whatever runs next


async def ingest_during_drain(data: Path, log_dir: Path, seconds: float,
                              pin: bool = True) -> IngestDuringDrain:  # fmt: skip
    ingest.require_wrk()
    script = ingest.write_script(log_dir)
    events = fill.count(data)
    during, drained, elapsed = await _ingest_with_sink(
        data, log_dir / "relay-ingest-drain.log", seconds, script, pin, backlog=True
    )
    with common.workdir("relay-bench-empty-") as tmp:
        empty, _, _ = await _ingest_with_sink(
            tmp / "data", log_dir / "relay-ingest-empty.log", seconds, script, pin, backlog=False
        )
    return IngestDuringDrain(events, during, empty, drained, elapsed)


def table(fp: Footprint | None, ready: Ready | None, idd: IngestDuringDrain | None,
          at_scale: int) -> Table:  # fmt: skip
    t = Table()
    part = "4 scale"
    if fp is not None:
        short = fp.events < at_scale
        caveat = f" (measured at {fp.events:,}; the target is for {at_scale:,})" if short else ""
        t.add(part, f"RSS, {fp.events:,} queued, idle-serving, sink down", mb(fp.rss),
              f"peak (VmHWM) {mb(fp.hwm)}; started → ready in {fp.ready:.1f} s{caveat}", f"≤ {TARGET_RSS / 1e6:.0f} MB",
              check(fp.rss, "<=", TARGET_RSS))  # fmt: skip
        t.add(part, f"disk, {fp.events:,} queued", mb(fp.disk),
              f"{fp.disk / fp.events:,.0f} bytes per event (db + WAL + shm)")  # fmt: skip
    if ready is not None:
        t.add(part, f"start → /readyz 200, {ready.events:,} queued",
              f"{ready.median:.2f} s",
              f"median of {len(ready.seconds)}, RELAY_LOG_CHECK=auto: the log check "
              f"({statistics.median(ready.check_seconds):.2f} s) "
              + ("ran in the background, after ready" if ready.background else "at start")
              + f"; with RELAY_LOG_CHECK=start {statistics.median(ready.at_start):.2f} s; "
              f"empty log {statistics.median(ready.empty):.2f} s",
              f"≤ {TARGET_READY:g} s", check(ready.median, "<=", TARGET_READY))  # fmt: skip
    if idd is not None:
        ratio = idd.during.rps / idd.empty.rps if idd.empty.rps else 0.0
        t.add(part, f"ingest while {idd.events:,} drain to a webhook receiver",
              rate(idd.during.rps),
              f"{ratio:.2f}x the same relay with an empty log ({rate(idd.empty.rps)}); "
              f"p99 {common.ms(idd.during.p99)}; the drain meanwhile {rate(idd.drain_rate)}",
              )  # fmt: skip
    t.notes.append(
        "scale: RSS/disk with the relay idle-serving, one webhook sink pointing at a closed "
        "port (cursor 0), RELAY_MAX_EVENTS/RELAY_MAX_BYTES raised above the test size; start → "
        "ready from spawn (interpreter start and imports included) to the first 200 of "
        "/readyz; ingest-while-draining with wrk as in part 1 (relay pinned to core 1) and the "
        "webhook receiver in the bench process."
    )
    return t


async def run(events: int, ready_events: int, seconds: float, pin: bool = True,
              at_scale: int = 10_000_000, logs: dict[int, Path] | None = None) -> Table:  # fmt: skip
    """`logs` maps a size to a log already filled with it; other sizes are filled here."""
    logs = dict(logs or {})
    with common.workdir("relay-bench-scale-") as work:
        for size in {events, ready_events}:
            if size not in logs:
                logs[size] = work / f"log-{size}"
                common.say(f"filling a log with {size:,} events …")
                f = fill.fill(logs[size], size, tag=common.tag(), progress=True)
                common.say(f"  {f.events:,} in {f.seconds:.0f} s")
        fp = await footprint(logs[events], work)
        common.say(f"  {fp.events:,} queued: RSS {mb(fp.rss)}, disk {mb(fp.disk)}")
        ready = await ready_time(logs[ready_events], work)
        common.say(f"  {ready.events:,} queued: ready in {ready.median:.2f} s")
        idd = await ingest_during_drain(logs[ready_events], work, seconds, pin)
        common.say(f"  ingest during drain {rate(idd.during.rps)}")
    return table(fp, ready, idd, at_scale)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--ready-events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    t = common.run(run(args.events, args.ready_events, args.seconds, not args.no_pin))
    print(t.render("# scale of the log"))


if __name__ == "__main__":
    main()
