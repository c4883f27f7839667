"""The durable log: one writer thread that group-commits, and read-only readers.

Every write (append, cursor advance, retry schedule, dead letter, prune, checkpoint) goes
through the writer thread, which owns the only write connection. Callers hand it a command
and await a future; the writer drains whatever is waiting, runs it all in one
`BEGIN IMMEDIATE` transaction, commits (fsync with synchronous=FULL) and only then resolves
the futures, all of them in one hop back to the event loop. So an HTTP handler that awaits
`append()` answers 2xx only once its event is on disk, and the fsync cost is shared by every
request that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from relay.events import Event
from relay.queue import lifecycle, migrations
from relay.queue.fsck import LogDamaged
from relay.queue.queries import Q
from relay.queue.shared import SHARED_NAME, SharedLog
from relay.queue.window import Window

if TYPE_CHECKING:
    from relay.queue.admin import (
        DeadLetter,
        DeadLetterFilter,
        QuarantineRetry,
        RetryPlan,
        Routes,
        Select,
    )
    from relay.queue.stats import Orphan, SinkStats
    from relay.queue.trace import Routing, Trace, TraceQuery

log = logging.getLogger("relay.log")

MAX_ROWS_PER_COMMIT = 1000
REPLAY_CHUNK = 5_000  # redeliveries queued per writer transaction (a big replay)
PAGE = 1_000  # rows per read of an operator's long scan
OPERATOR_THREADS = 2
MAINTENANCE_EVERY = 1.0  # seconds between checks of disk space, WAL size and retention
PRUNE_EVERY = 10.0
PRUNE_CHUNK = 10_000
WAL_TRUNCATE_BYTES = 16 * 1024 * 1024
WAL_RESET_BYTES = 32 * 1024 * 1024  # past this, the writer finishes a checkpoint itself
CHECKPOINT_EVERY = 1.0  # seconds between the checkpointer's looks at the WAL
CHECKPOINT_BYTES = 4 * 1024 * 1024  # WAL size from which it copies pages back
MIN_SQLITE = (3, 35, 0)  # RETURNING, and the upsert syntax in queries.sql
# check="auto": the integrity check reads every page (~1.7 s per million events), so above
# this size it runs beside the relay rather than delaying its start.
CHECK_AT_START_BYTES = 256 * 1024**2
CHECK_JOIN_SECONDS = 1.0  # how long close() waits for an interrupted check

CheckState = Literal["running", "ok", "damaged"]
# Which part of the relay opened the log: `single` does everything in one process; with
# RELAY_WORKERS > 1, the `supervisor` migrates and checks it and shares its counts before
# any worker starts, `ingest` workers append and `delivery` settles and keeps the log
# (relay/queue/shared.py); `client` is an operator's command next to a running relay.
Role = Literal["single", "supervisor", "ingest", "delivery", "client"]


class LogClosed(Exception):
    pass


@dataclass(slots=True)
class LogEntry:
    """An event as it sits in the log."""

    seq: int
    received_at: float
    event: Event
    # Set by delivery for one sink: the sink already has a newer event of the object
    # (relay/delivery/stale.py); payload formats mark it.
    stale: bool = False


@dataclass(slots=True)
class AppendResult:
    accepted: int
    duplicates: int


@dataclass(slots=True)
class Settlement:
    """What one delivery round did to a sink's share of the log, written in one transaction
    (relay/delivery/plan.py decides it)."""

    sink: str
    cursor: int | None = None  # every seq <= this is done, parked or not for the sink
    done: list[int] = field(default_factory=list)  # redeliveries and parked events finished
    dead: list[tuple[int, int, str]] = field(default_factory=list)  # (seq, attempts, error)
    park: list[int] = field(default_factory=list)  # wait for an earlier event of their object
    # the schedules of failing events: (seq, attempts, first failure, next attempt, error)
    retries: list[tuple[int, int, float, float, str]] = field(default_factory=list)
    missed: Missed | None = None  # a range the sink will never get: a marker is owed
    markers_done: list[int] = field(default_factory=list)  # `missed` ids delivered

    @property
    def plain(self) -> bool:
        """Only a cursor advance: nothing a next round would read back."""
        return self.cursor is not None and not (
            self.done or self.dead or self.park or self.retries or self.missed
            or self.markers_done
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Missed:
    """Events (seqs first_seq..last_seq) a sink will never get, and why; `count` of them
    were for it (None: not known, they were pruned before they could be counted)."""

    first_seq: int
    last_seq: int
    count: int | None
    first_at: float | None
    last_at: float | None
    reason: str
    id: int = 0  # once stored


@dataclass(frozen=True, slots=True)
class SinkState:
    """What the log keeps of a sink besides its events: whether it is paused and why
    (`operator`, `pause_after`), and since when it fails without a delivery."""

    paused: str | None = None
    paused_at: float | None = None
    failing_since: float | None = None


@dataclass(frozen=True, slots=True)
class ParkedRow:
    seq: int
    bucket: str
    key: str
    attempts: int | None  # the retry schedule, for the first parked event of an object
    next_at: float | None


@dataclass(frozen=True, slots=True)
class BacklogBound:
    """How much a sink may leave undelivered (its MAX_BACKLOG* keys; 0 = no bound). A
    blocking sink over its bound makes ingest answer 503 (`pressure`); a shedding one lets
    its oldest events go, with a marker (relay/delivery)."""

    events: int = 0
    bytes: int = 0
    age: float = 0.0
    block: bool = True

    def __bool__(self) -> bool:
        return bool(self.events or self.bytes or self.age)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a sink has not yet had past its cursor. `bytes` is estimated from the log's
    average size per event: an exact sum would read every pending row."""

    events: int
    bytes: int
    oldest: float | None  # received_at of the first event past the cursor

    def over(self, bound: BacklogBound, now: float) -> str | None:
        """Which of the bound's limits it is over, or None."""
        if bound.events and self.events > bound.events:
            return f"{self.events} events > MAX_BACKLOG {bound.events}"
        if bound.bytes and self.bytes > bound.bytes:
            return f"~{self.bytes} bytes > MAX_BACKLOG_BYTES {bound.bytes}"
        if bound.age and self.oldest is not None and now - self.oldest > bound.age:
            return f"oldest {now - self.oldest:.0f}s > MAX_BACKLOG_AGE {bound.age:g}s"
        return None


@dataclass(slots=True)
class _Command:
    fn: Callable[[sqlite3.Connection], Any] | None  # run in the transaction, or:
    future: asyncio.Future[Any] | None
    weight: int = 1
    wakes: bool = False  # an append: dispatchers are woken after the commit
    rows: list[tuple[Any, ...]] | None = None  # an append: event rows, inserted together


_STOP = object()


class _Attrs(msgspec.Struct):
    """The `attrs` column: what an event has besides its scalar columns."""

    metadata: dict[str, str] = {}
    tags: dict[str, str] = {}
    objects: tuple[str, ...] = ()


_ATTRS = msgspec.json.Encoder()
_ATTRS_DECODER = msgspec.json.Decoder(_Attrs)


class Log:
    def __init__(
        self,
        path: str | Path,
        *,
        sync: str = "full",
        retention: float = 86400.0,
        max_events: int = 5_000_000,
        max_bytes: int = 8 * 1024**3,
        min_free_bytes: int = 0,
        prune_every: float = PRUNE_EVERY,
        check: str = "start",  # auto | start | background, see RELAY_LOG_CHECK
        client: bool = False,
        role: Role = "single",
    ) -> None:
        self.path = Path(path)
        self.check = check
        # An operator's command next to a running relay: no integrity check (the relay did
        # it), no pruning or checkpoints (the relay does them); its writes still go through
        # a writer thread, serialised with the relay's by SQLite's lock.
        self.role: Role = "client" if client else role
        self.client = self.role == "client"
        # Shared with the relay's other processes: the write lock, the counters, the
        # delivery process's view (relay/queue/shared.py). None in a single process.
        self._shared: SharedLog | None = None
        self.sync = sync
        self.retention = retention
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.prune_every = prune_every
        self._events = 0  # rows in `events`, kept by the writer (see the properties)
        self._bytes = 0  # bytes in use in the database file
        self._free_disk = 0
        self._pressure: str | None = None  # from the marks and the disk, see _update_pressure
        # of the integrity check; "damaged" is set once, by the background check, and holds
        self.check_state: CheckState = "running"
        self.check_in_background = False
        self.commits = 0
        self._last_seq = 0  # highest seq committed by this writer
        self._inserted = 0  # events the commit under way adds
        self._pending = (0, 0)  # (last seq, events) of the commit under way
        self.open_seconds = 0.0  # integrity check (unless in the background) and counts
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checker: threading.Thread | None = None
        self._check_conn: sqlite3.Connection | None = None
        self._check_lock = threading.Lock()  # interrupt() on a closed connection is unsafe
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: set[asyncio.Event] = set()
        self._window = Window(self.entries_between) if self.role in ("single", "delivery") else None
        self._wakes: socket.socket | None = None  # the delivery process's wake-up datagrams
        self._sinks: tuple[str, ...] = ()
        self._bounds: dict[str, BacklogBound] = {}  # blocking sinks' bounds
        self._cursors: dict[str, int] = {}  # the writer's view of each sink's cursor
        self._oldest: dict[str, float | None] = {}  # measured once per maintenance tick
        self.blocked_by: tuple[str, ...] = ()  # sinks that hold ingest (pressure)
        # every event up to this seq that nothing pinned is gone (see queries.sql log_state)
        self.pruned_upto = 0
        self.pressure_detail = ""  # the operator's version of `pressure`
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._operator_pool: ThreadPoolExecutor | None = None
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create or migrate the database and start the writer. Safe to call before the event
        loop runs; the loop is picked up on the first write. The integrity check runs here
        (LogDamaged) or, with check="background" or "auto" over CHECK_AT_START_BYTES, in a
        thread of its own whose finding sets `check_state` and, on damage, `pressure`."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old; 3.35 or newer needed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.role in ("ingest", "delivery") or (
            self.client and (self.path.parent / SHARED_NAME).exists()
        ):
            self._shared = SharedLog(self.path.parent)
        try:
            if self.role in ("single", "supervisor", "client"):  # not again in its workers
                migrations.migrate(self.path)
            self.check_in_background = self.check == "background" or (
                self.check == "auto" and self.path.stat().st_size > CHECK_AT_START_BYTES
            )
            if self.role == "ingest":  # the supervisor, or the delivery process, checks it
                self.check_in_background = False
            conn = self._connect()
            try:
                started = time.monotonic()
                if self.role in ("client", "ingest") or (
                    self.role == "delivery" and not self.check_in_background
                ):
                    # a worker's supervisor checked the log before starting any worker
                    self.check_state = "ok"
                elif self.role == "supervisor" and self.check_in_background:
                    self.check_state = "running"  # the delivery process runs it
                elif not self.check_in_background:
                    # Damage must stop us here, not surface later as a sink stuck on one
                    # event. Reads every page once: measured in the "relay listening" line.
                    problems = _quick_check(conn)
                    if problems:
                        raise sqlite3.DatabaseError("; ".join(problems))
                    self.check_state = "ok"
                if self._shared is None or self.client:
                    self.events = conn.execute(Q["log_counts"]).fetchone()[0]
                    self._last_seq = conn.execute(Q["max_seq"]).fetchone()[0]
                self._cursors = {sink: seq for sink, seq, _ in conn.execute(Q["list_cursors"])}
                self.pruned_upto = conn.execute(Q["get_pruned_upto"]).fetchone()[0]
                self._measure(conn)
                self.open_seconds = time.monotonic() - started
                if self.role == "supervisor":
                    shared = SharedLog(self.path.parent, create=True)
                    shared.set_counters(self._events, self._last_seq, self._bytes, 0)
                    shared.close()
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise LogDamaged(
                f"the log at {self.path} cannot be read ({exc}). Nothing was changed. "
                "Run `relay fsck --repair` to copy every readable event into a new log "
                "(the damaged file is kept), or set RELAY_ON_DAMAGE=set-aside to start on a "
                "new log at once."
            ) from None
        if self.role == "supervisor":
            return  # its workers open the log themselves
        self._thread = threading.Thread(target=self._run, name="relay-log-writer", daemon=True)
        self._thread.start()
        if self.role in ("single", "delivery"):
            self._checkpointer = threading.Thread(
                target=self._checkpoint, name="relay-log-checkpointer", daemon=True
            )
            self._checkpointer.start()
        if self.check_in_background:
            self._checker = threading.Thread(
                target=self._background_check, name="relay-log-check", daemon=True
            )
            self._checker.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_STOP)
        self._stopping.set()
        if self._checker is not None:
            # A check of a large log takes minutes: cut it short rather than hold up a stop.
            # Should the interrupt miss it (not yet started), the daemon thread dies with us.
            with self._check_lock:
                if self._check_conn is not None:
                    self._check_conn.interrupt()
            await asyncio.to_thread(self._checker.join, CHECK_JOIN_SECONDS)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
        if self._operator_pool is not None:
            self._operator_pool.shutdown(wait=False)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._wakes is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._wakes.fileno())
            self._wakes.close()
        if self._shared is not None:
            self._shared.close()

    @property
    def pressure(self) -> str | None:
        """Why ingest must answer 503, or None. Damage found by the background check holds
        for the rest of the process: only a repaired log may take events again. An ingest
        worker sees the marks at once, from the counters every process keeps current; the
        sinks' bounds come from the delivery process (relay/processes/board.py)."""
        if self.check_state == "damaged":
            return "log_damaged"
        return self._marks() if self.role == "ingest" else self._pressure

    @property
    def last_seq(self) -> int:
        """The highest seq committed (by any process of the relay)."""
        if self._shared is not None and not self.client:
            return self._shared.last_seq
        return self._last_seq

    @property
    def events(self) -> int:
        if self._shared is not None and not self.client:
            return self._shared.events
        return self._events

    @events.setter
    def events(self, value: int) -> None:
        self._events = value

    @property
    def bytes(self) -> int:
        if self._shared is not None and not self.client:
            return self._shared.counters()[2]
        return self._bytes

    @bytes.setter
    def bytes(self, value: int) -> None:
        self._bytes = value
        if self._shared is not None and not self.client:
            self._shared.measured(bytes_=value)

    @property
    def free_disk(self) -> int:
        if self._shared is not None and not self.client:
            return self._shared.counters()[3]
        return self._free_disk

    @free_disk.setter
    def free_disk(self, value: int) -> None:
        self._free_disk = value
        if self._shared is not None and not self.client:
            self._shared.measured(free_disk=value)

    def set_sinks(
        self, names: Sequence[str], bounds: Mapping[str, BacklogBound] | None = None
    ) -> None:
        """The sinks whose cursors hold back retention, and the bounds of those that hold
        ingest while over them."""
        self._sinks = tuple(names)
        self._bounds = {n: b for n, b in (bounds or {}).items() if b and b.block}

    def backlog(self, cursor: int, oldest: float | None) -> Backlog:
        events = max(0, self.last_seq - cursor)
        per_event = self.bytes / self.events if self.events else 0.0
        return Backlog(events, int(events * per_event), oldest if events else None)

    # -- writes -------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> AppendResult:
        now = time.time()
        rows = [event_row(e, now) for e in events]
        return await self._submit(None, len(rows), True, rows)

    async def quarantine(self, source: str, reason: str, headers: str, body: builtins.bytes) -> int:
        def insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(Q["insert_quarantine"], (time.time(), source, reason, headers, body))
            return int(cur.lastrowid or 0)

        return int(await self._submit(insert))

    async def init_cursors(
        self, sinks: Sequence[str] | Mapping[str, str | float]
    ) -> lifecycle.Started:
        """Place each configured sink's cursor (a new one where its START says; a sequence
        of names starts each at `latest`) and mark the sinks no longer configured orphaned
        (relay/queue/lifecycle.py)."""
        starts = sinks if isinstance(sinks, Mapping) else dict.fromkeys(sinks, "latest")

        def init(conn: sqlite3.Connection) -> lifecycle.Started:
            started = lifecycle.start_sinks(conn, starts, time.time())
            self._cursors = {sink: seq for sink, seq, _ in conn.execute(Q["list_cursors"])}
            return started

        started: lifecycle.Started = await self._submit(init)
        for sink in started.orphaned:
            log.warning(
                "sink in the log but no longer configured: it pins no event, and its state "
                "goes after RELAY_RETENTION (or now: relay sinks forget NAME)",
                extra={"sink": sink},
            )
        for sink in started.returned:
            log.info("sink configured again: it starts afresh where its START says",
                     extra={"sink": sink})  # fmt: skip
        return started

    async def settle(self, s: Settlement) -> None:
        await self.settle_nowait(s)

    def settle_nowait(self, s: Settlement) -> asyncio.Future[None]:
        """settle(), queued for the writer's next commit; the future says when it is done."""

        def settle(conn: sqlite3.Connection) -> None:
            _settle(conn, s)
            if s.cursor is not None:  # read by _update_pressure, after the commit
                self._cursors[s.sink] = max(s.cursor, self._cursors.get(s.sink, 0))

        return self._submit(settle)

    async def write(self, fn: Callable[[sqlite3.Connection], Any], *, wakes: bool = False) -> Any:
        """Run `fn(conn)` inside the writer's next transaction (admin operations)."""
        return await self._submit(fn, 1, wakes)

    def _submit(
        self,
        fn: Callable[[sqlite3.Connection], Any] | None,
        weight: int = 1,
        wakes: bool = False,
        rows: list[tuple[Any, ...]] | None = None,
    ) -> asyncio.Future[Any]:
        if self._closed:
            raise LogClosed("the log is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        future = self._loop.create_future()
        self._inbox.put(_Command(fn, future, weight, wakes, rows))
        return future

    # -- reads --------------------------------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (WAL readers never block the writer)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(lambda: fn(self.reader()))

    async def _operator_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """`read` on threads of the operator's own, so the admin API and the live tail never
        queue behind the dispatchers' reads (nor they behind a long scan of an operator)."""
        if self._operator_pool is None:
            self._operator_pool = ThreadPoolExecutor(
                OPERATOR_THREADS, thread_name_prefix="relay-log-operator"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._operator_pool, lambda: fn(self.reader()))

    def entries_after(self, seq: int, limit: int) -> list[LogEntry]:
        """A sink's next window; where the sinks are delivered, read through the window
        every sink shares (relay/queue/window.py)."""
        if self._window is not None:
            return self._window.after(seq, limit, self.last_seq)
        rows = self.reader().execute(Q["events_after"], (seq, limit)).fetchall()
        return [entry_from_row(r) for r in rows]

    def redeliveries(self, sink: str, limit: int) -> list[tuple[LogEntry, str | None]]:
        """Queued redeliveries (not parked ones), each with its object's `newer` token."""
        rows = self.reader().execute(Q["redeliveries_for"], (sink, limit)).fetchall()
        return [(entry_from_row(r), r[20]) for r in rows]

    def parked(self, sink: str) -> list[ParkedRow]:
        cur = self.reader().execute(Q["parked_for"], {"sink": sink})
        return [ParkedRow(*row) for row in cur]

    def entries(self, seqs: Sequence[int]) -> list[LogEntry]:
        rows = self.reader().execute(Q["entries_by_seq"], {"seqs": _json_array(seqs)})
        return [entry_from_row(r) for r in rows]

    def entries_before(self, seq: int, limit: int) -> list[LogEntry]:
        """The last `limit` events up to `seq`, newest first."""
        rows = self.reader().execute(Q["entries_before"], {"seq": seq, "limit": limit})
        return [entry_from_row(r) for r in rows]

    def missed(self, sink: str) -> list[Missed]:
        """The markers `sink` is owed, oldest range first."""
        cur = self.reader().execute(Q["missed_for"], {"sink": sink})
        return [Missed(fs, ls, n, fa, la, why, i) for i, fs, ls, n, fa, la, why in cur]

    def entries_between(self, after: int, upto: int) -> list[LogEntry]:
        rows = self.reader().execute(Q["entries_between"], {"after": after, "upto": upto})
        return [entry_from_row(r) for r in rows]

    def pruned_between(self, after: int, before: int) -> Missed | None:
        """The events of seqs after..before (exclusive) that retention pruned, as a range a
        marker can announce; None when the hole is only seqs duplicates used up."""
        upto = min(before - 1, self.pruned_upto)
        if upto <= after:
            return None
        return Missed(after + 1, upto, None, None, None, "pruned")

    def first_seq_received(self, after: int, since: float) -> int | None:
        """The first event past seq `after` received at `since` or later."""
        row = self.reader().execute(Q["first_seq_received"], {"after": after, "since": since})
        found = row.fetchone()
        return found[0] if found else None

    def cursor(self, sink: str) -> int:
        row = self.reader().execute(Q["get_cursor"], (sink,)).fetchone()
        return int(row[0]) if row else 0

    def sink_state(self, sink: str) -> SinkState:
        cursor = self.reader().cursor()
        cursor.row_factory = sqlite3.Row
        row = cursor.execute(Q["sink_state"], {"sink": sink}).fetchone()
        return SinkState(**dict(row)) if row else SinkState()

    async def set_paused(self, sink: str, reason: str | None) -> None:
        at = time.time() if reason else None
        await self.write(
            lambda c: c.execute(Q["set_paused"], {"sink": sink, "reason": reason, "at": at})
        )

    async def set_failing_since(self, sink: str, at: float | None) -> None:
        await self.write(lambda c: c.execute(Q["set_failing_since"], {"sink": sink, "at": at}))

    def retry_state(self, sink: str, seq: int) -> tuple[int, float, float, str] | None:
        return self.reader().execute(Q["get_retry"], (sink, seq)).fetchone()

    def retry_states(self, sink: str, seqs: Sequence[int]) -> dict[int, tuple[int, float]]:
        """seq → (attempts, first failure) of those with a retry schedule."""
        cur = self.reader().execute(Q["retries_by_seq"], {"sink": sink, "seqs": _json_array(seqs)})
        return {seq: (attempts, first_at) for seq, attempts, first_at in cur}

    async def hold(self, sink: str) -> bool:
        """Always: the data dir's lock made this the only relay on this log."""
        return True

    # -- the operator (relay/queue/backend.py: the SQL is in admin.py, stats.py, lifecycle.py)

    async def sink_stats(self, sinks: Sequence[str]) -> list[SinkStats]:
        from relay.queue import stats

        return list(await self._operator_read(lambda c: [stats.sink_stats(c, s) for s in sinks]))

    async def dead_letter_counts(self) -> dict[str, int]:
        from relay.queue import stats

        return dict(await self._operator_read(stats.dead_letter_counts))

    async def quarantine_count(self) -> int:
        from relay.queue import stats

        return int(await self._operator_read(stats.quarantine_count))

    async def orphans(self) -> list[Orphan]:
        from relay.queue import stats

        return list(await self._operator_read(stats.orphans))

    async def forget(self, sink: str) -> dict[str, int]:
        return dict(await self.write(lambda c: lifecycle.forget(c, sink)))

    async def dead_letters(
        self, which: DeadLetterFilter | None = None, limit: int = -1
    ) -> list[DeadLetter]:
        from relay.queue import admin

        return list(await self._operator_read(lambda c: admin.select_dead_letters(c, which, limit)))

    async def dead_letter(self, dlq_id: int) -> dict[str, Any]:
        from relay.queue import admin

        return dict(await self._operator_read(lambda c: admin.show_dead_letter(c, dlq_id)))

    async def plan_dead_letter_retry(
        self, which: DeadLetterFilter | None, to: str | None = None
    ) -> RetryPlan:
        from relay.queue import admin

        plan: RetryPlan = await self._operator_read(
            lambda c: admin.plan_dead_letter_retry(c, which, to)
        )
        return plan

    async def retry_dead_letters(
        self,
        which: DeadLetterFilter | None,
        to: str | None = None,
        routes: Routes | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """The plan and the stale tokens are read on a reader thread (the tokens read the
        log from the oldest dead letter on); only the queueing is a write."""
        from relay.queue import admin

        plan, newer = await self._operator_read(
            lambda c: admin.dead_letter_retry_reads(c, which, to, routes)
        )
        return int(
            await self.write(
                lambda c: admin.queue_dead_letter_retry_tx(c, plan, newer, progress), wakes=True
            )
        )

    async def purge_dead_letters(self, which: DeadLetterFilter | None) -> int:
        from relay.queue import admin

        return int(await self.write(lambda c: admin.purge_dead_letters_tx(c, which)))

    async def quarantined(self, limit: int) -> list[tuple[int, float, str, str, int]]:
        from relay.queue import admin

        return list(await self._operator_read(lambda c: admin.list_quarantine(c, limit)))

    async def quarantined_body(self, qid: int) -> dict[str, Any]:
        from relay.queue import admin

        return dict(await self._operator_read(lambda c: admin.show_quarantine(c, qid)))

    async def retry_quarantine(
        self, qid: int | None, select: Select | None = None
    ) -> list[QuarantineRetry]:
        """relay/queue/admin.py retry_quarantined, each body parsed again on a reader
        thread."""
        from relay.queue import admin

        async def reparse(item: int) -> list[Event] | admin.QuarantineRetry:
            return await self._operator_read(functools.partial(admin.reparse_quarantined, qid=item))

        async def drop(item: int) -> None:
            await self.write(functools.partial(admin.drop_quarantined_tx, qid=item))

        items = await self._operator_read(lambda c: admin.quarantine_ids(c, qid))
        return await admin.retry_quarantined(items, reparse, self.append, drop, select)

    async def replay(
        self,
        sink: str,
        since: float,
        until: float,
        bucket: str | None,
        prefix: str | None,
        accept: Callable[[LogEntry], bool],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """The selection and the stale tokens on a reader thread; the redeliveries queued
        in writer transactions of REPLAY_CHUNK events, so ingest never waits long."""
        from relay.queue import admin

        def select(c: sqlite3.Connection) -> tuple[list[int], dict[int, str | None]]:
            seqs = admin.replay_selection(c, since, until, bucket, prefix, accept, progress)
            return seqs, admin.newer_tokens(c, sink, seqs, accept)

        seqs, newer = await self._operator_read(select)
        queued = 0
        for start in range(0, len(seqs), REPLAY_CHUNK):
            chunk = seqs[start : start + REPLAY_CHUNK]
            queue = functools.partial(admin.queue_redeliveries_tx, sink=sink, seqs=chunk)
            queued += await self.write(functools.partial(queue, newer=newer), wakes=True)
        return len(seqs), queued

    async def page(self, after: int, limit: int) -> list[LogEntry]:
        return list(await self._operator_read(lambda c: [
            entry_from_row(r) for r in c.execute(Q["events_after"], (after, limit))
        ]))  # fmt: skip

    async def head(self) -> int:
        return int(await self._operator_read(lambda c: c.execute(Q["max_seq"]).fetchone()[0]))

    async def received_between(self, since: float, until: float) -> AsyncIterator[LogEntry]:
        params = {"since": since, "until": until, "after": 0, "limit": PAGE}
        while True:
            rows = await self._operator_read(
                functools.partial(_rows, "received_between", dict(params))
            )
            for row in rows:
                yield entry_from_row(row)
            if len(rows) < PAGE:
                return
            params["after"] = rows[-1][0]

    async def pending_seqs(self, sink: str) -> set[int]:
        return set(await self._operator_read(lambda c: {
            int(r[0]) for r in c.execute(Q["redelivery_seqs"], {"sink": sink})
        }))  # fmt: skip

    async def trace(self, query: TraceQuery, routing: Routing) -> Trace:
        """The rows on a reader thread of the operator's; the trace built from them here."""
        from relay.queue import trace

        rows = await self._operator_read(
            lambda c: trace.read(trace.SqliteSource(c), query, routing)
        )
        return trace.build(query, rows, routing)

    async def oldest_received(self) -> float | None:
        row = await self._operator_read(lambda c: c.execute(Q["oldest_after"], (0,)).fetchone())
        return float(row[0]) if row else None

    # -- wake-ups -----------------------------------------------------------------------------

    def listener(self) -> asyncio.Event:
        """An asyncio.Event set after every commit that appended events (in the delivery
        process: those of every ingest worker)."""
        event = asyncio.Event()
        self._listeners.add(event)
        if self.role == "delivery" and self._shared is not None and self._wakes is None:
            self._loop = self._loop or asyncio.get_running_loop()
            self._wakes = self._shared.wake_socket()
            self._loop.add_reader(self._wakes.fileno(), self._woken)
        return event

    def _woken(self) -> None:
        assert self._wakes is not None
        with contextlib.suppress(BlockingIOError):
            while self._wakes.recv(64):
                pass
        self._update_pressure()
        for event in self._listeners:
            event.set()

    def _after_commit(self, done: list[tuple[asyncio.Future[Any], Any, bool]], woke: bool) -> None:
        for future, result, failed in done:
            if future.done():
                continue
            if failed:
                future.set_exception(result)
            else:
                future.set_result(result)
        if woke:
            for event in self._listeners:
                event.set()

    # -- the writer thread --------------------------------------------------------------------

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only = 1")
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            # No checkpoint inside a COMMIT (SQLite's default at 1 000 WAL pages): it made
            # that commit, and every request waiting on it, 10-25 ms slower. The
            # checkpointer thread copies pages back beside the writer instead.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA cache_size = -16000")
        return conn

    def _run(self) -> None:
        conn = self._connect()
        last_maintenance = last_prune = time.monotonic()
        try:
            while True:
                try:
                    first = self._inbox.get(timeout=MAINTENANCE_EVERY)
                except queue.Empty:
                    first = None
                if first is _STOP:
                    break
                batch: list[_Command] = []
                stop = False
                if first is not None:
                    batch.append(first)
                    weight = first.weight
                    while weight < MAX_ROWS_PER_COMMIT:
                        try:
                            nxt = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is _STOP:
                            stop = True
                            break
                        batch.append(nxt)
                        weight += nxt.weight
                    self._commit(conn, batch)
                now = time.monotonic()
                if self.role in ("single", "delivery") and (
                    now - last_maintenance >= MAINTENANCE_EVERY
                ):
                    last_maintenance = now
                    prune = now - last_prune >= self.prune_every or self._near_mark()
                    if prune:
                        last_prune = now
                    self._maintain(conn, prune=prune, idle=first is None)
                if stop:
                    break
        except Exception:
            log.exception("the log writer stopped on an unexpected error")
            raise
        finally:
            self._fail_waiting(LogClosed("the log writer has stopped"))
            try:
                if self.role in ("single", "delivery"):  # it would wait for the readers
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            conn.close()

    def _checkpoint(self) -> None:
        """PASSIVE checkpoints from a connection of its own: they take no write lock, so
        ingest commits go on meanwhile; the WAL restarts from its beginning once a
        checkpoint has caught up (and is truncated by the writer when idle)."""
        wal = self.path.with_name(self.path.name + "-wal")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            while not self._stopping.wait(CHECKPOINT_EVERY):
                try:
                    if wal.exists() and wal.stat().st_size > CHECKPOINT_BYTES:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (OSError, sqlite3.Error) as exc:
                    log.warning("checkpoint failed", extra={"error": str(exc)})
        finally:
            conn.close()

    def _background_check(self) -> None:
        """The integrity check of open(), on a read-only connection of its own: a read
        transaction in WAL mode takes no lock from the writer, so ingest and delivery go on
        meanwhile."""
        started = time.monotonic()
        try:
            conn = self._connect(readonly=True)
        except sqlite3.Error as exc:
            self._found_damage([str(exc)])
            return
        with self._check_lock:
            self._check_conn = conn
        try:
            if self._stopping.is_set():
                return
            problems = _quick_check(conn)
        except sqlite3.DatabaseError as exc:
            if self._stopping.is_set():  # interrupted by close(): nothing was found
                return
            problems = [str(exc)]
        finally:
            with self._check_lock:
                self._check_conn = None
            conn.close()
        if problems:
            self._found_damage(problems)
        else:
            self.check_state = "ok"
            log.info("log check passed",
                     extra={"log_check_seconds": round(time.monotonic() - started, 3)})  # fmt: skip

    def _found_damage(self, problems: list[str]) -> None:
        # Not an exit: sinks keep delivering what can still be read, and the senders keep
        # (and retry) what ingest now refuses.
        self.check_state = "damaged"
        log.error(
            "log damaged: ingest answers 503 until it is repaired. Stop the relay and run "
            "`relay fsck --repair` (it copies every readable event into a new log and keeps "
            "the damaged file), or restart with RELAY_LOG_CHECK=start and "
            "RELAY_ON_DAMAGE=set-aside to start on a new log",
            extra={"path": str(self.path), "problems": problems},
        )

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        """The relay's write lock across its processes (none in a single process)."""
        return self._shared.writing() if self._shared is not None else contextlib.nullcontext()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Command]) -> None:
        done: list[tuple[asyncio.Future[Any], Any, bool]] = []
        try:
            with self._writing():
                conn.execute("BEGIN IMMEDIATE")
                appended = iter(self._insert(conn, [c for c in batch if c.rows is not None]))
                results = [next(appended) if c.fn is None else c.fn(conn) for c in batch]
                conn.execute("COMMIT")
                if self._shared is not None and self._inserted:
                    self._shared.appended(self._inserted, self._pending[0], self._bytes)
            self.commits += 1
            self._last_seq, self.events = self._pending
            if self._shared is not None and self._inserted and self.role != "delivery":
                self._shared.wake_delivery()
            done = [(c.future, r, False) for c, r in zip(batch, results) if c.future]
        except Exception as exc:
            _rollback(conn)
            if len(batch) == 1 or isinstance(exc, sqlite3.OperationalError):
                # Disk full, I/O error, lock: nothing of this batch is on disk.
                log.error("log commit failed", extra={"error": str(exc)})
                done = [(c.future, exc, True) for c in batch if c.future]
            else:
                # One command is at fault: commit the others on their own.
                for cmd in batch:
                    self._commit(conn, [cmd])
                return
        self._measure(conn)
        woke = any(c.wakes for c in batch)
        if self._loop is not None and (done or woke):
            self._loop.call_soon_threadsafe(self._after_commit, done, woke)

    def _insert(self, conn: sqlite3.Connection, appends: list[_Command]) -> list[AppendResult]:
        """Every appended row of this commit in one executemany (the per-row Python work of
        the writer thread is what limits ingest, not the fsync). Duplicates are rare: only
        when some row was ignored are the event ids that went in read back, to tell each
        request how many of its events were new."""
        self._inserted = 0
        if not appends:
            self._pending = (self._last_seq, self._events)
            return []
        rows = [row for cmd in appends for row in cmd.rows or ()]
        # read inside the transaction: another process (the CLI) may have added events
        before = conn.execute(Q["max_seq"]).fetchone()[0]
        inserted = self._inserted = conn.executemany(Q["insert_event"], rows).rowcount
        # taken over by _commit once the COMMIT went through
        self._pending = (conn.execute(Q["max_seq"]).fetchone()[0], self._events + inserted)
        if inserted == len(rows):
            return [AppendResult(len(cmd.rows or ()), 0) for cmd in appends]
        new = {r[0] for r in conn.execute(Q["event_ids_after"], (before,))}
        results = []
        for cmd in appends:
            accepted = 0
            for row in cmd.rows or ():
                if row[0] in new:
                    new.discard(row[0])  # the same event twice in one commit: once new
                    accepted += 1
            results.append(AppendResult(accepted, len(cmd.rows or ()) - accepted))
        return results

    def _fail_waiting(self, exc: Exception) -> None:
        done = []
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                break
            if cmd is not _STOP and cmd.future is not None:
                done.append((cmd.future, exc, True))
        if done and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._after_commit, done, False)

    def _measure(self, conn: sqlite3.Connection) -> None:
        page_size, pages, free = (
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_size", "page_count", "freelist_count")
        )
        self.bytes = (pages - free) * page_size
        if self.role != "ingest":  # an ingest worker answers by the delivery process's view
            self._update_pressure()

    def _marks(self) -> str | None:
        """Over RELAY_MAX_EVENTS, RELAY_MAX_BYTES or under RELAY_MIN_FREE_BYTES? From one
        reading of the levels (an ingest worker asks on every request)."""
        events, bytes_, free_disk = self._levels()
        if events >= self.max_events:
            return "log_full_events"
        if bytes_ >= self.max_bytes:
            return "log_full_bytes"
        if self.min_free_bytes and free_disk and free_disk < self.min_free_bytes:
            return "disk_low"
        return None

    def _levels(self) -> tuple[int, int, int]:
        """(events, bytes, free disk), shared by the relay's processes or this one's own."""
        if self._shared is not None and not self.client:
            events, _, bytes_, free_disk = self._shared.counters()
            return events, bytes_, free_disk
        return self._events, self._bytes, self._free_disk

    def _update_pressure(self) -> None:
        blocked: list[str] = []
        details: list[str] = []
        pressure = self._marks()
        if pressure in ("log_full_events", "log_full_bytes") and self._cursors:
            # near the mark retention keeps only what some sink has not had: the slowest
            # sink is what holds everyone
            slowest = min(self._cursors.get(n, 0) for n in self._sinks) if self._sinks else 0
            blocked = [n for n in self._sinks if self._cursors.get(n, 0) == slowest]
            details = [f"{n} is the furthest behind (cursor {slowest})" for n in blocked]
        now = time.time()
        for sink, bound in self._bounds.items():
            cursor = self._cursors.get(sink)
            if cursor is None:
                continue
            over = self.backlog(cursor, self._oldest.get(sink)).over(bound, now)
            if over:
                blocked.append(sink)
                details.append(f"{sink}: {over}")
                pressure = pressure or "sink_backlog"
        # one line per change; none once damage decides the answer
        if (pressure, tuple(blocked)) != (self._pressure, self.blocked_by) and (
            self.check_state != "damaged"
        ):
            if pressure:
                log.warning("backpressure on: ingest answers 503",
                            extra={"reason": pressure, "blocked_by": blocked,
                                   "detail": "; ".join(details), "events": self.events,
                                   "bytes": self.bytes, "free_disk": self.free_disk})  # fmt: skip
            else:
                log.info("backpressure off: ingest accepts again", extra={"events": self.events})
        self.blocked_by = tuple(blocked)
        self.pressure_detail = "; ".join(details)
        self._pressure = pressure

    def _near_mark(self) -> bool:
        return self.events >= 0.9 * self.max_events or self.bytes >= 0.9 * self.max_bytes

    def _maintain(self, conn: sqlite3.Connection, *, prune: bool, idle: bool) -> None:
        with self._writing():
            self._maintain_locked(conn, prune=prune, idle=idle)

    def _maintain_locked(self, conn: sqlite3.Connection, *, prune: bool, idle: bool) -> None:
        try:
            stat = os.statvfs(self.path.parent)
            self.free_disk = stat.f_bavail * stat.f_frsize
            if prune:
                self._prune(conn)
            for sink in self._bounds:
                cursor = self._cursors.get(sink, 0)
                row = conn.execute(Q["oldest_after"], (cursor,)).fetchone()
                self._oldest[sink] = row[0] if row else None
            wal = self.path.with_name(self.path.name + "-wal")
            wal_bytes = wal.stat().st_size if wal.exists() else 0
            # TRUNCATE waits (busy_timeout) for readers of older snapshots, and the
            # background check is one for as long as it runs: the writer would stall.
            if idle and wal_bytes > WAL_TRUNCATE_BYTES and self.check_state != "running":
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            elif wal_bytes > WAL_RESET_BYTES:
                # Under unbroken ingest the checkpointer thread never catches up with new
                # frames, and the WAL can only start over once a checkpoint has: finish it
                # here, between two commits (the thread has copied most pages already).
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if idle and prune:
                conn.execute("PRAGMA incremental_vacuum(2000)")
            self._measure(conn)
        except sqlite3.Error as exc:
            log.warning("log maintenance failed", extra={"error": str(exc)})

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Delete delivered events past retention (or, near the high-water mark, every
        delivered event), in range deletes of PRUNE_CHUNK rows per transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            expired = lifecycle.expire_orphans(conn, time.time() - self.retention)
            conn.execute("COMMIT")
        except sqlite3.Error:
            _rollback(conn)
            raise
        for sink, counts in expired.items():
            log.info("orphaned sink forgotten after RELAY_RETENTION",
                     extra={"sink": sink, **counts})  # fmt: skip
        max_seq = conn.execute(Q["max_seq"]).fetchone()[0]
        cursors = [conn.execute(Q["get_cursor"], (s,)).fetchone() for s in self._sinks]
        done_upto = min([c[0] if c else 0 for c in cursors], default=max_seq)
        cutoff = time.time() if self._near_mark() else time.time() - self.retention
        first_kept = conn.execute(Q["first_seq_since"], (cutoff,)).fetchone()
        upto = min(done_upto, first_kept[0] - 1 if first_kept else max_seq)
        low = conn.execute(Q["min_event_seq"]).fetchone()[0] - 1
        sinks = msgspec.json.encode(list(self._sinks)).decode()
        deleted = 0
        while low < upto:
            high = min(low + PRUNE_CHUNK, upto)
            conn.execute("BEGIN IMMEDIATE")
            try:
                bounds = {"low": low, "high": high, "sinks": sinks}
                deleted += conn.execute(Q["prune_range"], bounds).rowcount
                conn.execute(Q["set_pruned_upto"], {"seq": high})
                conn.execute("COMMIT")
                self.pruned_upto = max(self.pruned_upto, high)
                if self._window is not None:
                    self._window.forget(high)
            except sqlite3.Error:
                _rollback(conn)
                raise
            low = high
        if deleted:
            self.events -= deleted
            if self._shared is not None:
                self._shared.pruned(deleted)
            log.debug("pruned events", extra={"deleted": deleted, "upto": upto})


def _quick_check(conn: sqlite3.Connection) -> list[str]:
    """The first problems SQLite finds in the file; [] when it is sound."""
    problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    return [] if problems == ["ok"] else problems


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _settle(conn: sqlite3.Connection, s: Settlement) -> None:
    now = time.time()
    for seq, attempts, error in s.dead:
        conn.execute(Q["insert_dead_letter"], (s.sink, seq, attempts, error, now))
        conn.execute(Q["delete_retry"], (s.sink, seq))
        conn.execute(Q["delete_redelivery"], (s.sink, seq))
    for seq in s.done:
        conn.execute(Q["delete_redelivery"], (s.sink, seq))
        conn.execute(Q["delete_retry"], (s.sink, seq))
        # a dead letter retried to this sink leaves the dead letters now, not when queued
        conn.execute(Q["finish_retried_dead_letters"], {"sink": s.sink, "seq": seq})
    for seq in s.park:
        conn.execute(Q["park"], {"sink": s.sink, "seq": seq})
    if s.cursor is not None:
        conn.execute(Q["advance_cursor"], (s.cursor, now, s.sink))
        conn.execute(Q["delete_retries_upto"], {"sink": s.sink, "seq": s.cursor})
    for retry in s.retries:
        conn.execute(Q["upsert_retry"], (s.sink, *retry))
    if s.missed is not None:
        m = s.missed
        row = {"sink": s.sink, "first_seq": m.first_seq, "last_seq": m.last_seq,
               "count": m.count, "first_at": m.first_at, "last_at": m.last_at,
               "reason": m.reason}  # fmt: skip
        if not conn.execute(Q["extend_missed"], row).rowcount:
            conn.execute(Q["insert_missed"], row)
    for marker_id in s.markers_done:
        conn.execute(Q["delete_missed"], {"id": marker_id})


def _rows(query: str, params: Mapping[str, Any], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(Q[query], params).fetchall()


def _json_array(seqs: Sequence[int]) -> str:
    return "[" + ",".join(str(int(seq)) for seq in seqs) + "]"


def event_row(e: Event, received_at: float) -> tuple[Any, ...]:
    """The `insert_event` parameters of an event."""
    attrs = None
    if e.metadata or e.tags or e.objects:
        fields: dict[str, object] = {"metadata": e.metadata, "tags": e.tags}
        if e.objects:
            fields["objects"] = e.objects
        attrs = _ATTRS.encode(fields).decode()
    return (
        e.event_id, received_at, e.source, e.dialect, e.event_name, e.bucket, e.key, e.size, e.etag,
        e.version_id, e.sequencer, e.event_time, e.principal, e.source_ip, e.user_agent,
        e.request_id, e.sender_event_id, attrs, e.record,
    )  # fmt: skip


def entry_from_row(row: Sequence[Any]) -> LogEntry:
    """A row of `events_after`, `redeliveries_for` or `replay_select` as a LogEntry."""
    attrs = _ATTRS_DECODER.decode(row[18]) if row[18] else _Attrs()
    event = Event(
        source=row[3], dialect=row[4], event_name=row[5], bucket=row[6], key=row[7],
        record=bytes(row[19]), size=row[8], etag=row[9], version_id=row[10], sequencer=row[11],
        event_time=row[12], principal=row[13], source_ip=row[14], user_agent=row[15],
        request_id=row[16], sender_event_id=row[17], metadata=attrs.metadata,
        tags=attrs.tags, objects=attrs.objects, event_id=row[2],
    )  # fmt: skip
    return LogEntry(seq=row[0], received_at=row[1], event=event)
