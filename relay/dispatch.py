"""One delivery loop per sink: read past its cursor, apply its rules, send, settle.

Settling a batch is one log transaction: the cursor moves past what is done (delivered,
dead-lettered, or not for this sink); the first event that failed with a retryable error
stops the cursor and gets a persisted retry schedule, so order is kept and a restart resumes
the same backoff. Redeliveries (dead letters being retried, replays) are drained first.
A sink never waits for another: each has its own loop and cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from relay import metrics
from relay.config import SinkSpec
from relay.queue.log import Log, LogEntry, Settlement
from relay.rules import Router
from relay.sinks.base import DeliveryError, Permanent, Result, Retryable, Sink, exc_text

log = logging.getLogger("relay.dispatch")

IDLE_POLL = 1.0  # redeliveries queued by another process (the CLI) are seen within this
QUICK_ATTEMPTS = 3  # in-process tries of a batch before the persisted schedule takes over


@dataclass(frozen=True, slots=True)
class Policy:
    batch_size: int = 100
    batch_bytes: int = 4 * 1024**2
    batch_wait: float = 0.0
    timeout: float = 10.0
    max_attempts: int = 0
    max_age: float = 0.0
    backoff_max: float = 30.0
    quick_attempts: int = QUICK_ATTEMPTS

    @classmethod
    def from_spec(cls, spec: SinkSpec) -> Policy:
        return cls(
            batch_size=spec["batch_size"],
            batch_bytes=spec["batch_bytes"],
            batch_wait=spec["batch_wait"],
            timeout=spec["timeout"],
            max_attempts=spec["max_attempts"],
            max_age=spec["max_age"],
            backoff_max=spec["backoff_max"],
        )

    @property
    def batch_timeout(self) -> float:
        # A sink applies `timeout` per request; a whole batch gets a bound too, so a client
        # that hangs (known of several broker libraries) cannot stall the loop forever.
        return self.timeout * 3 + 5


def backoff(attempts: int, cap: float) -> float:
    """Exponential with full jitter: uniform in [0, min(cap, 2^(attempts-1)) s]."""
    return random.uniform(0.0, min(cap, 2.0 ** max(0, attempts - 1)))


@dataclass(slots=True)
class _Work:
    entries: list[LogEntry]
    redelivery: bool
    scan_end: int  # for cursor work: the last seq examined (matched or skipped)
    full: bool = False  # it can take no more (bytes, or the whole window read): no waiting


class Dispatcher:
    def __init__(self, sink: Sink, log_: Log, router: Router, policy: Policy) -> None:
        self.sink = sink
        self.name = sink.name
        self.log = log_
        self.router = router
        self.policy = policy
        self.up: bool | None = None  # None until the first attempt says which
        self.cursor = 0
        self._cursor_known = False
        # Events past a failed one that the sink already took (other keys' lanes): the
        # cursor cannot move past the failure, but they are not sent again. Kept in memory
        # only: after a restart they are sent once more (at-least-once).
        self._ahead: set[int] = set()
        self._stop = asyncio.Event()
        self._wake: asyncio.Event | None = None
        # Cleared while an operator has paused the sink (admin API). In memory only: a
        # restart resumes every sink; the events wait in the log meanwhile.
        self._running = asyncio.Event()
        self._running.set()
        # The commit of the last batch's cursor advance, made while the next batch is read
        # and sent (see _settle): at most one in flight.
        self._settling: asyncio.Future[None] | None = None

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            self._wake.set()  # a partial batch waiting for company (batch_wait) goes now

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Deliver nothing more after the batch in flight; events wait in the log."""
        if not self.paused:
            self._running.clear()
            log.info("sink paused", extra={"sink": self.name})

    def resume(self) -> None:
        if self.paused:
            self._running.set()
            log.info("sink resumed", extra={"sink": self.name})

    async def _until_resumed(self) -> None:
        waits = {asyncio.ensure_future(self._running.wait()),
                 asyncio.ensure_future(self._stop.wait())}  # fmt: skip
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def run(self) -> None:
        self._wake = self.log.listener()
        if not await self._start_sink():
            return
        failures = 0
        while not self._stop.is_set():
            if self.paused:
                await self._until_resumed()
                continue
            try:
                await self._round()
                failures = 0
            except Exception as exc:  # the log itself failing (disk full, I/O error)
                failures += 1
                error = f"{type(exc).__name__}: {exc}"
                log.error("dispatch round failed; trying again",
                          extra={"sink": self.name, "error": error})  # fmt: skip
                await self._sleep(backoff(failures, self.policy.backoff_max) + 0.1)
        with contextlib.suppress(Exception):  # already logged by the round that saw it fail
            await self._settled()

    async def _round(self) -> None:
        """One batch: read, send, settle. Nothing is acked unless the settle commits."""
        assert self._wake is not None
        if not self._cursor_known:  # where this sink got to; from then on only this loop moves it
            self.cursor = await asyncio.to_thread(self.log.cursor, self.name)
            self._cursor_known = True
        self._wake.clear()
        work = await self._next_work()
        if work is None:
            await self._settled()
            await self._idle()
            return
        if not work.entries:  # a window of events none of which is for this sink
            await self._settle(Settlement(self.name, cursor=work.scan_end), work)
            return
        if not await self._wait_for_schedule(work.entries[0]):
            return
        if self.paused:  # paused meanwhile: nothing sent, nothing settled
            return
        results = await self._deliver(work.entries)
        if any(results):  # failures read their retry state: off the event loop
            settlement = await asyncio.to_thread(self._settlement, work, results)
        else:
            settlement = self._settlement(work, results)
        await self._settle(settlement, work)

    # -- reading ------------------------------------------------------------------------------

    async def _next_work(self) -> _Work | None:
        limit = self.policy.batch_size
        redeliveries = await asyncio.to_thread(self.log.redeliveries, self.name, limit)
        if redeliveries:
            return _Work(redeliveries, True, 0)
        while True:
            rows = await asyncio.to_thread(self.log.entries_after, self.cursor, limit)
            if not rows:
                return None
            work = self._select(rows)
            if not self._should_wait(work):
                return work
            # A partial batch may wait `batch_wait` for company (e.g. the audit bucket's
            # object age); nothing is acked meanwhile, so nothing is only in memory. The log
            # is read again only once enough has arrived to fill the batch (by count, or by
            # bytes at the batch's average record size), not on every append.
            deadline = work.entries[0].received_at + self.policy.batch_wait
            size = sum(len(e.event.record) for e in work.entries)
            per_event = size / len(work.entries)
            seen, room = rows[-1].seq, limit - len(rows)
            assert self._wake is not None
            while not self._stop.is_set() and time.time() < deadline:
                arrived = self.log.last_seq - seen  # past the window already read
                if arrived >= room or size + arrived * per_event >= self.policy.batch_bytes:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.time()))

    def _select(self, rows: Sequence[LogEntry]) -> _Work:
        matched: list[LogEntry] = []
        size = 0
        scan_end = self.cursor
        full = len(rows) >= self.policy.batch_size
        for entry in rows:
            if entry.seq in self._ahead or not self.router.matches(self.name, entry.event):
                scan_end = entry.seq
                continue
            n = len(entry.event.record)
            if matched and size + n > self.policy.batch_bytes:
                full = True
                break
            matched.append(entry)
            size += n
            scan_end = entry.seq
        return _Work(matched, False, scan_end, full)

    def _should_wait(self, work: _Work) -> bool:
        p = self.policy
        return (
            p.batch_wait > 0
            and 0 < len(work.entries) < p.batch_size
            and not work.full
            and time.time() < work.entries[0].received_at + p.batch_wait
            and not self._stop.is_set()
        )

    async def _idle(self) -> None:
        assert self._wake is not None
        waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waits, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))

    # -- sending ------------------------------------------------------------------------------

    async def _start_sink(self) -> bool:
        attempts = 0
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self.sink.start(), self.policy.batch_timeout)
                # A started sink is not yet a reachable one (a webhook connects lazily): its
                # own probe says, so an idle healthy sink reads up and an absent target down.
                health = await asyncio.wait_for(self.sink.health(), self.policy.batch_timeout)
                if health.ok:
                    self._mark_up()
                else:
                    self._mark_down(health.detail)
                return True
            except Exception as exc:  # start failures of any kind: keep probing
                attempts += 1
                self._mark_down(f"cannot start: {_describe(exc)}")
                await self._sleep(backoff(attempts, self.policy.backoff_max) + 0.1)
        return False

    async def _wait_for_schedule(self, head: LogEntry) -> bool:
        state = await asyncio.to_thread(self.log.retry_state, self.name, head.seq)
        if state is None:
            return True
        delay = state[2] - time.time()
        if delay > 0:
            await self._sleep(delay)
        return not self._stop.is_set()

    async def _deliver(self, batch: list[LogEntry]) -> list[Result]:
        """Send a batch; retry what failed retryably a few times in-process (tenacity), then
        leave the rest to the persisted schedule."""
        results: list[Result] = [None] * len(batch)
        todo = list(range(len(batch)))

        def unfinished(_: object) -> bool:
            return bool(todo)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.quick_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_result(unfinished),
            retry_error_callback=lambda state: None,
        )
        async for attempt in retrying:
            with attempt:
                sub = [batch[i] for i in todo]
                for i, result in zip(todo, await self._send_once(sub)):
                    results[i] = result
                todo = [i for i in todo if isinstance(results[i], Retryable)]
            if self._stop.is_set():
                break
        return results

    async def _send_once(self, batch: list[LogEntry]) -> list[Result]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.policy.batch_timeout):
                results = await self.sink.send(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"sink returned {len(results)} results for {len(batch)} events")
        except DeliveryError as exc:
            results = [exc] * len(batch)
        except TimeoutError:
            results = [Retryable(f"no answer within {self.policy.batch_timeout:g}s")] * len(batch)
        except Exception as exc:
            log.exception("sink raised an unclassified error", extra={"sink": self.name})
            results = [Retryable(_describe(exc))] * len(batch)
        metrics.DELIVERY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return results

    # -- settling -----------------------------------------------------------------------------

    def _settlement(self, work: _Work, results: list[Result]) -> Settlement:
        s = Settlement(self.name)
        now = time.time()
        delivered = dead = 0
        stop_at: LogEntry | None = None
        for entry, result in zip(work.entries, results):
            if result is None:
                delivered += 1
                if work.redelivery:
                    s.delivered_redeliveries.append(entry.seq)
                continue
            state = self.log.retry_state(self.name, entry.seq)
            attempts = (state[0] if state else 0) + 1
            if isinstance(result, Permanent) or self._exhausted(entry, attempts, now):
                s.dead.append((entry.seq, attempts, exc_text(result)))
                dead += 1
                log.warning(
                    "event dead-lettered",
                    extra={"sink": self.name, "seq": entry.seq, "attempts": attempts,
                           "error": exc_text(result)},
                )  # fmt: skip
                continue
            first_at = state[1] if state else now
            next_at = now + backoff(attempts, self.policy.backoff_max)
            s.retry = (entry.seq, attempts, first_at, next_at, exc_text(result))
            stop_at = entry
            break
        if stop_at is not None and not work.redelivery:
            after = work.entries.index(stop_at) + 1
            for entry, result in zip(work.entries[after:], results[after:]):
                if result is None:
                    self._ahead.add(entry.seq)
                    delivered += 1
        if not work.redelivery:
            s.cursor = stop_at.seq - 1 if stop_at else work.scan_end
        m = metrics.DELIVERIES
        if delivered:
            m.labels(self.name, "delivered").inc(delivered)
        if dead:
            m.labels(self.name, "dead_letter").inc(dead)
        if stop_at is not None:
            m.labels(self.name, "retry").inc()
            metrics.RETRIES.labels(self.name).inc()
        if delivered or dead:
            self._mark_up()
        elif stop_at is not None and s.retry is not None:
            self._mark_down(s.retry[4])
        return s

    def _exhausted(self, entry: LogEntry, attempts: int, now: float) -> bool:
        p = self.policy
        return bool(
            (p.max_attempts and attempts >= p.max_attempts)
            or (p.max_age and now - entry.received_at >= p.max_age)
        )

    async def _settle(self, s: Settlement, work: _Work) -> None:
        """Draining a backlog (a full batch), a plain cursor advance is committed while the
        next batch is read and sent, instead of the loop waiting for its fsync: if the relay
        stops before that commit, the batch is sent again (at-least-once allows it).
        Caught up with ingest, the wait stays: it gathers the next few events into one
        round, where rounds as fast as events arrive meant a settle commit for every few
        and slowed ingest's own commits (ack p99 at 1 000/s: 14-16 ms against 8-10 ms).
        Anything else (a retry schedule, dead letters, redeliveries) is waited for, since
        the next round reads it back."""
        await self._settled()
        plain = s.cursor is not None and not (s.dead or s.delivered_redeliveries or s.retry)
        if plain and work.full:
            self._settling = self.log.settle_nowait(s)
        else:
            await self.log.settle(s)
        if s.cursor is not None:
            self.cursor = max(self.cursor, s.cursor)
            if self._ahead:
                self._ahead = {seq for seq in self._ahead if seq > self.cursor}

    async def _settled(self) -> None:
        settling, self._settling = self._settling, None
        if settling is not None:
            await settling

    # -- state --------------------------------------------------------------------------------

    def _mark_up(self) -> None:
        if self.up is not True:
            self.up = True
            metrics.SINK_UP.labels(self.name).set(1)
            log.info("sink up", extra={"sink": self.name})

    def _mark_down(self, error: str) -> None:
        if self.up is not False:
            self.up = False
            metrics.SINK_UP.labels(self.name).set(0)
            log.warning("sink down", extra={"sink": self.name, "error": error})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeliveryError):
        return exc_text(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
