"""Crash loop: events flow while the relay is killed with SIGKILL at random points and
restarted. Every event answered 2xx must reach the sink; duplicates are counted (the
delivery guarantee is at-least-once) but none may be lost.

CRASH_CYCLES sets the number of cycles (200 in CI; bench/crash_loop.py runs longer)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.support.load import Load
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults
TOKEN = "crash-token"


async def crash_loop(receiver: Receiver, relay: RelayProcess, cycles: int) -> dict[str, int]:
    load = Load(relay.url + "/crash", TOKEN)
    started = time.monotonic()
    rng = random.Random(os.environ.get("CRASH_SEED", "7"))
    for _ in range(cycles):
        await relay.start()
        stop = asyncio.Event()
        generator = asyncio.create_task(load.run(stop, concurrency=8))
        await asyncio.sleep(rng.uniform(0.05, 0.4))  # a random point in the stream
        relay.kill()
        stop.set()
        await generator
    await relay.start()
    await eventually(
        lambda: load.acked <= {r.json()["Key"] for r in receiver.received}, timeout=120
    )
    keys = Counter(r.json()["Key"] for r in receiver.received)
    counts = {
        "cycles": cycles,
        "acknowledged": len(load.acked),
        "delivered": len(keys),
        "lost": len(load.acked - set(keys)),
        "duplicates": sum(n - 1 for n in keys.values()),
        "seconds": round(time.monotonic() - started),
    }
    print("crash loop: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


async def test_crash_loop_loses_no_acknowledged_event(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    cycles = int(os.environ.get("CRASH_CYCLES", "200"))
    relay = relay_factory(
        {
            "RELAY_AUTH_TOKENS": TOKEN,
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_SINK": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_SINK": receiver.url,
            "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_SINK": "200ms",
        }
    )
    counts = await crash_loop(receiver, relay, cycles)
    assert counts["acknowledged"] > cycles  # the load really flowed
    assert counts["lost"] == 0
