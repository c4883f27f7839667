"""The whole benchmark suite, one table: `python -m bench.run [--quick]`.

Runs the five parts in order, each against a baseline or its own reference measured in the
same run, prints one table with the targets marked ✓/✗, and writes it to bench/RESULTS.md
(a section of RESULTS.md between the `observations` markers is kept from run to run).

    part 1  bench.ingest   durable ingest vs bare aiohttp (wrk), RELAY_SYNC=full and normal
    part 2  bench.latency  open loop at 1 000 events/s: ack, webhook and JetStream arrival
    part 3  bench.drain    a filled log drained to each sink alone, knob raised, all at once
                           (with an audit bucket on a Ceph RGW started for it, when the
                           audit_bucket sink and Ceph are installed; --no-ceph skips it)
    part 4  bench.scale    RSS/disk with a big log, start → ready, ingest while draining
    part 5  bench.growth   ingest and drain rates at 10^4, 10^5, 10^6 queued
    part 6  bench.replicated  ingest through two replicas on a 3-node JetStream cluster vs
                           the SQLite log, the failover gap, the duplicate window's memory

`--quick` takes about 8 minutes on the 2-core reference machine. The full profile (1M-event
drains capped at 300 s, a 10M log for part 4, 60 s of latency) is estimated at 45-50 minutes
from its parts: filling the 10M log (~6.5 min, 21 GB of disk) and starting the relay on it
(~2 min of integrity check) are the longest single steps, the seven 1M drains ~25 min.
Logs are filled once per size in a temp dir and shared by the parts, which is removed at
the end, as is every stream, key, exchange, queue and table the parts create.
"""

from __future__ import annotations

import argparse
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench import common, drain, fill, growth, ingest, latency, replicated, scale, targets
from bench.common import Table

RESULTS = Path(__file__).with_name("RESULTS.md")
KEEP = re.compile(r"<!-- observations:start -->.*?<!-- observations:end -->", re.DOTALL)


@dataclass(frozen=True)
class Profile:
    name: str
    ingest_seconds: float
    latency_rate: float
    latency_seconds: float
    drain_events: int
    drain_cap: float | None
    scale_events: int
    ready_events: int
    scale_seconds: float
    growth_sizes: tuple[int, ...]
    growth_seconds: float
    growth_cap: float | None


QUICK = Profile("quick", ingest_seconds=5, latency_rate=1000, latency_seconds=15,
                drain_events=100_000, drain_cap=15, scale_events=1_000_000,
                ready_events=1_000_000, scale_seconds=10, growth_sizes=(10**4, 10**5, 10**6),
                growth_seconds=5, growth_cap=15)  # fmt: skip
FULL = Profile("full", ingest_seconds=10, latency_rate=1000, latency_seconds=60,
               drain_events=1_000_000, drain_cap=300, scale_events=10_000_000,
               ready_events=1_000_000, scale_seconds=10, growth_sizes=(10**4, 10**5, 10**6),
               growth_seconds=10, growth_cap=60)  # fmt: skip

PARTS = ("ingest", "latency", "drain", "scale", "growth", "replicated")


class Logs:
    """Logs filled once per size, shared by the parts (the drains only move their own
    cursors; the ingest runs delete the events they added afterwards)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[int, Path] = {}
        self.fills: list[fill.Filled] = []

    def get(self, size: int) -> Path:
        if size not in self.paths:
            path = self.root / f"log-{size}"
            common.say(f"filling a log with {size:,} events …")
            filled = fill.fill(path, size, tag=common.tag(), progress=size >= 1_000_000)
            common.say(f"  {filled.events:,} in {filled.seconds:.0f} s ({filled.rate:,.0f}/s)")
            self.fills.append(filled)
            self.paths[size] = path
        return self.paths[size]

    def of(self, sizes: tuple[int, ...] | list[int]) -> dict[int, Path]:
        return {size: self.get(size) for size in sizes}


async def suite(p: Profile, parts: tuple[str, ...], pin: bool,
                ceph: bool = False) -> tuple[Table, float]:  # fmt: skip
    started = time.monotonic()
    out = Table()
    with common.workdir("relay-bench-run-") as work:
        logs = Logs(work)

        async def part(name: str, title: str, body: Callable[[], Awaitable[Table]]) -> None:
            if name not in parts:
                return
            t0 = time.monotonic()
            common.say(f"\n== {title}")
            try:
                out.extend(await body())
            except Exception as exc:
                traceback.print_exc()
                out.add(title, "FAILED", type(exc).__name__, str(exc).splitlines()[0][:160])
            common.say(f"   ({time.monotonic() - t0:.0f} s)")

        async def do_ingest() -> Table:
            return ingest.table(await ingest.run(p.ingest_seconds, 64, pin, repeat=2))

        async def do_latency() -> Table:
            return latency.table(await latency.run(p.latency_rate, p.latency_seconds))

        async def do_drain() -> Table:
            data = logs.get(p.drain_events)
            kinds = list(targets.ALL) + (["audit_bucket"] if ceph else [])
            result = await drain.run(p.drain_events, kinds, knob=True,
                                     together=True, cap=p.drain_cap, data=data)  # fmt: skip
            return drain.table(result)

        async def do_growth() -> Table:
            sizes = list(p.growth_sizes)
            points = await growth.run(sizes, p.growth_seconds, p.growth_cap, pin,
                                      logs=logs.of(sizes))  # fmt: skip
            return growth.table(points)

        async def do_scale() -> Table:
            sizes = [p.scale_events, p.ready_events]
            return await scale.run(p.scale_events, p.ready_events, p.scale_seconds, pin,
                                   logs=logs.of(sizes))  # fmt: skip

        async def do_replicated() -> Table:
            ids = 100_000 if p.name == "quick" else 500_000
            return replicated.table(await replicated.run(p.ingest_seconds, 64, ids))

        await part("ingest", "1 ingest", do_ingest)
        await part("latency", "2 latency", do_latency)
        await part("drain", "3 drain", do_drain)
        # the drains move only their own cursors and the ingest runs delete what they
        # added, so every part finds the shared logs at their sizes; growth runs before
        # scale so the 1M log is not yet evicted from the page cache by the 10M one
        await part("growth", "5 growth", do_growth)
        await part("scale", "4 scale", do_scale)
        await part("replicated", "6 replicated", do_replicated)
        if logs.fills:
            n = sum(f.events for f in logs.fills)
            s = sum(f.seconds for f in logs.fills)
            out.notes.append(f"set-up: {n:,} events filled into {len(logs.fills)} logs in "
                             f"{s:.0f} s ({n / s:,.0f}/s), not part of any figure.")  # fmt: skip
    changed = common.code_changed()
    if changed:
        out.notes.append(changed)
        common.say(changed)
    if common.BUSY_STARTS:
        out.notes.append(
            f"the machine did not quiet down (≥ {common.QUIET_IDLE:.0%} idle) within "
            f"{common.QUIET_WAIT:g} s before {len(common.BUSY_STARTS)} measurement(s): "
            + ", ".join(common.BUSY_STARTS[:8])
            + ("…" if len(common.BUSY_STARTS) > 8 else "")
        )
    else:
        out.notes.append(
            f"every measurement started on a quiet machine (≥ {common.QUIET_IDLE:.0%} CPU idle "
            "over 0.5 s; the wait is not measured)."
        )
    order = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "6": 5}
    out.rows.sort(key=lambda r: order.get(r.part[:1], 9))
    return out, time.monotonic() - started


def summary(t: Table) -> str:
    judged = [r for r in t.rows if r.met is not None]
    met = sum(1 for r in judged if r.met)
    return f"targets met: {met} of {len(judged)}"


def write_results(t: Table, p: Profile, seconds: float, command: str) -> None:
    kept = ""
    if RESULTS.exists():
        m = KEEP.search(RESULTS.read_text())
        kept = m.group(0) if m else ""
    if not kept:
        kept = "<!-- observations:start -->\n<!-- observations:end -->"
    text = "\n".join([
        "# Benchmark results",
        "",
        "Written by `python -m bench.run` (bench/run.py). Every figure is from one run on the "
        "machine below, next to a baseline or reference measured in the same run; targets "
        "are marked ✓/✗. `make bench` installs wrk and Ceph RGW and runs the full profile; `make bench BENCH_ARGS=--quick` the quick one.",
        "",
        "| command | what | time |",
        "|---|---|---|",
        "| `python -m bench.run --quick` | all five parts, short profile, writes this file | ~8 min |",
        "| `python -m bench.run` | full profile (1M drains, 10M log, 60 s latency) | ~45-50 min (estimate) |",
        "| `python -m bench.ingest [--seconds 10] [--connections 64] [--repeat 1]` | part 1 | ~30 s |",
        "| `python -m bench.latency [--rate 1000] [--seconds 60]` | part 2 | ~1.5 min |",
        "| `python -m bench.drain --events 100000 --sink nats [--knob] [--all] [--cap S] [--ceph]` | part 3, any sinks | per sink |",
        "| `python -m bench.scale [--events 10000000] [--ready-events 1000000]` | part 4 | ~10 min at 10M |",
        "| `python -m bench.growth [--sizes 10000,100000,1000000] [--repeat 2]` | part 5 | ~2 min |",
        "| `python -m bench.fill --events N --data-dir DIR [--sink NAME]` | a filled log, for your own runs | ~30 s per 1M |",
        "| `python -m bench.policy [--events 5000] [--rate 200] [--schedule 1s,2s,4s,8s]` | RATE_LIMIT and RETRY_SCHEDULE as kept, at a receiver | ~1 min |",
        "| `python -m bench.routing [--events 100000] [--repeat 7]` | Router.matches, ns per call (3 rules, 3 sinks) | ~10 s |",
        "| `python -m bench.workers [--workers N] [--seconds 10] [--rate 5000] [--parts ingest,steady]` | RELAY_WORKERS=1 against N: durable ingest vs bare aiohttp in 1 and N processes; a steady rate with a webhook sink (backlog, ack p99) | ~3 min |",
        "| `python -m bench.charts [--sinks 4,100] [--repeat 7]` | the status page's samples: time per sample, memory, JSON answers | ~5 s |",
        "| `python -m bench.replicated [--seconds 10] [--connections 64] [--ids 200000]` | part 6: two replicas on a 3-node JetStream cluster vs SQLite, failover gap, duplicate-window memory | ~1.5 min |",
        "| `python -m bench.pyspy_top PROFILE` | top frames of a `py-spy record -f raw` profile of the relay | |",
        "",
        "Options of bench.run: `--only ingest,latency,drain,scale,growth,replicated`, `--no-pin`, "
        "`--no-ceph`, `--no-write`. Needs `wrk` and the loopback servers (PostgreSQL, "
        "MariaDB, Redis, RabbitMQ, NATS with JetStream); Ceph is optional.",
        "",
        f"## Last run: `{command}` ({p.name} profile), {seconds / 60:.1f} min; {summary(t)}",
        "",
        *common.machine_lines(),
        "",
        t.markdown(),
        "",
        *[f"- {n}" for n in t.notes],
        "",
        kept,
        "",
    ])  # fmt: skip
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description="the benchmark suite, one table")
    parser.add_argument("--quick", action="store_true", help="the short profile (~8 min)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run ({','.join(PARTS)})")  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin wrk/relay to cores")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--no-ceph", action="store_true",
                        help="part 3 skips the audit bucket on a Ceph RGW (started for it)")  # fmt: skip
    args = parser.parse_args()
    parts = tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    profile = QUICK if args.quick else FULL
    table, seconds = common.run(suite(profile, parts, not args.no_pin, not args.no_ceph))
    title = f"# s3-notify-relay benchmarks ({profile.name}, {seconds / 60:.1f} min)"
    print(table.render(title))
    print(f"\n{summary(table)}")
    if not args.no_write and parts == PARTS:
        command = "python -m bench.run" + (" --quick" if args.quick else "")
        write_results(table, profile, seconds, command)
        common.say(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
