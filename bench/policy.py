"""How closely a sink's delivery policy is kept, measured at a real receiver.

    python -m bench.policy [--events 5000] [--rate 200] [--schedule 1s,2s,4s,8s]

- RATE_LIMIT: a webhook sink paused (admin API) while `--events` are ingested, then resumed;
  the receiver times the drain from the first arrival to the last. Printed against the limit
  and against the same drain without a limit (the baseline, same run): the limit, not the
  relay, is what paces it.
- RETRY_SCHEDULE: a webhook whose receiver answers 503 to everything; the gaps between the
  attempts it sees, against each step of the schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import common, shapes
from bench.common import Relay, Table, check, rate
from relay.config import parse_durations

ADMIN = "bench-admin-token"
SINK = "webhook:p"
TOLERANCE = 0.10  # the issue's ±10 %


class StampingReceiver:
    """Answers `status`, and records when every request arrived (time.monotonic())."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.stamps: list[float] = []
        self.arrived = asyncio.Condition()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> StampingReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        async with self.arrived:
            self.stamps.append(time.monotonic())
            self.arrived.notify_all()
        return web.Response(status=self.status)

    async def wait_for(self, count: int, within: float) -> list[float]:
        """The stamps once `count` requests arrived, or as many as did `within` seconds."""
        async with self.arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.arrived.wait_for(lambda: len(self.stamps) >= count), within
                )
        return self.stamps


def sink_env(url: str, **keys: str) -> dict[str, str]:
    return {
        "RELAY_ADMIN_TOKENS": ADMIN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_P": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_P": url,
        **{f"RUSTFS_NOTIFY_WEBHOOK_{k}_P": v for k, v in keys.items()},
    }


async def admin(session: aiohttp.ClientSession, relay: Relay, action: str) -> None:
    url = f"{relay.url}/admin/api/sinks/{SINK}/{action}"
    async with session.post(url, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        response.raise_for_status()


async def ingest(session: aiohttp.ClientSession, relay: Relay, events: int, tag: str) -> None:
    headers = {"Authorization": f"Bearer {common.TOKEN}"}
    semaphore = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        path, body = shapes.body(n, tag)
        async with semaphore, session.post(relay.url + path, data=body, headers=headers) as r:
            r.raise_for_status()

    await asyncio.gather(*(one(n) for n in range(events)))


async def drain(base: Path, events: int, limit: float | None) -> tuple[float, float]:
    """Events/s at the receiver of a backlog of `events`: first arrival to last, and past
    the first burst (RATE_BURST defaults to one second's worth, let through at once)."""
    receiver = await StampingReceiver().start()
    keys = {"RATE_LIMIT": f"{limit:g}"} if limit else {}
    relay = Relay(base / f"data-{limit or 'none'}", sink_env(receiver.url, **keys))
    try:
        await relay.start()
        async with aiohttp.ClientSession() as session:
            await admin(session, relay, "pause")
            await ingest(session, relay, events, common.tag())
            await admin(session, relay, "resume")
            stamps = await receiver.wait_for(events, events / (limit or 1000) * 3 + 60)
        if len(stamps) < events:
            raise RuntimeError(f"only {len(stamps)} of {events} arrived:\n{relay.tail()}")
        burst = int(limit or 0)
        whole = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        return whole, (len(stamps) - 1 - burst) / (stamps[-1] - stamps[burst])
    finally:
        await relay.stop()
        await receiver.stop()


async def schedule_gaps(base: Path, steps: tuple[float, ...], text: str) -> list[float]:
    receiver = await StampingReceiver(status=503).start()
    relay = Relay(base / "data-schedule", sink_env(receiver.url, RETRY_SCHEDULE=text))
    try:
        await relay.start()
        async with aiohttp.ClientSession() as session:
            await ingest(session, relay, 1, common.tag())
        stamps = await receiver.wait_for(len(steps) + 1, sum(steps) + 30)
        return [b - a for a, b in itertools.pairwise(stamps)]
    finally:
        await relay.stop()
        await receiver.stop()


async def run(events: int, limit: float, schedule: str) -> Table:
    steps = parse_durations(schedule)
    t = Table()
    part = "policy"
    with common.workdir() as base:
        await common.quiet("policy")
        free, _ = await drain(base, events, None)
        whole, limited = await drain(base, events, limit)
        gaps = await schedule_gaps(base, steps, schedule)
    off = abs(limited / limit - 1)
    t.add(part, f"{events:,} queued → webhook, RATE_LIMIT={limit:g}, past the first burst",
          rate(limited), f"{limited / limit:.3f}x the limit; {rate(whole)} first arrival to "
          f"last, burst included; unlimited baseline {rate(free)} ({limited / free:.3f}x)",
          f"within ±{TOLERANCE:.0%} of {limit:g}/s", off <= TOLERANCE)  # fmt: skip
    for n, step in enumerate(steps):
        gap = gaps[n] if n < len(gaps) else float("nan")
        t.add(part, f"RETRY_SCHEDULE={schedule}: wait before attempt {n + 2}",
              f"{gap:.3f} s", f"{gap / step:.3f}x the step of {step:g} s",
              f"within ±{TOLERANCE:.0%}", check(abs(gap / step - 1), "<=", TOLERANCE))  # fmt: skip
    t.notes.append(
        f"policy: one relay per figure, a webhook sink at its defaults otherwise (BATCH_SIZE "
        f"100, CONCURRENCY 4); the backlog was ingested while the sink was paused; "
        f"{len(gaps)} attempts after the first seen for the schedule (then dead-lettered)."
    )
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--schedule", default="1s,2s,4s,8s")
    args = parser.parse_args()
    table = common.run(run(args.events, args.rate, args.schedule))
    print(table.render("# delivery policy: RATE_LIMIT and RETRY_SCHEDULE"))


if __name__ == "__main__":
    main()
