"""What RELAY_WORKERS buys on this machine, one process against several, in one run.

    python -m bench.workers [--workers N] [--seconds 10] [--rate 5000] [--parts ingest,steady]

Nothing is pinned: the relay, wrk and the receivers run as a user would run them.
- ingest: durable ingest, no sink, 64 connections, RELAY_SYNC=full, wrk -t2 (as a user
  would run it); RELAY_WORKERS=1 and N, against a bare aiohttp server (parse + answer) in
  one process and in N processes sharing the port, measured in the same run;
- steady: a fixed rate of events (open loop) with a webhook sink delivering to a receiver
  in a process of its own: the sink's backlog (relay_sink_pending) sampled through the run,
  and the ack latency; RELAY_WORKERS=1 and N.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import common, ingest, latency, shapes
from bench.common import Relay, Table, check, ms, rate
from relay.processes.cpus import usable_cpus

TARGET_INGEST = 0.8  # times a bare aiohttp server in one process
TARGET_ACK_P99 = 20.0  # ms, at the steady rate
SAMPLE_EVERY = 0.5


@dataclass
class Steady:
    workers: int
    achieved: float
    ack: latency.Latencies
    non_2xx: int
    pending: list[float] = field(default_factory=list)  # relay_sink_pending, every SAMPLE_EVERY
    delivered: float = 0.0


async def ingest_part(work: Path, workers: int, seconds: float) -> dict[str, ingest.WrkResult]:
    script = ingest.write_script(work)
    out: dict[str, ingest.WrkResult] = {}
    for name, processes in (("bare 1", 1), (f"bare {workers}", workers)):
        out[name] = await ingest.measure_baseline(seconds, 64, script, False,
                                                  processes=processes, threads=2)  # fmt: skip
        common.say(ingest.describe(f"bare aiohttp, {processes} process(es)", out[name]))
    for n in (1, workers):
        out[f"relay {n}"] = await ingest.measure_relay(
            work,
            "full",
            seconds,
            64,
            script,
            False,
            env={"RELAY_WORKERS": str(n)},
            run=n,
            threads=2,
        )
        common.say(ingest.describe(f"relay, RELAY_WORKERS={n}", out[f"relay {n}"]))
    return out


async def steady_part(work: Path, workers: int, seconds: float, offered: float) -> list[Steady]:
    out = []
    for n in (1, workers):
        port = common.free_port()
        receiver = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.baseline_server", str(port), cwd=common.ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        relay = Relay(work / f"data-steady-{n}", {
            "RELAY_WORKERS": str(n),
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_S": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_S": f"http://127.0.0.1:{port}/hook",
        }, log=work / f"relay-steady-{n}.log")  # fmt: skip
        try:
            await ingest._wait_http(f"http://127.0.0.1:{port}/")
            await relay.start()
            await relay.wait("/readyz")
            await common.quiet(f"steady, RELAY_WORKERS={n}")
            total = int(offered * seconds)
            bodies = [shapes.body(i, f"st{n}{common.tag()}") for i in range(total)]
            result = Steady(n, 0.0, latency.Latencies([], 0), 0)
            sampling = asyncio.create_task(_sample(relay, result))
            sent = await latency.open_loop(relay.url, bodies, offered)
            await asyncio.sleep(2 * SAMPLE_EVERY)
            sampling.cancel()
            result.achieved = sent.achieved
            result.ack = sent.ack(0)
            result.non_2xx = sum(1 for s in sent.statuses if s != 200)
            out.append(result)
            tail = ", ".join(f"{p:,.0f}" for p in result.pending[-6:])
            common.say(f"  steady {offered:,.0f}/s, RELAY_WORKERS={n}: achieved "
                       f"{result.achieved:,.0f}/s, ack p99 {ms(result.ack.p(99))}, "
                       f"pending (last samples) {tail}")  # fmt: skip
        finally:
            await relay.stop()
            receiver.terminate()
            await receiver.wait()
    return out


async def _sample(relay: Relay, result: Steady) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            metrics = await relay.metrics(session)
            result.pending.append(metrics.get("relay_sink_pending", sink="webhook:s"))
            await asyncio.sleep(SAMPLE_EVERY)


def table(workers: int, ingest_results: dict[str, ingest.WrkResult],
          steady: list[Steady], offered: float) -> Table:  # fmt: skip
    t = Table()
    part = "workers"
    if ingest_results:
        bare1, bare_n = ingest_results["bare 1"], ingest_results[f"bare {workers}"]
        t.add(part, "bare aiohttp (parse, 200), 1 process, 64 conns, unpinned", rate(bare1.rps),
              f"p99 {ms(bare1.p99)}")  # fmt: skip
        t.add(part, f"  bare aiohttp, {workers} processes sharing the port", rate(bare_n.rps),
              f"{bare_n.rps / bare1.rps:.2f}x one process; p99 {ms(bare_n.p99)}")  # fmt: skip
        for n in sorted({1, workers}):
            r = ingest_results[f"relay {n}"]
            ratio = r.rps / bare1.rps
            t.add(part, f"durable ingest, RELAY_WORKERS={n}, RELAY_SYNC=full, unpinned",
                  rate(r.rps), f"{ratio:.2f}x bare 1 process, {r.rps / bare_n.rps:.2f}x bare "
                  f"{workers}; p99 {ms(r.p99)}",
                  f"≥ {TARGET_INGEST}x bare 1" if n == workers else "",
                  check(ratio, ">=", TARGET_INGEST) if n == workers else None)  # fmt: skip
    for s in steady:
        pending = s.pending or [0.0]
        half = pending[len(pending) // 2 :]
        grew = half[-1] - half[0] if len(half) > 1 else 0.0
        t.add(part, f"steady {offered:,.0f}/s open loop + webhook sink, RELAY_WORKERS={s.workers}",
              f"ack p99 {ms(s.ack.p(99))}",
              f"achieved {s.achieved:,.0f}/s; p50 {ms(s.ack.p(50))}; sink pending max "
              f"{max(pending):,.0f}, second half {half[0]:,.0f} → {half[-1]:,.0f}"
              + (f"; {s.non_2xx} not 200" if s.non_2xx else ""),
              f"p99 ≤ {TARGET_ACK_P99:g} ms, backlog flat" if s.workers == workers else "",
              (check(s.ack.p(99), "<=", TARGET_ACK_P99) and grew < offered)
              if s.workers == workers else None)  # fmt: skip
    t.notes.append(
        f"workers: {usable_cpus()} usable CPUs; RELAY_WORKERS={workers} is {workers} ingest "
        "processes, one delivery process and the supervisor; nothing pinned; wrk -t2 -c64 for "
        "ingest, the Python open-loop client of bench.latency for the steady rate (its "
        "achieved rate is printed: it is itself a Python process on the same cores)."
    )
    return t


async def run(workers: int, seconds: float, offered: float, parts: list[str]) -> Table:
    with common.workdir("relay-bench-workers-") as work:
        ingest_results = await ingest_part(work, workers, seconds) if "ingest" in parts else {}
        steady = await steady_part(work, workers, seconds, offered) if "steady" in parts else []
    return table(workers, ingest_results, steady, offered)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=min(usable_cpus(), 8))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--parts", default="ingest,steady")
    args = parser.parse_args()
    ingest.require_wrk()
    started = time.monotonic()
    t = common.run(run(args.workers, args.seconds, args.rate, args.parts.split(",")))
    print(t.render(f"# RELAY_WORKERS ({(time.monotonic() - started) / 60:.1f} min)"))


if __name__ == "__main__":
    main()
