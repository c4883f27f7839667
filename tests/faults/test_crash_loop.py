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


async def crash_loop(
    receiver: Receiver, relay: RelayProcess, cycles: int, workers: bool = False
) -> dict[str, int]:
    """Each cycle kills the whole relay at a random point of the stream and starts it again;
    with `workers` (RELAY_WORKERS > 1), every other cycle kills one of its worker processes
    instead, picked at random, and its supervisor starts that one again."""
    load = Load(relay.url + "/crash", TOKEN)
    started = time.monotonic()
    rng = random.Random(os.environ.get("CRASH_SEED", "7"))
    kills = {"relay": 0, "worker": 0}
    running = False
    for cycle in range(cycles):
        if not running:
            await relay.start()
            running = True
        stop = asyncio.Event()
        generator = asyncio.create_task(load.run(stop, concurrency=8))
        await asyncio.sleep(rng.uniform(0.05, 0.4))  # a random point in the stream
        pids = relay.workers()
        if workers and cycle % 2 and pids:
            relay.kill_worker(rng.choice(pids))
            kills["worker"] += 1
        else:
            relay.kill()
            kills["relay"] += 1
            running = False
        stop.set()
        await generator
    if not running:
        await relay.start()
    await eventually(
        lambda: load.acked <= {r.json()["Key"] for r in receiver.received}, timeout=120
    )
    keys = Counter(r.json()["Key"] for r in receiver.received)
    counts = {
        "cycles": cycles,
        "relay_kills": kills["relay"],
        "worker_kills": kills["worker"],
        "acknowledged": len(load.acked),
        "delivered": len(keys),
        "lost": len(load.acked - set(keys)),
        "duplicates": sum(n - 1 for n in keys.values()),
        "seconds": round(time.monotonic() - started),
    }
    print("crash loop: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_crash_loop_loses_no_acknowledged_event(
    workers: str, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    # the processes of a relay with workers are killed one at a time as well as all at once
    cycles = int(os.environ.get("CRASH_CYCLES", "200")) // (1 if workers == "1" else 2)
    relay = relay_factory(
        {
            "RELAY_AUTH_TOKENS": TOKEN,
            "RELAY_WORKERS": workers,
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_SINK": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_SINK": receiver.url,
            "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_SINK": "200ms",
        }
    )
    counts = await crash_loop(receiver, relay, cycles, workers=workers != "1")
    assert counts["acknowledged"] > cycles  # the load really flowed
    assert counts["lost"] == 0
    if workers != "1":
        assert counts["worker_kills"] > 0
        assert "worker process died; starting it again" in relay.logs()
