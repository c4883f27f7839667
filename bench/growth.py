"""Cost growth: do ingest and drain slow down as the log grows?

    python -m bench.growth [--sizes 10000,100000,1000000] [--seconds 10] [--cap 30] [--repeat 2]

For each size, a log with that many events queued (bench/fill.py), then
- drain: `relay serve` with a webhook sink (defaults) to a receiver in the bench process,
  its cursor at 0; events/s from the first /metrics scrape until pending = 0 (or `--cap`
  seconds: the rate over that window);
- ingest: wrk as in bench.ingest (pinned the same way) for `--seconds`, with the backlog
  present and its sink down (a webhook sink pointing at a closed port, cursor 0).
Each figure is the best of `--repeat` runs (other work on the machine only slows a run
down). The events an ingest run adds are deleted after it, so every run sees the size.
The figure is the ratio of the rate at the largest size to the rate at the smallest.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench import common, drain, fill, ingest, targets
from bench.common import Relay, Table, rate

FLAT = 0.2  # within 20 %


@dataclass
class Point:
    size: int
    ingest: ingest.WrkResult
    drain: drain.Drained
    runs: int = 1  # each figure is the best of this many runs


async def ingest_with_backlog(data: Path, log_dir: Path, seconds: float, script: Path,
                              pin: bool = True) -> ingest.WrkResult:  # fmt: skip
    from bench.scale import roomy

    name, env = targets.down_webhook(f"D{common.tag().upper()}")
    fill.set_cursors(data, [name])
    size, last = fill.count(data), fill.max_seq(data)
    relay = Relay(data, {**env, **roomy(size)}, cpu=1 if pin else None,
                  log=log_dir / "relay-growth-ingest.log")  # fmt: skip
    try:
        await relay.start()
        await common.quiet(f"ingest with {size:,} queued")
        cpu = 0 if pin else None
        await ingest.run_wrk(relay.url, 2, 64, script, cpu)  # warm-up
        return await ingest.run_wrk(relay.url, seconds, 64, script, cpu)
    finally:
        await relay.stop()
        fill.truncate(data, last)  # back to its size


async def point(data: Path, log_dir: Path, seconds: float, cap: float | None,
                script: Path, pin: bool = True, repeat: int = 2) -> Point:  # fmt: skip
    """Best of `repeat` runs of each: other work on the machine only ever slows a run down,
    and a ratio of two single runs would mostly measure that."""
    size = fill.count(data)
    drains, ingests = [], []
    for _ in range(repeat):
        d = await drain.drain_once(data, ["webhook"], cap=cap, log_dir=log_dir)
        drains.append(next(iter(d.values())))
        common.say(f"  {size:>10,} queued: drain " + drain.describe(drains[-1]).strip())
    for _ in range(repeat):
        ingests.append(await ingest_with_backlog(data, log_dir, seconds, script, pin))
        w = ingests[-1]
        common.say(f"  {size:>10,} queued: ingest {rate(w.rps)} (p99 {common.ms(w.p99)})")
    return Point(size, max(ingests, key=lambda w: w.rps), max(drains, key=lambda d: d.rate),
                 repeat)  # fmt: skip


def power(n: int) -> str:
    k = len(str(n)) - 1
    return f"10^{k}" if n == 10**k else f"{n:,}"


def table(points: list[Point]) -> Table:
    t = Table()
    part = "5 growth"
    for p in points:
        t.add(part, f"{p.size:,} queued: ingest (sink down) / drain to webhook",
              f"{rate(p.ingest.rps)} / {rate(p.drain.rate)}",
              f"ingest p99 {common.ms(p.ingest.p99)}; drain "
              + ("capped, " if p.drain.capped else "")
              + f"{p.drain.events:,} in {p.drain.seconds:.1f} s")  # fmt: skip
    if len(points) >= 2:
        lo, hi = points[0], points[-1]
        span = f"{power(hi.size)} / {power(lo.size)}"
        for what, a, b in (("ingest", lo.ingest.rps, hi.ingest.rps),
                           ("drain", lo.drain.rate, hi.drain.rate)):  # fmt: skip
            ratio = b / a if a else 0.0
            t.add(part, f"{what} rate ratio {span}", f"{ratio:.3f}",
                  f"{rate(b)} vs {rate(a)}", "within 20 % (0.80 to 1.20)",
                  abs(ratio - 1) <= FLAT)  # fmt: skip
    t.notes.append(
        "growth: each size its own log; drain = webhook sink at defaults from cursor 0 to a "
        "receiver in the bench process (runs longer than the cap report the rate over the "
        "cap); ingest = wrk as in part 1 with the whole log pending for a sink whose server "
        f"is down (what it adds is deleted afterwards); each figure the best of "
        f"{points[0].runs if points else 1} runs."
    )
    return t


async def run(sizes: list[int], seconds: float, cap: float | None, pin: bool = True,
              logs: dict[int, Path] | None = None, repeat: int = 2) -> list[Point]:  # fmt: skip
    """`logs` maps a size to a log already filled with it; other sizes are filled here."""
    ingest.require_wrk()
    points = []
    with common.workdir("relay-bench-growth-") as work:
        script = ingest.write_script(work)
        for size in sizes:
            data = (logs or {}).get(size)
            if data is None:
                data = work / f"log-{size}"
                common.say(f"filling a log with {size:,} events …")
                fill.fill(data, size, tag=common.tag())
            points.append(await point(data, work, seconds, cap, script, pin, repeat))
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cap", type=float, default=30, help="seconds per drain run at most")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    points = common.run(run(sizes, args.seconds, args.cap, not args.no_pin, repeat=args.repeat))
    print(table(points).render("# cost growth"))


if __name__ == "__main__":
    main()
