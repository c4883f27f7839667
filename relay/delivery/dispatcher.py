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
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_random_exponential

from relay import metrics
from relay.config import SinkSpec
from relay.delivery import lanes
from relay.delivery import missed as missed_events
from relay.delivery.parked import Parked
from relay.delivery.plan import Limits, Outcome, Round, backoff, plan, unfinished
from relay.delivery.ratelimit import TokenBucket
from relay.delivery.recent import RecentErrors
from relay.delivery.stale import WINDOW, Newest, is_stale
from relay.events import lane, order_token
from relay.queue.backend import LeaseLost, LogBackend
from relay.queue.log import BacklogBound, LogEntry, Missed, Settlement
from relay.rules import Router
from relay.sinks.base import DeliveryError, Result, Retryable, Sink, describe, exc_text

log = logging.getLogger("relay.dispatch")

# a sink another relay holds (the replicated log) is looked at again this often
HOLD_POLL = 0.5
IDLE_POLL = 1.0  # redeliveries queued by another process (the CLI) are seen within this
QUICK_ATTEMPTS = 3  # in-process tries of a batch before the persisted schedule takes over


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """A sink's delivery policy: its common keys (relay/config.py SinkConfig) by name."""

    batch_size: int = 100
    batch_bytes: int = 4 * 1024**2
    batch_wait: float = 0.0
    timeout: float = 10.0
    concurrency: int = 4
    max_attempts: int = 0
    max_age: float = 0.0
    backoff_max: float = 30.0
    max_parked: int = 10_000
    max_backlog: int = 0
    max_backlog_bytes: int = 0
    max_backlog_age: float = 0.0
    on_full: str = "block"  # block | shed
    start: str = "latest"  # where a new sink starts (relay/queue/lifecycle.py)
    stale: str = "flag"  # deliver | flag | drop (auto is resolved by from_spec)
    quick_attempts: int = QUICK_ATTEMPTS
    retry_schedule: tuple[float, ...] = ()
    rate_limit: float = 0.0  # events/s, 0: none
    rate_burst: int = 0
    pause_after: float = 0.0

    @classmethod
    def from_spec(cls, spec: SinkSpec, sink: Sink | None = None) -> Policy:
        # the sink's other keys (and a FORMAT it gives its own meaning) are not looked at
        policy = msgspec.convert(spec.options, cls)
        if policy.stale == "auto":
            policy = msgspec.structs.replace(policy, stale=getattr(sink, "stale_default", "flag"))
        if policy.retry_schedule:
            # The operator's schedule is followed as written: no quick in-process tries
            # before its first step, and (unless MAX_ATTEMPTS says) none after its last.
            policy = msgspec.structs.replace(
                policy,
                quick_attempts=1,
                max_attempts=policy.max_attempts or len(policy.retry_schedule) + 1,
            )
        return policy

    @property
    def bound(self) -> BacklogBound:
        return BacklogBound(
            self.max_backlog, self.max_backlog_bytes, self.max_backlog_age, self.on_full == "block"
        )

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_attempts, self.max_age, self.backoff_max, self.max_parked, self.retry_schedule
        )

    @property
    def batch_limit(self) -> int:
        """Events per round: under RATE_LIMIT no more than a burst, so a round's events
        are let through at once."""
        return min(self.batch_size, self.burst) if self.rate_limit else self.batch_size

    @property
    def burst(self) -> int:
        return self.rate_burst or max(1, math.ceil(self.rate_limit))

    @property
    def batch_timeout(self) -> float:
        # A sink applies `timeout` per request; a whole batch gets a bound too, so a client
        # that hangs (known of several broker libraries) cannot stall the loop forever.
        return self.timeout * 3 + 5


@dataclass(slots=True)
class _Work:
    """One round's events: from outside the cursor first (parked objects due, queued
    redeliveries), then past the cursor."""

    entries: list[LogEntry] = field(default_factory=list)  # to send
    redelivered: set[int] = field(default_factory=set)  # seqs from outside the cursor
    held: list[LogEntry] = field(default_factory=list)  # their object is parked: not sent
    newer: dict[int, str | None] = field(default_factory=dict)  # redeliveries: seq → token
    scan_end: int | None = None  # the last seq read past the cursor; None: none read
    full: bool = False  # it can take no more (bytes, or the whole window read): no waiting

    @property
    def fresh(self) -> list[LogEntry]:
        """The entries read past the cursor."""
        return [e for e in self.entries if e.seq not in self.redelivered]


class Dispatcher:
    def __init__(
        self,
        sink: Sink,
        log_: LogBackend,
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
        self.markers: list[Missed] = []  # relay:MissedEvents owed, oldest range first
        self._pruned_gap: Missed | None = None
        self._marker_failures = 0
        self._tell_apart = False
        self._loaded = False
        self._stop = asyncio.Event()
        self._wake: asyncio.Event | None = None
        # Cleared while the sink is paused (by an operator, or by PAUSE_AFTER); the log
        # keeps the pause across restarts, and the events wait in the log meanwhile.
        self._running = asyncio.Event()
        self._running.set()
        self.paused_reason: str | None = None
        self.failing_since: float | None = None  # the first failure since the last delivery
        self.errors = RecentErrors()  # the status page's view of what went wrong lately
        self._state_loaded = False
        self._bucket = TokenBucket(policy.rate_limit, policy.burst) if policy.rate_limit else None
        # The commit of the last batch's cursor advance, made while the next batch is read
        # and sent (see _settle): at most one in flight.
        self._settling: asyncio.Future[None] | None = None
        send_event = getattr(sink, "send_event", None)
        self._send_event: Callable[[LogEntry], Any] | None = send_event
        self._send_batch = getattr(sink, "send_batch", None) or getattr(sink, "send", None)
        self._in_waves = bool(getattr(sink, "one_per_object", False))

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            self._wake.set()  # a partial batch waiting for company (batch_wait) goes now

    @property
    def behind(self) -> int:
        """Events past the cursor, before rules (`pending` less queued redeliveries): the
        backlog the status page charts, from memory."""
        return max(0, self.log.last_seq - self.cursor) if self._loaded else 0

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def state(self) -> str:
        """up | down | starting | paused"""
        if self.paused:
            return "paused"
        return "up" if self.up else "down" if self.up is False else "starting"

    async def pause(self, reason: str = "operator") -> None:
        """Deliver nothing more after the batch in flight; events wait in the log."""
        if not self.paused:
            await self.log.set_paused(self.name, reason)
            self._paused(reason)
            log.info("sink paused", extra={"sink": self.name, "reason": reason})

    async def resume(self) -> None:
        """Deliver again; failures count towards PAUSE_AFTER afresh."""
        if self.paused:
            await self.log.set_paused(self.name, None)
            await self._delivering()
            assert self.paused_reason is not None
            metrics.SINK_PAUSED.labels(self.name, self.paused_reason).set(0)
            self.paused_reason = None
            self._running.set()
            log.info("sink resumed", extra={"sink": self.name})

    def _paused(self, reason: str) -> None:
        self.paused_reason = reason
        self._running.clear()
        metrics.SINK_PAUSED.labels(self.name, reason).set(1)

    async def _load_state(self) -> None:
        """A pause and a run of failures from before a restart."""
        if self._state_loaded:
            return
        state = await asyncio.to_thread(self.log.sink_state, self.name)
        self.failing_since = state.failing_since
        if state.paused:
            self._paused(state.paused)
            log.warning(
                "sink paused before the restart; it stays paused until an operator resumes it",
                extra={"sink": self.name, "reason": state.paused},
            )  # fmt: skip
        self._state_loaded = True

    async def _failing(self, error: str) -> None:
        """A failure with no delivery since the last: past PAUSE_AFTER of them, pause."""
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
            await self.log.set_failing_since(self.name, now)
        limit = self.policy.pause_after
        if limit and not self.paused and now - self.failing_since >= limit:
            log.error(
                "sink paused: it failed PAUSE_AFTER long without a single delivery; its "
                "events wait in the log until an operator resumes it",
                extra={"sink": self.name, "failing_since": self.failing_since,
                       "pause_after": limit, "error": self.redact(error)},
            )  # fmt: skip
            await self.pause("pause_after")

    async def _delivering(self) -> None:
        if self.failing_since is not None:
            self.failing_since = None
            await self.log.set_failing_since(self.name, None)

    async def _until_resumed(self) -> None:
        await _first_of(self._running.wait(), self._stop.wait())

    async def run(self) -> None:
        self._wake = self.log.listener()
        if not await self._start_sink():
            return
        failures = 0
        # Once started, one round runs even if a stop came meanwhile: what waits for company
        # (BATCH_WAIT) goes now rather than after the restart.
        while True:
            if self.paused and not self._stop.is_set():
                await self._until_resumed()
                continue
            try:
                if not await self.log.hold(self.name):
                    await self._not_held()
                    if self._stop.is_set():
                        break
                    continue
                if not self._loaded:
                    if not self._state_loaded:  # taken over from another relay
                        await self._load_state()
                    await asyncio.to_thread(self._load)
                if not self.paused:
                    await self._round()
                failures = 0
            except LeaseLost as exc:
                log.warning("sink taken over by another relay: this one stops delivering it",
                            extra={"sink": self.name, "error": str(exc)})  # fmt: skip
                await self._not_held()
            except Exception as exc:  # the log itself failing (disk full, I/O error)
                failures += 1
                error = f"{type(exc).__name__}: {exc}"
                log.error("dispatch round failed; trying again",
                          extra={"sink": self.name, "error": error})  # fmt: skip
                await self._sleep(backoff(failures, self.policy.backoff_max) + 0.1)
            if self._stop.is_set():
                break
        with contextlib.suppress(Exception):  # already logged by the round that saw it fail
            await self._settled()

    async def _not_held(self) -> None:
        """Another relay delivers this sink (a replicated log): forget what this one had
        in memory, and look again shortly (the lease's TTL bounds the wait for a dead one)."""
        self._loaded = self._state_loaded = False
        self._settling = None
        await self._sleep(HOLD_POLL)

    def _load(self) -> None:
        """Where this sink got to, its parked objects, the markers it is owed, and the newest
        event it recently had of each object; from then on only this loop changes them."""
        self.cursor = self.log.cursor(self.name)
        self.parked.load(self.log.parked(self.name))
        for entry in reversed(self.log.entries_before(self.cursor, WINDOW)):
            if self.router.matches(self.name, entry.event):
                self.newest.delivered(lane(entry.event), order_token(entry.event))
        self.markers = self.log.missed(self.name)
        self._loaded = True

    async def _round(self) -> None:
        """One batch: read, send, settle. Nothing is acked unless the settle commits."""
        assert self._wake is not None
        self._wake.clear()
        await self._shed()
        if self.markers:  # owed before anything that comes after them
            await self._send_marker()
            return
        work = await self._next_work()
        if work is None:
            await self._settled()
            await self._idle()
            return
        if self._pruned_gap is not None and not work.entries and not work.held:
            return  # the next round settles the gap's marker first
        if not work.entries and not work.held:  # a window with nothing for this sink
            await self._settle(Settlement(self.name, cursor=work.scan_end), work)
            return
        fresh = work.fresh
        objects = len({lane(e.event) for e in work.entries})
        # A failure of one object alone cannot tell the object's fault from the target's:
        # the next round with other objects in it is not held back by the schedule, and
        # says which (parked, or held as down).
        if self._tell_apart and objects > 1:
            self._tell_apart = False
        elif fresh and not await self._wait_for_schedule(fresh[0]):
            return
        if fresh and self.policy.on_full == "shed":
            before = self.cursor  # while it waited, the backlog may have passed its bound
            await self._shed()
            if self.cursor != before:
                return
        if self.paused:  # paused meanwhile: nothing sent, nothing settled
            return
        sent, dropped = self._check_stale(work)
        # Quick in-process retries are for a blip of the target, seen when several objects
        # fail at once on new events; objects from outside the cursor already have their
        # schedule, and one object failing alone is told apart by the next round.
        attempts = self.policy.quick_attempts if fresh and objects > 1 else 1
        results = await self._deliver(sent, attempts)
        failed = [e.seq for e, r in zip(sent, results) if r is not None]
        prior = await asyncio.to_thread(self.log.retry_states, self.name, failed) if failed else {}
        outcome = plan(
            Round(self.name, sent, results, frozenset(work.redelivered), work.held, dropped,
                  work.scan_end, prior, len(self.parked)),
            self.policy.limits, time.time(),
        )  # fmt: skip
        self._tell_apart = outcome.held_at is not None and objects == 1
        self._observe(outcome)
        await self._settle(outcome.settlement, work)
        self._remember(outcome)
        if outcome.progressed:
            await self._delivering()
        elif outcome.failing:
            await self._failing(outcome.failing[-1][3])

    # -- reading ------------------------------------------------------------------------------

    async def _next_work(self) -> _Work | None:
        limit = self.policy.batch_limit
        work = _Work()
        due = self.parked.due(time.time(), limit)
        if due:
            work.entries = await asyncio.to_thread(self.log.entries, due)
            work.redelivered.update(e.seq for e in work.entries)
        room = limit - len(work.entries)
        if room > 0:
            for entry, newer in await asyncio.to_thread(self.log.redeliveries, self.name, room):
                work.newer[entry.seq] = newer
                work.redelivered.add(entry.seq)
                held = lane(entry.event) in self.parked
                (work.held if held else work.entries).append(entry)
                room -= 1
        if room <= 0 or len(self.parked) >= self.policy.max_parked:
            # past MAX_PARKED nothing new is read until parked objects drain below it
            return work if work.entries or work.held else None
        while True:
            rows = await asyncio.to_thread(self.log.entries_after, self.cursor, room)
            if not rows:
                return work if work.entries or work.held else None
            gap = self.log.pruned_between(self.cursor, rows[0].seq)
            if gap is not None:
                # events right past the cursor that retention pruned before the sink had
                # them: owed a marker, sent before what follows them
                self._pruned_gap = gap
                return work if work.entries or work.held else _Work()
            self._select(rows, room, work)
            if work.redelivered or not self._should_wait(work):
                return work
            # A partial batch may wait `batch_wait` for company (e.g. the audit bucket's
            # object age); nothing is acked meanwhile, so nothing is only in memory. The log
            # is read again only once enough has arrived to fill the batch (by count, or by
            # bytes at the batch's average record size), not on every append.
            deadline = work.entries[0].received_at + self.policy.batch_wait
            size = sum(len(e.event.record) for e in work.entries)
            per_event = size / len(work.entries)
            seen, space = rows[-1].seq, limit - len(rows)
            assert self._wake is not None
            while not self._stop.is_set() and time.time() < deadline:
                arrived = self.log.last_seq - seen  # past the window already read
                if arrived >= space or size + arrived * per_event >= self.policy.batch_bytes:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.time()))
            work = _Work()

    def _select(self, rows: Sequence[LogEntry], room: int, work: _Work) -> None:
        """Add to `work` the rows past the cursor that are for this sink."""
        work.scan_end = self.cursor
        work.full = len(rows) >= room
        size = sum(len(e.event.record) for e in work.entries)
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

    def _should_wait(self, work: _Work) -> bool:
        p = self.policy
        return (
            p.batch_wait > 0
            and 0 < len(work.entries) < p.batch_limit
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

    # -- missed events ------------------------------------------------------------------------

    async def _shed(self) -> None:
        """Past a MAX_BACKLOG* bound with ON_FULL=shed, let the oldest undelivered events go:
        the cursor moves past them (they no longer hold retention) and a marker is owed. A
        range retention pruned before the sink had it is owed a marker too."""
        gap, self._pruned_gap = self._pruned_gap, None
        bound = self.policy.bound
        cut, reason = self.cursor, ""
        if bound and not bound.block:
            cut, reason = await asyncio.to_thread(self._shed_point)
        if cut <= self.cursor and gap is None:
            return
        settlement = Settlement(self.name)
        if gap is not None:  # first; a shed, if any, comes with the next round
            settlement.cursor, settlement.missed = gap.last_seq, gap
        else:
            settlement.cursor = cut
            settlement.missed = await asyncio.to_thread(self._count_missed, cut, reason)
        await self._settled()
        await self.log.settle(settlement)
        missed = settlement.missed
        assert missed is not None
        if not self.markers:
            log.warning(
                "events missed: the sink gets a relay:MissedEvents marker for them",
                extra={"sink": self.name, "reason": missed.reason, "count": missed.count,
                       "first_seq": missed.first_seq, "last_seq": missed.last_seq},
            )  # fmt: skip
        metrics.MISSED_EVENTS.labels(self.name, missed.reason).inc(missed.count or 0)
        if settlement.cursor is not None:
            self.cursor = settlement.cursor
        self.markers = await asyncio.to_thread(self.log.missed, self.name)

    def _shed_point(self) -> tuple[int, str]:
        """The furthest cursor position a bound asks for, and which bound."""
        bound, last, cuts = self.policy.bound, self.log.last_seq, [(self.cursor, "")]
        backlog = self.log.backlog(self.cursor, None)
        if bound.events and backlog.events > bound.events:
            cuts.append((last - bound.events, "max_backlog"))
        if bound.bytes and backlog.bytes > bound.bytes:
            keep = int(bound.bytes * backlog.events / backlog.bytes)
            cuts.append((last - keep, "max_backlog_bytes"))
        if bound.age:
            young = self.log.first_seq_received(self.cursor, time.time() - bound.age)
            cuts.append(((young - 1) if young is not None else last, "max_backlog_age"))
        return max(cuts)

    def _count_missed(self, upto: int, reason: str) -> Missed:
        mine = [
            e
            for e in self.log.entries_between(self.cursor, upto)
            if self.router.matches(self.name, e.event)
        ]
        return Missed(
            self.cursor + 1, upto, len(mine),
            mine[0].received_at if mine else None, mine[-1].received_at if mine else None,
            reason,
        )  # fmt: skip

    async def _send_marker(self) -> None:
        """The oldest owed marker, alone: nothing after it goes before it is delivered."""
        marker = self.markers[0]
        (result,) = await self._deliver([missed_events.entry(self.name, marker)], 1)
        if isinstance(result, Retryable):
            self._marker_failures += 1
            self.errors.add("marker not sent", self.redact(exc_text(result)),
                            attempts=self._marker_failures)  # fmt: skip
            self._mark_down(exc_text(result))
            await self._failing(exc_text(result))
            await self._sleep(backoff(self._marker_failures, self.policy.backoff_max) + 0.05)
            return
        self._marker_failures = 0
        await self._delivering()
        if result is not None:  # refused for good: said once, not retried
            log.error(
                "relay:MissedEvents marker refused by the sink; it is not sent again",
                extra={"sink": self.name, "first_seq": marker.first_seq,
                       "last_seq": marker.last_seq, "error": self.redact(exc_text(result))},
            )  # fmt: skip
        else:
            self._mark_up()
        await self._settled()
        await self.log.settle(Settlement(self.name, markers_done=[marker.id]))
        self.markers = self.markers[1:]

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
                if mode == "flag":  # a copy: the entry is every sink's (relay/queue/window.py)
                    entry = dataclasses.replace(entry, stale=True)
            elif token is not None:
                ahead[key] = max(token, ahead.get(key, token))
            sent.append(entry)
        return sent, dropped

    # -- sending ------------------------------------------------------------------------------

    async def _start_sink(self) -> bool:
        attempts = 0
        while not self._stop.is_set():
            try:
                await self._load_state()
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
                self.errors.add("not started", self.redact(describe(exc)), attempts=attempts)
                if self._state_loaded:
                    with contextlib.suppress(Exception):  # the log failing: the round says
                        await self._failing(f"cannot start: {describe(exc)}")
                await self._sleep(backoff(attempts, self.policy.backoff_max) + 0.1)
        return False

    async def _wait_for_schedule(self, head: LogEntry) -> bool:
        """Wait for the held head's next attempt; False when the round is to be read again
        (stopping, or new events arrived that can tell one object's fault from the
        target's)."""
        state = await asyncio.to_thread(self.log.retry_state, self.name, head.seq)
        if state is None:
            return True
        delay = state[2] - time.time()
        if delay > 0:
            assert self._wake is not None
            self._wake.clear()
            waits = [self._stop.wait()] + ([self._wake.wait()] if self._tell_apart else [])
            await _first_of(*waits, within=delay)
            if self._tell_apart and self._wake.is_set():
                return False
        return not self._stop.is_set()

    async def _deliver(self, batch: list[LogEntry], attempts: int) -> list[Result]:
        """Send a batch; when none of it went through, send it a few times more in-process
        (tenacity: a blip of the target), then leave the rest to the persisted schedule."""
        results: list[Result] = [None] * len(batch)
        if not batch:
            return results
        todo = list(range(len(batch)))

        def unfinished_left(_: object) -> bool:
            return bool(todo)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_result(unfinished_left),
            retry_error_callback=lambda state: None,
        )
        async for attempt in retrying:
            with attempt:
                for i, result in zip(todo, await self._send_once([batch[i] for i in todo])):
                    results[i] = result
                todo = unfinished(batch, results)
                if any(r is None for r in results):
                    # Some went through: the target is up and the failures are those
                    # objects' own. They are parked on their schedule at once rather than
                    # retried here while every other object's next round waits.
                    todo = []
            if self._stop.is_set():
                break
        return results

    async def _send_once(self, batch: list[LogEntry]) -> list[Result]:
        if self._bucket is not None:
            await self._sleep(self._bucket.take(len(batch)))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.policy.batch_timeout):
                if self._send_event is not None:
                    results = await lanes.send_in_lanes(
                        batch, self._send_event, self.policy.concurrency
                    )
                elif self._in_waves:
                    assert self._send_batch is not None
                    results = await lanes.send_in_waves(batch, self._send_batch)
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

    def _observe(self, outcome: Outcome) -> None:
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
            self.errors.add("dead-lettered", self.redact(error), entry.seq,
                            entry.event.bucket, entry.event.key, attempts)  # fmt: skip
            log.warning(
                "event dead-lettered",
                extra={"sink": self.name, "seq": entry.seq, "attempts": attempts,
                       "error": self.redact(error)},
            )  # fmt: skip
        if outcome.progressed:
            self._mark_up()
        elif outcome.held_at is not None:  # nothing went through: the target is down
            self._mark_down(outcome.failing[-1][3])
        for entry, attempts, _, error in outcome.failing:
            self.errors.add("retrying", self.redact(error), entry.seq, entry.event.bucket,
                            entry.event.key, attempts)  # fmt: skip
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
        """`error` may be a start error or a health detail straight from the sink: it is
        redacted here, like every error the dispatcher logs."""
        if self.up is not False:
            self.up = False
            metrics.SINK_UP.labels(self.name).set(0)
            log.warning("sink down", extra={"sink": self.name, "error": self.redact(error)})


async def _first_of(*waits: Any, within: float | None = None) -> None:
    tasks = {asyncio.ensure_future(w) for w in waits}
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
