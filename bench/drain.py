"""How fast the relay drains a backlog to each sink, and to all of them at once.

    python -m bench.drain [--events 1000000] [--sink nats ...] [--all] [--knob] [--cap 120]

The log is filled first (bench/fill.py: the log's schema and `insert_event`, MinIO/RustFS/Ceph
bodies in rotation), then, for each sink on its own, a cursor row at 0 is written for a
fresh sink name (so the whole log is pending for it), `relay serve` starts with that one sink
at its defaults, and the clock runs from the first /metrics scrape after the relay answers
until `relay_sink_pending` of the sink reads 0. The rate is the events it took over that
window. `--knob` adds a second figure per sink with its one obvious setting changed
(bench/targets.py KNOBS: CONCURRENCY and BATCH_SIZE raised for the webhook and AMQP;
Redis's batch and JetStream's window of PubAcks at their former default of 100), `--all` a run with every sink at once (each with its own cursor).
`--cap` stops a run after that many seconds and reports the rate so far (marked "capped").

Sinks: webhook (a receiver in the bench process), nats (JetStream), redis (stream), amqp
(RabbitMQ), postgres, mysql (MariaDB), on the machine's loopback servers; every stream, key,
exchange, queue and table is created for the run and removed after it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import common, fill, targets
from bench.common import Relay, Table, check, rate

TARGETS = {"nats": 20_000.0, "redis": 20_000.0, "postgres": 20_000.0, "webhook": 5_000.0}
POLL = 0.2
POLL_FIRST = 0.05
STALL = 60.0  # no progress at all for this long: the sink is not working, stop


@dataclass
class Drained:
    sink: str  # kind
    name: str
    events: int  # taken over the measured window
    seconds: float
    pending_start: int
    pending_end: int
    capped: bool
    retries: float = 0.0
    dead: float = 0.0
    error: str = ""
    timed_by: str = "metrics"  # or "receiver": first to last arrival at the webhook receiver

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def watch(relay: Relay, names: dict[str, str], cap: float | None,
                stall: float = STALL) -> dict[str, Drained]:  # fmt: skip
    """Poll /metrics until every sink's pending reads 0 (or the cap); `names` maps sink name
    to kind. The window of each sink runs from the first scrape to the one that reads 0."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        m = await relay.metrics(session)
        t0 = time.monotonic()
        start = {n: int(m.get("relay_sink_pending", 0, sink=n)) for n in names}
        done: dict[str, Drained] = {}
        last_progress = t0
        last_pending = dict(start)
        while True:
            # fine-grained at first, so a short drain is timed closely
            await asyncio.sleep(POLL_FIRST if time.monotonic() - t0 < 3 else POLL)
            m = await relay.metrics(session)
            now = time.monotonic()
            for n, kind in names.items():
                if n in done:
                    continue
                pending = int(m.get("relay_sink_pending", 0, sink=n))
                if pending < last_pending[n]:
                    last_progress = now
                last_pending[n] = pending
                capped = cap is not None and now - t0 >= cap
                stalled = now - last_progress >= stall
                if pending == 0 or capped or stalled:
                    done[n] = Drained(
                        kind, n, start[n] - pending, now - t0, start[n], pending,
                        capped and pending > 0,
                        retries=m.get("relay_deliveries_total", sink=n, outcome="retry"),
                        dead=m.get("relay_deliveries_total", sink=n, outcome="dead_letter"),
                        error="" if pending == 0 or capped else f"stalled: {relay.tail(3)}",
                    )  # fmt: skip
            if len(done) == len(names):
                return done


async def drain_once(data_dir: Path, kinds: list[str], *, knob: bool = False,
                     cap: float | None = None, log_dir: Path) -> dict[str, Drained]:  # fmt: skip
    """One `relay serve` over the filled log with the given sinks, each from cursor 0."""
    made: list[targets.Target] = []
    relay: Relay | None = None
    try:
        for kind in kinds:
            made.append(await targets.make(kind, common.tag(), knob=knob))
        names = {t.name: t.kind for t in made}
        fill.set_cursors(data_dir, names)
        env: dict[str, str] = {}
        for t in made:
            env.update(t.env())
        relay = Relay(data_dir, env, log=log_dir / f"relay-drain-{made[0].tag}.log")
        await common.quiet(f"the drain to {', '.join(kinds)}")
        await relay.start()
        result = await watch(relay, names, cap)
        for t in made:
            got = await t.delivered()
            r = result[t.name]
            if got is not None and r.pending_end == 0 and got < r.pending_start:
                r.error = f"the target holds {got} of {r.pending_start}"
            rx = t.receiver
            if rx is not None and r.pending_end == 0 and rx.count > 1 and not r.error:
                # a complete webhook drain is timed where the events land: first to last
                # arrival at the receiver, free of the scrape interval
                r.events, r.seconds, r.timed_by = rx.count - 1, rx.last_at - rx.first_at, "receiver"
        return result
    finally:
        if relay is not None:
            await relay.stop()
        for t in made:
            await t.cleanup()


def describe(r: Drained) -> str:
    extra = " (capped)" if r.capped else ""
    extra += f" retries {r.retries:.0f}" if r.retries else ""
    extra += f" dead {r.dead:.0f}" if r.dead else ""
    extra += f" ERROR {r.error}" if r.error else ""
    return f"  {r.name:<24} {r.events:>9,} events in {r.seconds:7.1f} s = {r.rate:>9,.0f}/s{extra}"


@dataclass
class DrainResult:
    events: int
    fill_rate: float
    alone: dict[str, Drained]  # by kind
    knob: dict[str, Drained]
    together: dict[str, Drained]
    together_seconds: float
    cap: float | None
    skipped: dict[str, str] = field(default_factory=dict)  # kind → why


async def run(events: int, kinds: list[str], *, knob: bool, together: bool,
              cap: float | None, data: Path | None = None) -> DrainResult:  # fmt: skip
    """Drain `data` (a filled log; filled here with `events` when None) to each sink."""
    with common.workdir("relay-bench-drain-") as tmp:
        fill_rate = 0.0
        if data is None:
            data = tmp / "log"
            common.say(f"filling a log with {events:,} events …")
            filled = fill.fill(data, events, tag=common.tag())
            fill_rate = filled.rate
            common.say(f"  {filled.events:,} events in {filled.seconds:.1f} s")
        events = fill.count(data)
        alone, tuned, all_at_once = {}, {}, {}
        skipped = {k: why for k in kinds if (why := targets.unavailable(k))}
        for kind in skipped:
            common.say(f"  {kind}: skipped, {skipped[kind]}")
        kinds = [k for k in kinds if k not in skipped]
        for kind in kinds:
            r = await drain_once(data, [kind], cap=cap, log_dir=tmp)
            alone[kind] = next(iter(r.values()))
            common.say(describe(alone[kind]))
            if knob and targets.KNOBS.get(kind):
                r = await drain_once(data, [kind], knob=True, cap=cap, log_dir=tmp)
                tuned[kind] = next(iter(r.values()))
                common.say(describe(tuned[kind]) + f"  [{targets.knob_text(kind)}]")
        seconds = 0.0
        if together and len(kinds) > 1:
            started = time.monotonic()
            r = await drain_once(data, kinds, cap=cap, log_dir=tmp)
            seconds = time.monotonic() - started
            for res in r.values():
                all_at_once[res.sink] = res
                common.say("  all at once: " + describe(res).strip())
    return DrainResult(events, fill_rate, alone, tuned, all_at_once, seconds, cap, skipped)


def _figure(r: Drained) -> str:
    if r.error:
        return "failed"
    return rate(r.rate) + (" (capped)" if r.capped else "")


def _note(r: Drained, extra: str = "") -> str:
    parts = [extra] if extra else []
    if r.capped:
        parts.append(f"{r.events:,} of {r.pending_start:,} in {r.seconds:.0f} s cap")
    else:
        parts.append(f"{r.events:,} in {r.seconds:.1f} s")
    if r.retries or r.dead:
        parts.append(f"retries {r.retries:.0f}, dead {r.dead:.0f}")
    if r.error:
        parts.append(r.error[:120])
    return "; ".join(parts)


def table(d: DrainResult) -> Table:
    t = Table()
    part = "3 drain"
    for kind, r in d.alone.items():
        goal = TARGETS.get(kind)
        t.add(part, f"{d.events:,} queued → {targets.DESCRIPTION[kind]}", _figure(r), _note(r),
              f"≥ {goal:,.0f}/s" if goal else "",
              check(r.rate, ">=", goal) if goal and not r.error else (False if goal else None))  # fmt: skip
        if kind in d.knob:
            k = d.knob[kind]
            t.add(part, f"  same, {targets.knob_text(kind)}", _figure(k),
                  _note(k, f"{k.rate / r.rate:.2f}x default" if r.rate else ""))  # fmt: skip
    for kind, why in d.skipped.items():
        t.add(part, f"{d.events:,} queued → {targets.DESCRIPTION.get(kind, kind)}", "skipped", why)
    if d.together:
        total = sum(r.events for r in d.together.values())
        slowest = max(r.seconds for r in d.together.values())
        t.add(part, f"{d.events:,} queued → all {len(d.together)} sinks at once",
              rate(total / slowest) if slowest else "n/a",
              f"events delivered per second, all sinks together; until the last one: "
              f"{slowest:.1f} s")  # fmt: skip
        for kind, r in d.together.items():
            alone = d.alone.get(kind)
            ratio = f"{r.rate / alone.rate:.2f}x alone; " if alone and alone.rate else ""
            t.add(part, f"  of which {kind}", _figure(r), ratio + _note(r))
    t.notes.append(
        "drain: the log filled through its own schema and `insert_event` (MinIO/RustFS/Ceph "
        "records, ~1.1 KB each), cursors written at 0, then `relay serve` with the sink(s) at "
        "their defaults (BATCH_SIZE 1000 for NATS, Redis and the SQL sinks, 100 for the others; "
        "CONCURRENCY 4; the audit bucket's own batching); rate = events taken from the first "
        "/metrics scrape until relay_sink_pending = 0 (a complete webhook drain: from the "
        "first to the last arrival at the receiver)."
        + (f' Runs stop after {d.cap:g} s ("capped": the rate so far).' if d.cap else "")
    )
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sink", action="append", choices=targets.ALL + targets.OPTIONAL,
                        help="repeatable; default: all six")  # fmt: skip
    parser.add_argument("--all", action="store_true", help="also every sink at once")
    parser.add_argument("--knob", action="store_true", help="also each sink's knob raised")
    parser.add_argument("--cap", type=float, default=None, help="seconds per run at most")
    parser.add_argument("--ceph", action="store_true",
                        help="also the audit bucket on a Ceph RGW started for the run")  # fmt: skip
    args = parser.parse_args()
    kinds = args.sink or list(targets.ALL)
    if args.ceph:
        kinds.append("audit_bucket")
    result = common.run(run(args.events, kinds, knob=args.knob, together=args.all, cap=args.cap))
    print(table(result).render("# drain"))


if __name__ == "__main__":
    main()
