"""A load generator that remembers which events the relay acknowledged."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import aiohttp

from tests.support.bodies import minio_body


@dataclass
class Load:
    url: str
    token: str
    bucket: str = "load"
    acked: set[str] = field(default_factory=set)  # "bucket/key" of every 2xx
    sent: int = 0
    refused: int = 0  # connection errors and non-2xx: the sender would retry these
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self, stop: asyncio.Event, concurrency: int = 8) -> None:
        """Post distinct events until `stop` is set or the relay goes away."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session, stop) for _ in range(concurrency)))

    async def _worker(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        while not stop.is_set():
            n = next(self._numbers)
            key = f"obj-{n}"
            self.sent += 1
            try:
                async with session.post(
                    self.url, data=minio_body(self.bucket, key, n), headers=headers
                ) as response:
                    if response.status == 200:
                        self.acked.add(f"{self.bucket}/{key}")
                    else:
                        self.refused += 1
            except (aiohttp.ClientError, TimeoutError):
                self.refused += 1
                await asyncio.sleep(0.01)  # the relay is down: back off a little, like a store
