"""The replicated log (RELAY_LOG=nats://…) beside the SQLite log, in the same run.

    python -m bench.replicated [--seconds 10] [--connections 64] [--ids 200000]

- durable ingest: two relay replicas (RELAY_WORKERS=1 each) on a 3-node JetStream cluster
  of the bench's own (R3 stream, the 2xx after the PubAck), one wrk per replica with half
  the connections; then one relay on the SQLite log (RELAY_SYNC=full, RELAY_WORKERS=auto,
  its best), one wrk with all of them. Events/s acknowledged, and the ratio.
- the failover gap: the stream leader's node killed (SIGKILL) under a steady probe (one
  fresh event every 10 ms, to the replicas in turn): how long answers were not 2xx, how
  many, and whether every acknowledged event is still in the stream.
- where is my event: `relay trace` of an object the load never posted, which reads every
  event of each log (the replicated one: its newest 100 000 at most): events read per second,
  the replicated log's against the SQLite log's.
- the duplicate window's memory: a server's RSS before and after `--ids` distinct
  `Nats-Msg-Id`s inside the window, per million ids; with one subject per id (how the
  relay refuses an id past the window, RELAY_LOG_DEDUP=stream) and with one subject for
  all (RELAY_LOG_DEDUP=window).

Everything shares the machine: 3 servers, the relays and wrk on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
from nats.js import api

from bench import common, shapes
from bench.common import TOKEN, Relay, Table, check, rate
from bench.ingest import WrkResult, require_wrk, run_wrk, write_script
from tests.support.nats_cluster import Cluster, nats_cluster

TARGET_RATE = 5000.0
TARGET_GAP = 10.0


@dataclass
class Failover:
    gap: float  # seconds from the first answer that was not 2xx to the last
    refused: int
    acked: int
    missing: int  # acknowledged but not in the stream afterwards


@dataclass
class Memory:
    ids: int
    per_million_subjects: float  # bytes of server RSS per million ids, one subject per id
    per_million_window: float  # … all on one subject: the duplicate window alone


@dataclass
class Scan:
    events: int  # the events the log held
    seconds: float  # `relay trace` of an object none of them is of, the command's start included

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass
class Result:
    replicated: WrkResult  # the two replicas' figures summed (rps, requests, errors)
    sqlite: WrkResult
    scan_replicated: Scan
    scan_sqlite: Scan
    failover: Failover
    memory: Memory
    connections: int


def _env(cluster: Cluster, name: str) -> dict[str, str]:
    return {"RELAY_LOG": cluster.urls, "RELAY_LOG_NAME": name, "RELAY_MAX_BYTES": "256MiB",
            "RELAY_WORKERS": "1", "RELAY_LOG_PUBLISH_TIMEOUT": "2s"}  # fmt: skip


async def replicated_ingest(
    work: Path, cluster: Cluster, seconds: float, connections: int, script: Path
) -> tuple[WrkResult, Scan]:
    name = "b" + uuid.uuid4().hex[:8]
    relays = [Relay(work / f"replica-{i}", _env(cluster, name), log=work / f"replica-{i}.log")
              for i in range(2)]  # fmt: skip
    try:
        for relay in relays:
            await relay.start()
        await common.quiet("replicated ingest")
        half = max(1, connections // 2)
        await asyncio.gather(*(run_wrk(r.url, 2, half, script, None) for r in relays))
        runs = await asyncio.gather(*(run_wrk(r.url, seconds, half, script, None)
                                      for r in relays))  # fmt: skip
    finally:
        for relay in relays:
            await relay.stop()
    summed = WrkResult(
        rps=sum(r.rps for r in runs), requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs), socket_errors=sum(r.socket_errors for r in runs),
        p50=max(r.p50 for r in runs), p90=max(r.p90 for r in runs),
        p99=max(r.p99 for r in runs), p999=max(r.p999 for r in runs),
        max=max(r.max for r in runs),
    )  # fmt: skip
    return summed, trace_scan(relays[0])


async def sqlite_ingest(
    work: Path, seconds: float, connections: int, script: Path
) -> tuple[WrkResult, Scan]:
    relay = Relay(work / "sqlite", {"RELAY_SYNC": "full"}, log=work / "sqlite.log")
    try:
        await relay.start()
        await common.quiet("sqlite ingest")
        await run_wrk(relay.url, 2, connections, script, None)
        result = await run_wrk(relay.url, seconds, connections, script, None)
    finally:
        await relay.stop()
    return result, trace_scan(relay)


def trace_scan(relay: Relay) -> Scan:
    """`relay trace` (a stopped relay's log, its configuration) of an object the load never
    posted: every event read. The log's newest seq from a trace of a seq past it."""

    def trace(query: str) -> tuple[str, float]:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "relay", "trace", query], env=relay.env,
                              capture_output=True, text=True, cwd=common.ROOT)  # fmt: skip
        return done.stdout, time.monotonic() - started

    beyond, _ = trace("999999999")
    newest = re.search(r"the newest in the log is seq (\d+)", beyond)
    assert newest, beyond
    events = int(newest.group(1))
    searched, seconds = trace("nothing-posted/here")
    read = re.search(r"only seqs (\d+)\.\.(\d+)", searched)
    if read:
        events = int(read.group(2)) - int(read.group(1)) + 1
    return Scan(events, seconds)


async def failover(work: Path, cluster: Cluster) -> Failover:
    name = "f" + uuid.uuid4().hex[:8]
    relays = [Relay(work / f"fo-{i}", _env(cluster, name), log=work / f"fo-{i}.log")
              for i in range(2)]  # fmt: skip
    acked: set[str] = set()
    failures: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while not stop.is_set():
                n += 1
                path, data = shapes.body(n)
                ok = False
                try:
                    async with session.post(
                        relays[n % 2].url + path,
                        data=data,
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    ) as r:
                        ok = r.status == 200  # fmt: skip
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if ok:
                    acked.add(str(n))
                else:
                    failures.append(time.monotonic())
                await asyncio.sleep(0.01)

    try:
        for relay in relays:
            await relay.start()
        task = asyncio.create_task(probe())
        await asyncio.sleep(2)  # steady state before the kill
        leader = cluster.node(cluster.leader_of(f"{name}_events"))
        leader.server.stop()
        killed = time.monotonic()
        for _ in range(100):  # until 3 s of 2xx after the failures, at most 20 s
            if failures and time.monotonic() - failures[-1] > 3:
                break
            await asyncio.sleep(0.2)
        common.say(f"  probed {time.monotonic() - killed:.1f} s after the kill")
        stop.set()
        await task
        leader.server.start()
        nc = await nats.connect(cluster.urls.split(","))
        try:
            info = await nc.jetstream().stream_info(f"{name}_events")
            stored = info.state.messages
        finally:
            await nc.close()
    finally:
        for relay in relays:
            await relay.stop()
    gap = failures[-1] - failures[0] if failures else 0.0
    return Failover(gap, len(failures), len(acked), max(0, len(acked) - stored))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def window_memory(cluster: Cluster, ids: int) -> Memory:
    """The servers' RSS (all three, summed: an R1 stream lives on one of them) before and
    after `ids` messages with distinct ids inside a 1 h window. An upper bound: it counts
    the servers' cache of the messages too (16-byte payloads)."""
    nc = await nats.connect(cluster.urls.split(","))
    per_million = []
    try:
        js = nc.jetstream(timeout=10)
        for per_subject in (True, False):
            name = "m" + uuid.uuid4().hex[:8]
            await js.add_stream(api.StreamConfig(
                name=name, subjects=[f"{name}.>"], num_replicas=1, duplicate_window=3600,
                max_msgs_per_subject=1 if per_subject else -1,
                discard=api.DiscardPolicy.NEW, discard_new_per_subject=per_subject,
            ))  # fmt: skip
            before = _cluster_rss(cluster)
            pending = []
            for n in range(ids):
                subject = f"{name}.ev.{n:032x}" if per_subject else f"{name}.ev"
                pending.append(await js.publish_async(
                    subject, b"x" * 16, headers={"Nats-Msg-Id": f"{n:032x}"}
                ))  # fmt: skip
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            per_million.append((_cluster_rss(cluster) - before) * 1_000_000 / ids)
            await js.delete_stream(name)
    finally:
        await nc.close()
    return Memory(ids, per_million[0], per_million[1])


def _cluster_rss(cluster: Cluster) -> int:
    return sum(_rss(n.server.process.pid) for n in cluster.running() if n.server.process)


async def run(seconds: float = 10, connections: int = 64, ids: int = 200_000) -> Result:
    require_wrk()
    with common.workdir("relay-bench-replicated-") as work:
        script = write_script(work)
        with nats_cluster(work / "cluster") as cluster:
            common.say("replicated ingest: 2 relays, 3-node JetStream cluster, R3 …")
            replicated, scan_replicated = await replicated_ingest(
                work, cluster, seconds, connections, script
            )
            common.say(
                f"  {replicated.rps:,.0f} ev/s, non-2xx {replicated.errors}; trace read "
                f"{scan_replicated.events:,} events in {scan_replicated.seconds:.1f} s"
            )
            common.say("SQLite ingest: 1 relay, RELAY_SYNC=full …")
            sqlite, scan_sqlite = await sqlite_ingest(work, seconds, connections, script)
            common.say(
                f"  {sqlite.rps:,.0f} ev/s; trace read {scan_sqlite.events:,} events in "
                f"{scan_sqlite.seconds:.1f} s"
            )
            common.say("failover: SIGKILL of the stream leader under a probe …")
            fo = await failover(work, cluster)
            common.say(f"  gap {fo.gap:.1f} s, {fo.refused} not 2xx, {fo.missing} lost")
            common.say(f"duplicate window memory: {ids:,} ids …")
            memory = await window_memory(cluster, ids)
            common.say(f"  {common.mb(memory.per_million_subjects)} per million ids "
                       f"(one subject each), {common.mb(memory.per_million_window)} "
                       "(window alone)")  # fmt: skip
    return Result(replicated, sqlite, scan_replicated, scan_sqlite, fo, memory, connections)


def table(r: Result) -> Table:
    t = Table()
    part = "6 replicated"
    ratio = r.replicated.rps / r.sqlite.rps if r.sqlite.rps else 0.0
    t.add(part, f"durable ingest, 2 replicas on a 3-node JetStream cluster (R3), "
          f"{r.connections} conns", rate(r.replicated.rps),
          f"{ratio:.2f}x SQLite; p99 {common.ms(r.replicated.p99)}; "
          f"non-2xx {r.replicated.errors}", f"≥ {TARGET_RATE:,.0f}/s",
          check(r.replicated.rps, ">=", TARGET_RATE))  # fmt: skip
    t.add(part, "  same load, one relay on the SQLite log (RELAY_SYNC=full)",
          rate(r.sqlite.rps), f"p99 {common.ms(r.sqlite.p99)}")  # fmt: skip
    a, b = r.scan_replicated, r.scan_sqlite
    t.add(part, "relay trace of an object never posted: events read per second (the command's "
          "start included)", rate(a.rate),
          f"{a.rate / b.rate if b.rate else 0:.2f}x SQLite ({b.rate:,.0f}/s); "
          f"{a.events:,} events in {a.seconds:.1f} s, SQLite {b.events:,} in {b.seconds:.1f} s")  # fmt: skip
    f = r.failover
    t.add(part, "failover gap: SIGKILL of the stream leader's node, probe every 10 ms",
          f"{f.gap:.1f} s", f"{f.refused} answers not 2xx (503); {f.acked} acknowledged, "
          f"{f.missing} lost", f"≤ {TARGET_GAP:g} s and 0 lost",
          check(f.gap, "<=", TARGET_GAP) and f.missing == 0)  # fmt: skip
    m = r.memory
    t.add(part, "server memory per million event ids, RELAY_LOG_DEDUP=stream (window + "
          "one subject per id)", common.mb(m.per_million_subjects),
          f"RELAY_LOG_DEDUP=window (the window alone): {common.mb(m.per_million_window)}; "
          f"RSS of the 3 servers, {m.ids:,} ids, message cache included")  # fmt: skip
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--ids", type=int, default=200_000)
    args = parser.parse_args()
    result = common.run(run(args.seconds, args.connections, args.ids))
    print(table(result).markdown())


if __name__ == "__main__":
    main()
