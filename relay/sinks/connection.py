"""A sink's connection to its target, made on first use and made again once it broke.

Every client library breaks differently (aiokafka's producer stops sending after some
errors, redis-py's async pool can keep dead connections checked out after an outage,
nats-py gives up reconnecting unless told not to), but what a sink does about it is the
same, and is here:
- `get()` opens a client when there is none, bounded by the sink's timeout; a failure is a
  `Retryable` for the whole batch ("cannot connect to …"). A library that keeps retrying
  inside its own connect (nats-py) learns why only through a callback: `reason` returns it,
  so an open that ran out of time says why instead of "no answer";
- after a failed open, the next one waits out a backoff (exponential with full jitter,
  tenacity's, never shorter than `least_wait`: a sink's own reconnect interval), so a
  target that is down is not dialled by every batch; while waiting, `get()` fails at once
  with the last error;
- `drop(reason)` throws a broken client away: it is closed in the background, bounded by
  the timeout, never awaited by a send (several libraries hang closing while their target
  is down: aiokafka#1101); `discard(client)` does the same for a client an `open_` made
  before it failed;
- `close()` closes the client at shutdown, bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, NoReturn, TypeVar

from tenacity import RetryCallState, wait_random_exponential

from relay.sinks.base import DeliveryError, Retryable, describe

log = logging.getLogger("relay.sinks")

T = TypeVar("T")
_WAIT = wait_random_exponential(multiplier=0.5, max=30.0)


class Connection(Generic[T]):
    def __init__(
        self,
        sink: str,
        where: str,
        open_: Callable[[], Awaitable[T]],
        close: Callable[[T], Awaitable[object]],
        timeout: float,
        least_wait: float = 0.0,
        reason: Callable[[], str] | None = None,
    ) -> None:
        self.sink = sink
        self.where = where  # what to name in errors: "kafka at h1:9092" (no secrets)
        self._open = open_
        self._close = close
        self.timeout = timeout
        self.least_wait = least_wait
        self._reason = reason
        self.client: T | None = None
        self.opened = 0  # clients made so far
        self.dropped = 0  # clients thrown away as broken
        self._failures = 0
        self._not_before = 0.0
        self._last_error = ""
        self._closing: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def get(self, broken: Callable[[T], bool] | None = None) -> T:
        """The client, opened if need be. `broken` tells a client that was lost since its
        last use (a closed channel, a session whose keep-alive expired): it is dropped and
        a new one opened at once."""
        client = self.client
        if client is not None and broken is not None and broken(client):
            self.drop("connection lost", client=client)
            client = None
        if client is not None:
            return client
        async with self._lock:  # lanes of one batch share one open
            if self.client is not None:
                return self.client
            wait = self._not_before - time.monotonic()
            if wait > 0:
                raise Retryable(f"{self._last_error} (next attempt in {wait:.1f}s)")
            try:
                async with asyncio.timeout(self.timeout):
                    client = await self._open()
            except TimeoutError:
                why = (self._reason() if self._reason else "") or (
                    f"no answer within {self.timeout:g}s"
                )
                self._failed(f"cannot connect to {self.where}: {why}")
            except DeliveryError as exc:
                self._failed(str(exc), exc)
            except Exception as exc:
                self._failed(f"cannot connect to {self.where}: {describe(exc)}")
            self._failures = 0
            self._not_before = 0.0
            self.opened += 1
            self.client = client
            return client

    def _failed(self, error: str, exc: DeliveryError | None = None) -> NoReturn:
        self._failures += 1
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = self._failures
        self._not_before = time.monotonic() + max(self.least_wait, _WAIT(state))
        self._last_error = error
        raise exc if exc is not None else Retryable(error)

    def drop(self, reason: str | None = None, *, client: T | None = None) -> None:
        """Throw the client away (it broke); the next `get()` opens a new one. With
        `client`, only if it is still the current one: of several lanes that saw it break,
        the first drops it, and the others leave the new one alone."""
        if client is not None and self.client is not client:
            return
        client, self.client = self.client, None
        if client is None:
            return
        self.dropped += 1
        if reason:
            log.warning("connection dropped; the next batch opens a new one",
                        extra={"sink": self.sink, "reason": reason})  # fmt: skip
        self.discard(client)

    def discard(self, client: T) -> None:
        """Close a client in the background, bounded, without it ever being used: what an
        `open_` that failed half-way (connected, then refused) does with what it made."""
        task = asyncio.get_running_loop().create_task(self._close_quietly(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_quietly(self, client: T) -> None:
        try:
            await asyncio.wait_for(self._close(client), self.timeout)
        except Exception as exc:
            log.debug("a dropped connection did not close cleanly",
                      extra={"sink": self.sink, "error": describe(exc)})  # fmt: skip

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await self._close_quietly(client)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.timeout)
