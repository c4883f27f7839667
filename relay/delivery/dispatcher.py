"""One delivery loop per sink: read, check staleness, send, plan, settle.

Each round takes, in this order: the parked objects whose retry is due, the redeliveries an
operator queued (dead letters retried, replays), then the next window past the sink's
cursor. What the sink did with the round is planned by `plan.py` (no I/O there) and written
to the log in one transaction; nothing counts as delivered until that commit. A sink never
waits for another: each has its own loop and cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_random_exponential

from relay import metrics
from relay.config import SinkConfig, SinkSpec
from relay.delivery import lanes
from relay.delivery.parked import Parked
from relay.delivery.plan import Limits, Outcome, Round, Source, backoff, plan, unfinished
from relay.delivery.stale import WINDOW, Newest, is_stale
from relay.events import lane, order_token
from relay.queue.log import Log, LogEntry, Settlement
from relay.rules import Router
from relay.sinks.base import DeliveryError, Result, Retryable, Sink, describe

log = logging.getLogger("relay.dispatch")

IDLE_POLL = 1.0  # redeliveries queued by another process (the CLI) are seen within this
QUICK_ATTEMPTS = 3  # in-process tries of a batch before the persisted schedule takes over


@dataclass(frozen=True, slots=True)
class Policy:
    batch_size: int = 100
    batch_bytes: int = 4 * 1024**2
    batch_wait: float = 0.0
    timeout: float = 10.0
    concurrency: int = 4
    max_attempts: int = 0
    max_age: float = 0.0
    backoff_max: float = 30.0
    max_parked: int = 10_000
    stale: str = "flag"  # deliver | flag | drop
    quick_attempts: int = QUICK_ATTEMPTS

    @classmethod
    def from_spec(cls, spec: SinkSpec, sink: Sink | None = None) -> Policy:
        c = spec.typed(SinkConfig)
        stale = c.stale if c.stale != "auto" else getattr(sink, "stale_default", "flag")
        return cls(
            batch_size=c.batch_size,
            batch_bytes=c.batch_bytes,
            batch_wait=c.batch_wait,
            timeout=c.timeout,
            concurrency=c.concurrency,
            max_attempts=c.max_attempts,
            max_age=c.max_age,
            backoff_max=c.backoff_max,
            max_parked=c.max_parked,
            stale=stale,
        )

    @property
    def limits(self) -> Limits:
        return Limits(self.max_attempts, self.max_age, self.backoff_max, self.max_parked)

    @property
    def batch_timeout(self) -> float:
        # A sink applies `timeout` per request; a whole batch gets a bound too, so a client
        # that hangs (known of several broker libraries) cannot stall the loop forever.
        return self.timeout * 3 + 5


@dataclass(slots=True)
class _Work:
    source: Source
    entries: list[LogEntry]  # to send
    held: list[LogEntry] = field(default_factory=list)  # their object is parked: not sent
    newer: dict[int, str | None] = field(default_factory=dict)  # redeliveries: seq → token
    scan_end: int = 0  # cursor work: the last seq examined (matched or skipped)
    full: bool = False  # it can take no more (bytes, or the whole window read): no waiting


class Dispatcher:
    def __init__(
        self,
        sink: Sink,
        log_: Log,
        router: Router,
        policy: Policy,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.log = log_
        self.router = router
        self.policy = policy
        self.redact = redact
        self.up: bool | None = None  # None until the first attempt says which
        self.cursor = 0
        self.parked = Parked()
        self.newest = Newest()
        self._loaded = False
        self._stop = asyncio.Event()
        self._wake: asyncio.Event | None = None
        # Cleared while an operator has paused the sink (admin API). In memory only: a
        # restart resumes every sink; the events wait in the log meanwhile.
        self._running = asyncio.Event()
        self._running.set()
        # The commit of the last batch's cursor advance, made while the next batch is read
        # and sent (see _settle): at most one in flight.
        self._settling: asyncio.Future[None] | None = None
        send_event = getattr(sink, "send_event", None)
        self._send_event: Callable[[LogEntry], Any] | None = send_event
        self._send_batch = getattr(sink, "send_batch", None) or getattr(sink, "send", None)

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
        await _first_of(self._running.wait(), self._stop.wait())

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
                if not self._loaded:
                    await asyncio.to_thread(self._load)
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

    def _load(self) -> None:
        """Where this sink got to, its parked objects, and the newest event it recently had
        of each object; from then on only this loop changes them."""
        self.cursor = self.log.cursor(self.name)
        self.parked.load(self.log.parked(self.name))
        for entry in reversed(self.log.entries_before(self.cursor, WINDOW)):
            if self.router.matches(self.name, entry.event):
                self.newest.delivered(lane(entry.event), order_token(entry.event))
        self._loaded = True

    async def _round(self) -> None:
        """One batch: read, send, settle. Nothing is acked unless the settle commits."""
        assert self._wake is not None
        self._wake.clear()
        work = await self._next_work()
        if work is None:
            await self._settled()
            await self._idle()
            return
        if work.source == "cursor":
            if not work.entries and not work.held:  # a window with nothing for this sink
                await self._settle(Settlement(self.name, cursor=work.scan_end), work)
                return
            if work.entries and not await self._wait_for_schedule(work.entries[0]):
                return
        if self.paused:  # paused meanwhile: nothing sent, nothing settled
            return
        sent, dropped = self._check_stale(work)
        results = await self._deliver(sent)
        failed = [e.seq for e, r in zip(sent, results) if r is not None]
        prior = await asyncio.to_thread(self.log.retry_states, self.name, failed) if failed else {}
        outcome = plan(
            Round(self.name, work.source, sent, results, work.held, dropped, work.scan_end,
                  prior, len(self.parked)),
            self.policy.limits, time.time(),
        )  # fmt: skip
        self._observe(work, outcome)
        await self._settle(outcome.settlement, work)
        self._remember(outcome)

    # -- reading ------------------------------------------------------------------------------

    async def _next_work(self) -> _Work | None:
        limit = self.policy.batch_size
        due = self.parked.due(time.time(), limit)
        if due:
            return _Work("parked", await asyncio.to_thread(self.log.entries, due))
        queued = await asyncio.to_thread(self.log.redeliveries, self.name, limit)
        if queued:
            work = _Work("redelivery", [], newer={e.seq: newer for e, newer in queued})
            for entry, _ in queued:
                held = lane(entry.event) in self.parked
                (work.held if held else work.entries).append(entry)
            return work
        if len(self.parked) >= self.policy.max_parked:
            return None  # held: parked objects first drain below MAX_PARKED
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
        work = _Work("cursor", [], scan_end=self.cursor, full=len(rows) >= self.policy.batch_size)
        size = 0
        for entry in rows:
            if not self.router.matches(self.name, entry.event):
                work.scan_end = entry.seq
                continue
            if lane(entry.event) in self.parked:
                work.held.append(entry)
                work.scan_end = entry.seq
                continue
            n = len(entry.event.record)
            if work.entries and size + n > self.policy.batch_bytes:
                work.full = True
                break
            work.entries.append(entry)
            size += n
            work.scan_end = entry.seq
        return work

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
        timeout = IDLE_POLL
        next_due = self.parked.next_due()
        if next_due is not None:
            timeout = min(timeout, max(0.0, next_due - time.time()))
        await _first_of(self._wake.wait(), self._stop.wait(), within=timeout)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))

    # -- staleness ----------------------------------------------------------------------------

    def _check_stale(self, work: _Work) -> tuple[list[LogEntry], list[LogEntry]]:
        """Mark (or, with STALE=drop, take out) the events the sink already has a newer
        event of the same object of. An earlier event of the round counts as had: it goes
        first."""
        sent: list[LogEntry] = []
        dropped: list[LogEntry] = []
        ahead: dict[tuple[str, str], str] = {}
        mode = self.policy.stale
        for entry in work.entries:
            key = lane(entry.event)
            token = order_token(entry.event)
            if is_stale(token, self.newest.get(key), ahead.get(key), work.newer.get(entry.seq)):
                metrics.EVENTS_STALE.labels(self.name, mode).inc()
                if mode == "drop":
                    dropped.append(entry)
                    continue
                entry.stale = mode == "flag"
            elif token is not None:
                ahead[key] = max(token, ahead.get(key, token))
            sent.append(entry)
        return sent, dropped

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
                self._mark_down(f"cannot start: {describe(exc)}")
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
        """Send a batch; send what failed retryably (and what must follow it) a few times
        more in-process (tenacity), then leave the rest to the persisted schedule."""
        results: list[Result] = [None] * len(batch)
        if not batch:
            return results
        todo = list(range(len(batch)))

        def unfinished_left(_: object) -> bool:
            return bool(todo)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.quick_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_result(unfinished_left),
            retry_error_callback=lambda state: None,
        )
        first = True
        async for attempt in retrying:
            with attempt:
                if not first:  # what the target acknowledged behind a failure goes again now
                    again = sum(1 for i in todo if results[i] is None)
                    if again:
                        metrics.RESENDS.labels(self.name).inc(again)
                first = False
                for i, result in zip(todo, await self._send_once([batch[i] for i in todo])):
                    results[i] = result
                todo = unfinished(batch, results)
            if self._stop.is_set():
                break
        return results

    async def _send_once(self, batch: list[LogEntry]) -> list[Result]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.policy.batch_timeout):
                if self._send_event is not None:
                    results = await lanes.send_in_lanes(
                        batch, self._send_event, self.policy.concurrency
                    )
                else:
                    assert self._send_batch is not None
                    results = await self._send_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"sink returned {len(results)} results for {len(batch)} events")
        except DeliveryError as exc:
            results = [exc] * len(batch)
        except TimeoutError:
            results = [Retryable(f"no answer within {self.policy.batch_timeout:g}s")] * len(batch)
        except Exception as exc:
            log.exception("sink raised an unclassified error", extra={"sink": self.name})
            results = [Retryable(describe(exc))] * len(batch)
        metrics.DELIVERY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return results

    # -- settling -----------------------------------------------------------------------------

    def _observe(self, work: _Work, outcome: Outcome) -> None:
        """Metrics and state-change log lines of a planned round; errors redacted first."""
        s = outcome.settlement
        s.dead = [(seq, attempts, self.redact(error)) for seq, attempts, error in s.dead]
        s.retries = [(*r[:4], self.redact(r[4])) for r in s.retries]
        m = metrics.DELIVERIES
        if outcome.delivered:
            m.labels(self.name, "delivered").inc(len(outcome.delivered))
        if outcome.dead:
            m.labels(self.name, "dead_letter").inc(len(outcome.dead))
        if outcome.failing:
            m.labels(self.name, "retry").inc(len(outcome.failing))
            metrics.RETRIES.labels(self.name).inc(len(outcome.failing))
        if outcome.resends:
            metrics.RESENDS.labels(self.name).inc(outcome.resends)
        for entry, attempts, error in outcome.dead:
            log.warning(
                "event dead-lettered",
                extra={"sink": self.name, "seq": entry.seq, "attempts": attempts,
                       "error": self.redact(error)},
            )  # fmt: skip
        if outcome.progressed:
            self._mark_up()
        elif outcome.failing and work.source != "parked":
            self._mark_down(self.redact(outcome.failing[0][3]))
        for entry, attempts, _, error in outcome.failing:
            if entry is not outcome.held_at and lane(entry.event) not in self.parked:
                log.warning(
                    "object parked: its events wait while the sink's others go on",
                    extra={"sink": self.name, "seq": entry.seq, "bucket": entry.event.bucket,
                           "key": entry.event.key, "attempts": attempts,
                           "error": self.redact(error)},
                )  # fmt: skip

    def _remember(self, outcome: Outcome) -> None:
        """The in-memory mirror of what the settle just wrote."""
        for entry in outcome.delivered:
            self.newest.delivered(lane(entry.event), order_token(entry.event))
        for seq in outcome.settlement.done:
            self.parked.remove(seq)
        for entry in outcome.parked:
            self.parked.add(entry.seq, lane(entry.event))
        for seq, _, _, next_at, _ in outcome.settlement.retries:
            self.parked.schedule(seq, next_at)

    async def _settle(self, s: Settlement, work: _Work) -> None:
        """Draining a backlog (a full batch), a plain cursor advance is committed while the
        next batch is read and sent, instead of the loop waiting for its fsync: if the relay
        stops before that commit, the batch is sent again (at-least-once allows it).
        Caught up with ingest, the wait stays: it gathers the next few events into one
        round, where rounds as fast as events arrive meant a settle commit for every few
        and slowed ingest's own commits (ack p99 at 1 000/s: 14-16 ms against 8-10 ms).
        Anything else (a retry schedule, dead letters, parked events) is waited for, since
        the next round reads it back."""
        await self._settled()
        if s.plain and work.full:
            self._settling = self.log.settle_nowait(s)
        else:
            await self.log.settle(s)
        if s.cursor is not None:
            self.cursor = max(self.cursor, s.cursor)

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


async def _first_of(*waits: Any, within: float | None = None) -> None:
    tasks = {asyncio.ensure_future(w) for w in waits}
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
