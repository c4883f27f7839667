"""Latency at a fixed rate: open-loop load, POST → ack and POST → arrival at two sinks.

    python -m bench.latency [--rate 1000] [--seconds 60]

A Python client (aiohttp, in the bench process) sends one event every 1/rate s on a fixed
schedule, without waiting for earlier answers (open loop: a slow answer does not slow the
sender, so it cannot hide latency). The relay (`relay serve`, a subprocess, RELAY_SYNC=full,
sinks at their defaults) delivers each event to a webhook receiver and to NATS JetStream;
the receiver and a JetStream subscriber (an ordered push consumer on a stream the bench
creates) run in the bench process and stamp each arrival with time.monotonic(), the clock
the schedule is on. Latencies are measured from each event's scheduled send time, so a
client that falls behind shows as latency too. The first 2 s are a warm-up, not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import common, shapes, targets
from bench.common import TOKEN, Relay, Table, check, ms, percentile
from bench.receiver import CountingReceiver
from relay.events import parse_body

TARGET_ACK_P99 = 10.0  # ms
WARMUP = 2.0


@dataclass
class Latencies:
    values: list[float]  # ms
    missing: int

    def p(self, q: float) -> float:
        return percentile(self.values, q)


@dataclass
class LatencyResult:
    rate: float
    seconds: float
    sent: int
    achieved: float  # sends per second actually made
    non_2xx: int
    ack: Latencies
    webhook: Latencies
    nats: Latencies
    baseline: Latencies  # ack latency of the bare-aiohttp server at the same rate
    alone: Latencies  # ack latency of the relay with no sink (ingest alone)


@dataclass
class Sent:
    scheduled: list[float]
    acked: list[float]
    statuses: list[int]
    achieved: float

    def ack(self, first: int = 0) -> Latencies:
        ok = [i for i in range(first, len(self.acked)) if self.statuses[i] == 200]
        return Latencies([1000 * (self.acked[i] - self.scheduled[i]) for i in ok],
                         len(self.acked) - first - len(ok))  # fmt: skip


async def open_loop(url: str, bodies: list[tuple[str, bytes]], rate: float) -> Sent:
    """POST every body to `url` + its path on a fixed schedule (one every 1/rate s), never
    waiting for an answer before the next send; returns when every answer is in."""
    total = len(bodies)
    scheduled = [0.0] * total
    acked = [math.nan] * total
    statuses = [0] * total
    connector = aiohttp.TCPConnector(limit=512)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:  # fmt: skip

        async def post(i: int) -> None:
            path, body = bodies[i]
            try:
                async with session.post(url + path, data=body) as response:
                    await response.read()
                    statuses[i] = response.status
            except (aiohttp.ClientError, TimeoutError):
                statuses[i] = -1
            acked[i] = time.monotonic()

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic() + 0.05
        for i in range(total):
            at = t0 + i / rate
            scheduled[i] = at
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(post(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_seconds = time.monotonic() - t0
        while tasks:
            await asyncio.gather(*list(tasks))
    return Sent(scheduled, acked, statuses, total / send_seconds if send_seconds else 0.0)


async def baseline_ack(rate: float, seconds: float, bodies: list[tuple[str, bytes]]) -> Latencies:
    """The same open-loop client against the bare-aiohttp server (bench/baseline_server.py):
    what the client, HTTP and Python cost at this rate with no log behind them."""
    port = common.free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.baseline_server", str(port), env=common.base_env(),
        cwd=common.ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        from bench.ingest import _wait_http

        await _wait_http(f"http://127.0.0.1:{port}/")
        await common.quiet("the latency baseline")
        warm = int(rate * WARMUP)
        n = warm + int(rate * seconds)
        sent = await open_loop(f"http://127.0.0.1:{port}", bodies[:n], rate)
        return sent.ack(warm)
    finally:
        proc.terminate()
        await proc.wait()


async def relay_alone_ack(rate: float, seconds: float, base: Path, run_tag: str) -> Latencies:
    """The relay with no sink at the same rate: the ingest path alone, nothing dispatching."""
    warm = int(rate * WARMUP)
    bodies = [shapes.body(i, f"alone{run_tag}") for i in range(warm + int(rate * seconds))]
    relay = Relay(base / "data-alone", {}, log=base / "relay-alone.log")
    try:
        await relay.start("/readyz")
        await common.quiet("latency, relay without sinks")
        return (await open_loop(relay.url, bodies, rate)).ack(warm)
    finally:
        await relay.stop()


async def run(
    rate: float = 1000.0, seconds: float = 60.0, work: Path | None = None
) -> LatencyResult:
    with common.workdir("relay-bench-latency-") as tmp:
        base = work or tmp
        return await _run(rate, seconds, base)


async def _run(rate: float, seconds: float, base: Path) -> LatencyResult:
    import nats

    run_tag = common.tag()
    warm = int(rate * WARMUP)
    total = warm + int(rate * seconds)
    bodies = [shapes.body(i, f"lat{run_tag}") for i in range(total)]
    ids = [parse_body(b, {}, p.strip("/")).events[0].event_id for p, b in bodies]

    short = min(seconds, 10.0)
    baseline = await baseline_ack(rate, short, bodies)
    common.say(f"  bare aiohttp baseline at {rate:,.0f}/s: ack p99 {ms(baseline.p(99))}")
    alone = await relay_alone_ack(rate, short, base, run_tag)
    common.say(f"  relay without sinks at {rate:,.0f}/s: ack p99 {ms(alone.p(99))}")
    receiver = await CountingReceiver(stamp=True).start()
    hook = await targets.make("webhook", common.tag(), receiver=receiver)
    js_target = await targets.make("nats", common.tag())
    nc = await nats.connect(targets.NATS_URL)
    js_arrivals: dict[str, float] = {}

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        stamp = time.monotonic()
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        js_arrivals.setdefault(msg_id, stamp)

    relay: Relay | None = None
    try:
        sub = await nc.jetstream().subscribe(js_target.subject, stream=js_target.stream,
                                             cb=on_msg, ordered_consumer=True)  # fmt: skip
        relay = Relay(base / "data-latency", {**hook.env(), **js_target.env()},
                      log=base / "relay-latency.log")  # fmt: skip
        await relay.start()
        await relay.wait("/readyz")
        await common.quiet("latency")
        common.say(f"  sending {total:,} events at {rate:,.0f}/s …")
        sent = await open_loop(relay.url, bodies, rate)
        deadline = time.monotonic() + 30
        measured = range(warm, total)
        while time.monotonic() < deadline:
            if all(ids[i] in receiver.arrivals and ids[i] in js_arrivals for i in measured):
                break
            await asyncio.sleep(0.1)
        await sub.unsubscribe()
    finally:
        await nc.close()
        if relay is not None:
            await relay.stop()
        await hook.cleanup()
        await js_target.cleanup()
        await receiver.stop()

    scheduled = sent.scheduled

    def lat(arrivals: dict[str, float]) -> Latencies:
        values, missing = [], 0
        for i in measured:
            t = arrivals.get(ids[i])
            if t is None:
                missing += 1
            else:
                values.append(1000 * (t - scheduled[i]))
        return Latencies(values, missing)

    return LatencyResult(
        rate, seconds, total, sent.achieved, sent.ack(warm).missing, sent.ack(warm),
        lat(receiver.arrivals), lat(js_arrivals), baseline, alone,
    )  # fmt: skip


def table(r: LatencyResult) -> Table:
    t = Table()
    part = "2 latency"
    load = f"{r.rate:,.0f}/s open loop"
    t.add(part, f"ack latency (POST → 200), {load}, webhook + JetStream sinks delivering",
          f"p99 {ms(r.ack.p(99))}",
          f"p50 {ms(r.ack.p(50))}, p99.9 {ms(r.ack.p(99.9))}"
          + (f"; {r.non_2xx} not 200" if r.non_2xx else ""),
          f"p99 ≤ {TARGET_ACK_P99:g} ms", check(r.ack.p(99), "<=", TARGET_ACK_P99))  # fmt: skip
    t.add(part, f"  baseline: bare aiohttp, same client, {load}", f"p99 {ms(r.baseline.p(99))}",
          f"p50 {ms(r.baseline.p(50))}, p99.9 {ms(r.baseline.p(99.9))}; relay p99 = "
          f"{r.ack.p(99) / r.baseline.p(99):.1f}x baseline")  # fmt: skip
    t.add(part, f"  reference: the relay with no sink, {load}", f"p99 {ms(r.alone.p(99))}",
          f"p50 {ms(r.alone.p(50))}, p99.9 {ms(r.alone.p(99.9))}: ingest alone, nothing "
          "dispatching")  # fmt: skip
    for name, x in (("webhook receiver", r.webhook), ("NATS JetStream subscriber", r.nats)):
        t.add(part, f"POST → arrival at the {name}", f"p50 {ms(x.p(50))}",
              f"p99 {ms(x.p(99))}, p99.9 {ms(x.p(99.9))}"
              + (f"; {x.missing} never arrived" if x.missing else ""))  # fmt: skip
    t.notes.append(
        f"latency: {r.seconds:g} s at {r.rate:,.0f} events/s (+{WARMUP:g} s warm-up, not counted; "
        f"the client achieved {r.achieved:,.0f}/s), MinIO/RustFS/Ceph bodies in rotation, "
        "RELAY_SYNC=full, one relay with a webhook and a JetStream sink at their defaults; "
        "times from each event's scheduled send, on the bench process's monotonic clock; "
        f"the baseline and the no-sink reference run {min(r.seconds, 10.0):g} s each."
    )
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    result = common.run(run(args.rate, args.seconds))
    print(table(result).render("# latency at a fixed rate"))


if __name__ == "__main__":
    main()
