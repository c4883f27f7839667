"""A lean webhook receiver for the benchmarks: a real aiohttp server on a free loopback port,
in the bench process, that answers 200 and counts; with `stamp=True` it also records when
each event arrived (time.monotonic(), keyed by the `webhook-id` header = the event id), so
POST→arrival latency is measured on one clock. tests/support/receiver.py keeps every request
(headers and body), which is what tests need and too much for a million events."""

from __future__ import annotations

import time

from aiohttp import web


class CountingReceiver:
    def __init__(self, stamp: bool = False) -> None:
        self.stamp = stamp
        self.count = 0
        self.first_at = 0.0  # time.monotonic() of the first and the latest arrival
        self.last_at = 0.0
        self.arrivals: dict[str, float] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> CountingReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        if self.stamp:
            self.arrivals.setdefault(request.headers.get("webhook-id", ""), now)
        if not self.count:
            self.first_at = now
        self.last_at = now
        self.count += 1
        return web.Response(text="ok")
