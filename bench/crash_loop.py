"""The crash loop of tests/faults, run for longer: `python -m bench.crash_loop --cycles 2000`.

Events flow while the relay is killed with SIGKILL at random points and restarted; prints
events acknowledged, delivered, lost (must be 0) and duplicates."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.faults.test_crash_loop import TOKEN, crash_loop
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess


async def main(cycles: int) -> None:
    receiver = await Receiver().start()
    relay = RelayProcess(
        Path(tempfile.mkdtemp(prefix="relay-crash-")),
        {
            "RELAY_AUTH_TOKENS": TOKEN,
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_SINK": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_SINK": receiver.url,
            "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_SINK": "200ms",
        },
    )
    try:
        counts = await crash_loop(receiver, relay, cycles)
    finally:
        relay.kill()
        await receiver.stop()
    if counts["lost"]:
        raise SystemExit(f"LOST {counts['lost']} acknowledged events")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=2000)
    asyncio.run(main(parser.parse_args().cycles))
