"""Durable ingest throughput and ack latency, against a bare-aiohttp baseline in the same run.

    python -m bench.ingest [--seconds 10] [--connections 64] [--repeat 1] [--no-pin]

Needs `wrk` (Debian package `wrk`). wrk runs on one core with one thread and the server on
the other, each request a distinct body (one record per request, as the stores send), MinIO,
RustFS and Ceph RGW shapes in rotation (bench/shapes.py). The relay runs with no sink: this
is the ingest path alone (bench.scale measures ingest while a backlog drains). The latency
percentiles (p50/p99/p99.9) are wrk's, printed by the script's done() hook.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import common, shapes
from bench.common import TOKEN, Relay, Table, check, ms, rate

TARGET_RATIO = 0.8
TARGET_RATE = 8000.0


@dataclass
class WrkResult:
    rps: float  # 2xx answers per second
    requests: int
    errors: int  # non-2xx/3xx answers
    socket_errors: int
    p50: float  # ms
    p90: float
    p99: float
    p999: float
    max: float


def write_script(directory: Path) -> Path:
    script = directory / "bodies.lua"
    script.write_text(shapes.lua_script(TOKEN))
    return script


def require_wrk() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")


async def run_wrk(url: str, seconds: float, connections: int, script: Path,
                  cpu: int | None = 0, threads: int = 1) -> WrkResult:  # fmt: skip
    """wrk, `threads` threads, `connections` keep-alive connections; pinned to `cpu` if
    possible. Run as an asyncio subprocess so an in-process receiver keeps serving."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str(script), url]  # fmt: skip
    if cpu is not None and common.can_pin():
        argv = ["taskset", "-c", str(cpu), *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out_b, err_b = await proc.communicate()
    out = out_b.decode()
    m = re.search(r"^BENCH (.*)$", out, re.MULTILINE)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}\n{err_b.decode()}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    seconds_run = f["duration_us"] / 1e6
    ok = f["requests"] - f["status_errors"]
    return WrkResult(
        rps=ok / seconds_run if seconds_run else 0.0, requests=f["requests"],
        errors=f["status_errors"],
        socket_errors=f["connect_errors"] + f["read_errors"] + f["timeouts"],
        p50=f["p50"] / 1000, p90=f["p90"] / 1000, p99=f["p99"] / 1000, p999=f["p999"] / 1000,
        max=f["max"] / 1000,
    )  # fmt: skip


def describe(name: str, r: WrkResult) -> str:
    return (f"  {name:<30} {r.rps:>9,.0f} ev/s   p50 {r.p50:6.2f} ms   p99 {r.p99:6.2f} ms   "
            f"p99.9 {r.p999:6.2f} ms   non-2xx {r.errors}")  # fmt: skip


async def measure_baseline(seconds: float, connections: int, script: Path, pin: bool,
                           server: str = "bench.baseline_server", processes: int = 1,
                           threads: int = 1) -> WrkResult:  # fmt: skip
    """`server`: the bare aiohttp baseline (in `processes` processes), or
    bench.nolog_server (the relay's ingest code with a log that keeps nothing)."""
    port = common.free_port()
    argv = [sys.executable, "-m", server, str(port)]
    if processes > 1:
        argv.append(str(processes))
    if pin and common.can_pin():
        argv = ["taskset", "-c", "1", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**common.base_env(), "RELAY_AUTH_TOKENS": TOKEN}, cwd=common.ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_http(url + "/")
        await common.quiet(f"the ingest baseline ({server})")
        await run_wrk(url, 2, connections, script, 0 if pin else None, threads)  # warm-up
        return await run_wrk(url, seconds, connections, script, 0 if pin else None, threads)
    finally:
        proc.terminate()
        await proc.wait()


async def _wait_http(url: str, timeout: float = 30.0) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.05)


async def measure_relay(work: Path, sync: str, seconds: float, connections: int, script: Path,
                        pin: bool, env: dict[str, str] | None = None,
                        run: int = 0, threads: int = 1) -> WrkResult:  # fmt: skip
    """One relay on a fresh log (`run` keeps repeated runs' logs apart)."""
    relay = Relay(work / f"data-{sync}-{run}", {"RELAY_SYNC": sync, **(env or {})},
                  cpu=1 if pin else None, log=work / f"relay-{sync}-{run}.log")  # fmt: skip
    try:
        await relay.start()
        await common.quiet(f"ingest, RELAY_SYNC={sync}")
        await run_wrk(relay.url, 2, connections, script, 0 if pin else None, threads)  # warm-up
        return await run_wrk(relay.url, seconds, connections, script, 0 if pin else None, threads)
    finally:
        await relay.stop()


@dataclass
class IngestResult:
    baseline: WrkResult
    relay: dict[str, WrkResult]  # by RELAY_SYNC
    connections: int
    seconds: float
    repeat: int = 1
    nolog: WrkResult | None = None  # the relay's ingest code, nothing stored


async def run(seconds: float = 10, connections: int = 64, pin: bool = True,
              syncs: tuple[str, ...] = ("full", "normal"), repeat: int = 1) -> IngestResult:  # fmt: skip
    """Each figure is the best of `repeat` runs (other work on the machine only slows one)."""
    require_wrk()

    def best(runs: list[WrkResult]) -> WrkResult:
        return max(runs, key=lambda r: r.rps)

    with common.workdir("relay-bench-ingest-") as work:
        script = write_script(work)
        runs = []
        for _ in range(repeat):
            runs.append(await measure_baseline(seconds, connections, script, pin))
            common.say(describe("bare aiohttp (no storage)", runs[-1]))
        baseline = best(runs)
        runs = []
        for _ in range(repeat):
            runs.append(await measure_baseline(seconds, connections, script, pin,
                                               "bench.nolog_server"))  # fmt: skip
            common.say(describe("relay code, log keeps nothing", runs[-1]))
        nolog = best(runs)
        results = {}
        for sync in syncs:
            runs = []
            for i in range(repeat):
                runs.append(await measure_relay(work, sync, seconds, connections, script, pin,
                                                run=i))  # fmt: skip
                common.say(describe(f"relay, RELAY_SYNC={sync}", runs[-1]))
            results[sync] = best(runs)
    return IngestResult(baseline, results, connections, seconds, repeat, nolog)


def table(r: IngestResult) -> Table:
    t = Table()
    b = r.baseline
    part = "1 ingest"
    t.add(part, f"bare aiohttp baseline (parse, 200), {r.connections} conns", rate(b.rps),
          f"p50 {ms(b.p50)}, p99 {ms(b.p99)}, p99.9 {ms(b.p999)}")  # fmt: skip
    if r.nolog is not None:
        n = r.nolog
        t.add(part, "  reference: the relay's ingest code, a log that keeps nothing",
              rate(n.rps), f"{n.rps / b.rps:.2f}x baseline: the ceiling before storage; "
              f"p99 {ms(n.p99)}")  # fmt: skip
    for sync, x in r.relay.items():
        ratio = x.rps / b.rps if b.rps else 0.0
        ok = check(ratio, ">=", TARGET_RATIO) and check(x.rps, ">=", TARGET_RATE)
        errors = f", {x.errors} non-2xx" if x.errors else ""
        t.add(part, f"durable ingest, RELAY_SYNC={sync}", rate(x.rps),
              f"{ratio:.2f}x baseline{errors}", f"≥ {TARGET_RATIO}x and ≥ {TARGET_RATE:,.0f}/s",
              ok)  # fmt: skip
        t.add(part, f"ack latency, RELAY_SYNC={sync} (closed loop, {r.connections} conns)",
              f"p50 {ms(x.p50)}", f"p99 {ms(x.p99)}, p99.9 {ms(x.p999)}")  # fmt: skip
    t.notes.append(
        f"ingest: wrk 1 thread x {r.connections} keep-alive connections, {r.seconds:g} s after a "
        "2 s warm-up, one record per request (MinIO, RustFS, Ceph bodies in rotation); wrk "
        "pinned to core 0 and the server to core 1; the relay has no sink configured"
        + (f"; each figure the best of {r.repeat} runs." if r.repeat > 1 else ".")
    )
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-pin", action="store_true", help="do not pin wrk and server to cores")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    args = parser.parse_args()
    result = common.run(run(args.seconds, args.connections, not args.no_pin, repeat=args.repeat))
    print(table(result).render("# ingest"))


if __name__ == "__main__":
    main()
