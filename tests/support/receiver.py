"""A real HTTP receiver for the webhook sink's tests: an aiohttp server on a free loopback
port that records what it gets and answers what the test tells it to."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """`status` decides each answer: an int, or a function of the request count; `refuse`,
    when set, answers 500 to a request whose JSON body it returns True for (a receiver that
    fails for some objects only)."""

    status: int | Callable[[int], int] = 200
    refuse: Callable[[Any], bool] | None = None
    reject: Callable[[Any], bool] | None = None  # answered 400: a permanent failure
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    attempted_at: list[float] = field(default_factory=list)  # every request, answered or not
    port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> Receiver:
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.attempted_at.append(time.monotonic())
        body = await request.read()
        status = self.status(self.attempts) if callable(self.status) else self.status
        if self.refuse is not None and self.refuse(json.loads(body)):
            status = 500
        if self.reject is not None and self.reject(json.loads(body)):
            status = 400
        if self.delay:
            await asyncio.sleep(self.delay)
        if 200 <= status < 300:
            assert self._arrived is not None
            async with self._arrived:
                self.received.append(Received(request.path, dict(request.headers), body))
                self._arrived.notify_all()
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.received) >= count), timeout
            )
        return self.received
