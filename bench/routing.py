"""Routing cost: `Router.matches`, which the delivery loop calls for every event and sink.

    python -m bench.routing [--events 100000] [--repeat 7]

Three rules (an event family and a suffix; a prefix and a bucket list; a size range and a
metadata pair) over three sinks, and `--events` events of mixed shapes (most match one rule
or none, as in a real log). Every event is routed to every sink; the figure is the best of
`--repeat` passes (the least disturbed by other work on the machine), in ns per call.
"""

from __future__ import annotations

import argparse
import random
import time

from relay.events import Event
from relay.rules import Router, Rule

SINKS = ("webhook:images", "kafka:docs", "redis:big")
RULES = (
    Rule("images", events=("s3:ObjectCreated:*",), suffix=".jpg", sinks=("webhook:images",)),
    Rule("docs", prefix="docs/", buckets=("invoices", "reports"), sinks=("kafka:docs",)),
    Rule("big", min_size=1 << 20, metadata=(("class", "archive"),), sinks=("redis:big",)),
)
NAMES = ("s3:ObjectCreated:Put", "s3:ObjectCreated:CompleteMultipartUpload",
         "s3:ObjectRemoved:Delete", "s3:ObjectAccessed:Get")  # fmt: skip
BUCKETS = ("invoices", "reports", "photos", "logs")
KEYS = ("docs/2026/03/x.pdf", "photos/cat.jpg", "2026/03/log.gz", "docs/a.jpg", "x.pdf")


def events(n: int, seed: int = 7) -> list[Event]:
    pick = random.Random(seed)
    made = []
    for _ in range(n):
        meta = {"class": pick.choice(("archive", "hot"))} if pick.random() < 0.3 else {}
        made.append(Event(
            source="default", dialect="minio", event_name=pick.choice(NAMES),
            bucket=pick.choice(BUCKETS), key=pick.choice(KEYS), record=b"{}",
            size=pick.choice((None, 512, 2 << 20)), metadata=meta,
        ))  # fmt: skip
    return made


def measure(router: Router, batch: list[Event], repeat: int) -> float:
    """Best seconds of one pass: every event through `matches` for every sink."""
    matches = router.matches
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for event in batch:
            for sink in SINKS:
                matches(sink, event)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    router = Router(RULES, SINKS)
    batch = events(args.events)
    routed = sum(router.matches(s, e) for e in batch for s in SINKS)
    seconds = measure(router, batch, args.repeat)
    calls = args.events * len(SINKS)
    print(f"{args.events:,} events x {len(SINKS)} sinks, {len(RULES)} rules: {routed:,} routed")
    print(f"best of {args.repeat}: {seconds * 1e3:.1f} ms, {seconds / calls * 1e9:.0f} ns per "
          f"Router.matches call")  # fmt: skip


if __name__ == "__main__":
    main()
