"""The log's interface: everything ingest, delivery, the operator's tools and the metrics do
with the log, whatever keeps it.

Two implementations: `relay/queue/log.py` (SQLite in RELAY_DATA_DIR, the embedded default)
and `relay/queue/jetstream.py` (a replicated NATS JetStream stream, RELAY_LOG=nats://…).
Nothing outside relay/queue/ may depend on either: code outside it holds a `LogBackend`.

Three groups of members:
- what ingest and /readyz and /metrics read: plain attributes, cheap to read on every
  request (`pressure`, `events`, …), kept current by the backend itself;
- what delivery does: the dispatcher's reads are synchronous (it runs them on a worker
  thread: each is one short read; a backend that is a network service runs its coroutine on
  the event loop with `asyncio.run_coroutine_threadsafe`), its writes go through `settle`,
  one transaction per round, and `hold` says whether this process may deliver a sink now
  (a replicated log has several relays; one delivers each sink at a time);
- what an operator does (CLI, admin API, status page, live tail, `relay audit verify`):
  coroutines, each a whole operation, so a backend that is a network service runs it as it
  must.

Events are numbered by `seq`: increasing, never reused, with holes (a duplicate may use one
up, retention makes more; `pruned_between` tells the two apart).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

from relay.events import Event
from relay.queue.admin import (
    DeadLetter,
    DeadLetterFilter,
    QuarantineRetry,
    RetryPlan,
    Routes,
    Select,
)
from relay.queue.lifecycle import Started
from relay.queue.log import (
    AppendResult,
    Backlog,
    BacklogBound,
    CheckState,
    LogEntry,
    Missed,
    ParkedRow,
    Settlement,
    SinkState,
)
from relay.queue.stats import Orphan, SinkStats
from relay.queue.trace import Routing, Trace, TraceQuery

Progress = Callable[[int, int], None]  # (done, total), while a long operation goes on


class LeaseLost(Exception):
    """A settle (or a read of a held sink) by a relay that no longer holds the sink: another
    relay took it over. The dispatcher forgets what it had in memory and waits to hold the
    sink again (relay/delivery/dispatcher.py)."""


class LogUnavailable(Exception):
    """The replicated log did not answer in time (no leader, no quorum, servers
    unreachable): ingest answers 503 + Retry-After; at start, the relay exits saying so."""


class EventTooLarge(Exception):
    """An event bigger than the log can store in one message (the NATS servers'
    max_payload): ingest answers 413, as for a body over RELAY_MAX_BODY."""


class LogBackend(Protocol):
    # -- read on every request: kept current by the backend ------------------------------------
    events: int  # events in the log
    bytes: int  # bytes the log takes
    free_disk: int  # bytes free where it keeps them (0: not known)
    pressure_detail: str  # the operator's version of `pressure`
    blocked_by: tuple[str, ...]  # sinks that hold ingest
    check_state: CheckState  # the integrity check
    check_in_background: bool
    open_seconds: float  # what opening took (the integrity check, counts)
    pruned_upto: int  # every event up to this seq that nothing pinned is gone

    @property
    def pressure(self) -> str | None:
        """Why ingest must answer 503 now, or None."""
        ...

    @property
    def last_seq(self) -> int:
        """The highest seq this process knows committed."""
        ...

    # -- life cycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Create or migrate, check, start what keeps it (raise LogDamaged on damage)."""

    async def close(self) -> None: ...

    # -- ingest ----------------------------------------------------------------------------------
    async def append(self, events: Sequence[Event]) -> AppendResult:
        """Durable before it returns (the 2xx depends on it); duplicates are not stored."""
        ...

    async def quarantine(
        self, source: str, reason: str, headers: str, body: builtins.bytes
    ) -> int: ...

    # -- delivery --------------------------------------------------------------------------------
    def set_sinks(
        self, names: Sequence[str], bounds: Mapping[str, BacklogBound] | None = None
    ) -> None:
        """The configured sinks (they hold retention) and the bounds of those that hold
        ingest while over them."""

    async def init_cursors(self, sinks: Sequence[str] | Mapping[str, str | float]) -> Started:
        """Place each configured sink's cursor where its START says; orphan the others."""
        ...

    def listener(self) -> asyncio.Event:
        """An event set after every commit that appended events."""
        ...

    def cursor(self, sink: str) -> int: ...

    def parked(self, sink: str) -> list[ParkedRow]: ...

    def missed(self, sink: str) -> list[Missed]: ...

    def entries_after(self, seq: int, limit: int) -> list[LogEntry]: ...

    def entries_before(self, seq: int, limit: int) -> list[LogEntry]:
        """The last `limit` events up to `seq`, newest first."""
        ...

    def entries(self, seqs: Sequence[int]) -> list[LogEntry]: ...

    def entries_between(self, after: int, upto: int) -> list[LogEntry]: ...

    def redeliveries(self, sink: str, limit: int) -> list[tuple[LogEntry, str | None]]:
        """Queued again for `sink` (dead letters retried, replays; not parked ones), each
        with the newest order token of its object the sink had when it was queued."""
        ...

    def retry_state(self, sink: str, seq: int) -> tuple[int, float, float, str] | None: ...

    def sink_state(self, sink: str) -> SinkState: ...

    async def set_paused(self, sink: str, reason: str | None) -> None:
        """Pause `sink` (why: `operator`, `pause_after`) or, with None, resume it; kept
        across restarts."""

    async def set_failing_since(self, sink: str, at: float | None) -> None:
        """The first failure since the sink's last delivery (None: it delivers)."""

    def retry_states(self, sink: str, seqs: Sequence[int]) -> dict[int, tuple[int, float]]: ...

    def first_seq_received(self, after: int, since: float) -> int | None: ...

    def backlog(self, cursor: int, oldest: float | None) -> Backlog: ...

    def pruned_between(self, after: int, before: int) -> Missed | None: ...

    async def settle(self, s: Settlement) -> None:
        """Write what a round did, in one transaction. A backend with several relays
        refuses (raises) the settle of one that no longer holds the sink."""

    def settle_nowait(self, s: Settlement) -> asyncio.Future[None]: ...

    async def hold(self, sink: str) -> bool:
        """Whether this process may deliver `sink` now (taking it if nobody does). The
        embedded log: always (the data dir's lock made this the only relay)."""
        ...

    # -- the operator ------------------------------------------------------------------------------
    async def sink_stats(self, sinks: Sequence[str]) -> list[SinkStats]: ...

    async def dead_letter_counts(self) -> dict[str, int]: ...

    async def quarantine_count(self) -> int: ...

    async def orphans(self) -> list[Orphan]: ...

    async def forget(self, sink: str) -> dict[str, int]:
        """Remove what the log keeps for a sink no longer configured; rows removed by kind."""
        ...

    async def dead_letters(
        self, which: DeadLetterFilter | None = None, limit: int = -1
    ) -> list[DeadLetter]: ...

    async def dead_letter(self, dlq_id: int) -> dict[str, Any]:
        """One dead letter with its event (raise admin.NotFound)."""
        ...

    async def plan_dead_letter_retry(
        self, which: DeadLetterFilter | None, to: str | None = None
    ) -> RetryPlan: ...

    async def retry_dead_letters(
        self,
        which: DeadLetterFilter | None,
        to: str | None = None,
        routes: Routes | None = None,
        progress: Progress | None = None,
    ) -> int: ...

    async def purge_dead_letters(self, which: DeadLetterFilter | None) -> int: ...

    async def quarantined(self, limit: int) -> list[tuple[int, float, str, str, int]]:
        """(id, received_at, source, reason, body size), oldest first."""
        ...

    async def quarantined_body(self, qid: int) -> dict[str, Any]:
        """One quarantined body with its headers (raise admin.NotFound)."""
        ...

    async def retry_quarantine(
        self, qid: int | None, select: Select | None = None
    ) -> list[QuarantineRetry]:
        """Parse kept bodies again (one, or all); those that now parse become events (those
        `select` keeps, as ingest's RELAY_INGEST_EVENTS would) and leave quarantine."""
        ...

    async def replay(
        self,
        sink: str,
        since: float,
        until: float,
        bucket: str | None,
        prefix: str | None,
        accept: Callable[[LogEntry], bool],
        progress: Progress | None = None,
    ) -> tuple[int, int]:
        """Queue the events of [since, until) that pass the filters and `accept` for
        redelivery to `sink`: (selected, queued)."""
        ...

    async def page(self, after: int, limit: int) -> list[LogEntry]:
        """The live tail's next page."""
        ...

    def received_between(self, since: float, until: float) -> AsyncIterator[LogEntry]:
        """The events received in [since, until), in seq order (`relay audit verify`)."""
        ...

    async def pending_seqs(self, sink: str) -> set[int]:
        """The seqs `sink` is still to be handed outside its cursor's order (queued again,
        parked)."""
        ...

    async def trace(self, query: TraceQuery, routing: Routing) -> Trace:
        """Where the events `query` names are, per sink of `routing` (relay/queue/trace.py):
        delivered, waiting, parked, retrying, dead-lettered, queued again, stale, filtered
        (and by which rule condition), shed."""
        ...

    async def oldest_received(self) -> float | None:
        """When the oldest event still in the log was received."""
        ...

    async def head(self) -> int:
        """The highest seq in the log now."""
        ...
