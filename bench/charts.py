"""What the status page's charts cost the relay: one sample (relay/series.py), the rings'
memory, and the answers of GET /admin/api/series.

    python -m bench.charts [--sinks 4,100] [--repeat 7]

A sample reads the counters and appends to the rings; its time is printed against the
sampling interval it happens once in (the share of one core it takes). The memory is
tracemalloc's count of a sampler with full rings; the answers are measured as JSON, the
whole hour (the page's first request) and what is new since the last sample (every later
one).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import msgspec

from relay.series import POINTS, Sampler

INTERVAL = 10.0  # RELAY_ADMIN_SAMPLE_INTERVAL's default


def sampler(sinks: int) -> tuple[Sampler, list[int]]:
    names = [f"webhook:s{i}" for i in range(sinks)]
    count = [0]
    delivered = {n: 0.0 for n in names}
    behind = {n: 0 for n in names}

    def last_seq() -> int:
        count[0] += 1234
        for n in names:
            delivered[n] += 1000.0
            behind[n] = count[0] % 5000
        return count[0]

    clock = [0.0]

    def tick() -> float:
        clock[0] += INTERVAL
        return clock[0]

    s = Sampler(names, last_seq, lambda: delivered, lambda: behind, INTERVAL, clock=tick,
                wall=lambda: 1.7e9 + clock[0])  # fmt: skip
    return s, count


def measure(sinks: int, repeat: int) -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    s, _ = sampler(sinks)
    for _ in range(POINTS + 1):
        s.sample()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(1000):
            s.sample()
        best = min(best, (time.perf_counter() - started) / 1000)
    whole = msgspec.json.encode(s.series())
    last = s.series().at[-2]
    new = msgspec.json.encode(s.series(after=last))
    started = time.perf_counter()
    for _ in range(100):
        msgspec.json.encode(s.series())
    answer = (time.perf_counter() - started) / 100
    print(f"{sinks} sinks: a sample {best * 1e6:.1f} µs, {best / INTERVAL:.1e}x the "
          f"{INTERVAL:g} s interval; rings {kept / 1024:.0f} KiB for {POINTS} samples; "
          f"the hour as JSON {len(whole) / 1024:.1f} KiB built in {answer * 1e3:.2f} ms, "
          f"a later poll {len(new)} bytes")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sinks", default="4,100")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for n in (int(x) for x in args.sinks.split(",")):
        measure(n, args.repeat)


if __name__ == "__main__":
    main()
