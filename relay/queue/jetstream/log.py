"""The log on a replicated NATS JetStream stream (RELAY_LOG=nats://…): relay/queue/backend.py
`LogBackend`, for any number of relay replicas.

- Events: the stream `<name>_events`, one subject per event id (`<name>.ev.<id>`), limits
  retention, discard new, at most one message per subject, discard new per subject. The
  2xx waits for the PubAck, which a replicated stream sends once a quorum stored the
  message. A duplicate inside the duplicate window is flagged by the PubAck; past it, the
  per-subject limit refuses the second copy for as long as the first is in the stream. The
  stream sequence is the log's `seq`.
- Sinks: one document per sink (relay/queue/jetstream/state.py) in the bucket
  `<name>_sinks`, written by compare-and-set; a lease per sink in `<name>_leases`
  (relay/queue/jetstream/leases.py); dead letters in `<name>_dead`; quarantined bodies in
  the stream `<name>_quarantine`. All replicated as the events are (RELAY_LOG_REPLICAS).
- Reads: the dispatchers' synchronous reads (on worker threads) run their coroutine on the
  event loop. New events reach every delivering process through an ordered consumer that
  keeps a window of the newest entries; reads further back make an ephemeral ordered
  consumer from the sequence they need.
- Retention: the delivery process purges the stream up to the slowest configured sink's
  cursor, no further than RELAY_RETENTION asks (near RELAY_MAX_EVENTS/BYTES: everything
  delivered), never past an event queued again or with a retry schedule.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from relay.config import Settings
from relay.events import Event, lane
from relay.queue import admin, lifecycle
from relay.queue.admin import DeadLetter, DeadLetterFilter, QuarantineRetry, RetryPlan
from relay.queue.backend import EventTooLarge, LeaseLost, LogUnavailable
from relay.queue.jetstream import records, state
from relay.queue.jetstream.connect import Names, connect
from relay.queue.jetstream.leases import Leases
from relay.queue.log import (
    AppendResult,
    Backlog,
    BacklogBound,
    CheckState,
    LogEntry,
    Missed,
    ParkedRow,
    Role,
    Settlement,
    SinkState,
)
from relay.queue.stats import Orphan, SinkStats

if TYPE_CHECKING:
    from relay.queue.trace import Routing, Trace, TraceQuery

log = logging.getLogger("relay.log")
T = TypeVar("T")

WINDOW = 20_000  # newest entries each delivering process keeps (reads past it go to the stream)
READ_WAIT = 2.0  # longest wait for the next message of a read further back
CALL_TIMEOUT = 30.0  # a synchronous read's bound (its coroutine runs on the loop)
STATS_EVERY = 1.0  # seconds between reads of the stream's counts (pressure, /metrics)
PRUNE_EVERY = 10.0
# how long a holder trusts its copy of a sink's document: an operator's change (a dead
# letter retried, a replay) is seen within this, as the SQLite log's within IDLE_POLL
DOC_FRESH = 1.0
CLOCK_SKEW = 5.0  # a time-based read starts this much earlier: relay and server clocks
# A relay started beside its cluster (one compose file, one rollout) finds it electing
# leaders: a JetStream API request then gets no answer or a 503 for a few seconds (a fresh
# 3-node cluster under load: one request unanswered for 10 s). Opening retries each request
# (OPEN_REQUEST_TIMEOUT) until OPEN_TIMEOUT, so only a cluster that stays unready stops it,
# with the last thing it answered.
OPEN_TIMEOUT = 30.0
SCAN_CHUNK = 5_000  # events read at a time by a search of the stream
# events read, at most, by an operator's search of the stream (a trace by object, the stale
# check of a retry or a replay: the newest events are what it looks for): the stream is read
# at ~5 000 events/s on 2 cores (bench/replicated.py, 0.11x the SQLite log), and a command
# should answer in seconds, not minutes
SEARCH_LIMIT = 100_000
OPEN_REQUEST_TIMEOUT = 4.0
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
# what a full stream answers (discard new): JSStreamStoreFailedF with the limit's words
_FULL = ("maximum messages exceeded", "maximum bytes exceeded", "insufficient resources")
_SUBJECT_TAKEN = "maximum messages per subject exceeded"


class LogFull(Exception):
    """The stream is at RELAY_MAX_EVENTS / RELAY_MAX_BYTES (discard new)."""


def sink_key(sink: str) -> str:
    """A sink's name as a key-value key (sink ids are lower-case letters, digits, _ and -;
    anything else is hex-encoded)."""
    return f"s.{sink}" if _SAFE_ID.fullmatch(sink) else "x." + sink.encode().hex()


def sink_of_key(key: str) -> str:
    kind, _, rest = key.partition(".")
    return rest if kind == "s" else bytes.fromhex(rest).decode()


NO_PEERS_YET = 10005  # "no suitable peers for placement": also a cluster still meeting its nodes


def _not_ready(exc: BaseException) -> bool:
    """What a cluster answers while it elects leaders and meets its nodes: no answer, no
    responders, a 503, too few peers known for the replicas asked."""
    if isinstance(exc, nats.js.errors.BadRequestError):
        return exc.err_code == NO_PEERS_YET
    return isinstance(
        exc,
        nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.js.errors.ServiceUnavailableError,
    )


def _not_ready_yet(retry: RetryCallState) -> None:
    if retry.attempt_number == 1:
        failure = retry.outcome.exception() if retry.outcome else None
        log.warning("the replicated log does not answer yet; retrying",
                    extra={"error": type(failure).__name__})  # fmt: skip


class JetStreamLog:
    def __init__(self, settings: Settings, *, client: bool = False, role: Role = "single"):
        self.settings = settings
        self.names = Names(settings.log_name)
        self.role: Role = "client" if client else role
        self.replicas = settings.log_replicas
        self.max_events = settings.max_events
        self.max_bytes = settings.max_bytes
        self.retention = settings.retention
        self.publish_timeout = settings.log_publish_timeout
        self.per_id = settings.log_dedup == "stream"
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.events = 0
        self.bytes = 0
        self.free_disk = 0
        self.pressure_detail = ""
        self.blocked_by: tuple[str, ...] = ()
        self.check_state: CheckState = "ok"  # the servers keep the stream whole (Raft)
        self.check_in_background = False
        self.open_seconds = 0.0
        self.pruned_upto = 0
        self._pressure: str | None = None
        self._last_seq = 0
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._sinks_kv: KeyValue | None = None
        self._dead_kv: KeyValue | None = None
        self._leases = Leases(settings.log_lease, self.replica)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: set[asyncio.Event] = set()
        self._window: dict[int, LogEntry] = {}
        self._window_from = 0  # every stream message from this seq to _window_to is in it
        self._window_to = 0
        self._following = False  # the window is fed (a delivering process, connected)
        self._docs: dict[str, tuple[state.SinkDoc, int]] = {}  # held sinks: document, revision
        self._doc_locks: dict[str, asyncio.Lock] = {}
        self._doc_read: dict[str, float] = {}  # when each held document was last written/read
        self._configured: tuple[str, ...] = ()
        self._bounds: dict[str, BacklogBound] = {}
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def pressure(self) -> str | None:
        return self._pressure

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def open(self) -> None:
        """Check the servers answer and the stream and buckets exist (creating them, except
        in an ingest worker: the supervisor did). Runs on a thread of its own with a loop of
        its own: open() is synchronous and may be called on the relay's running loop."""
        started = time.monotonic()
        failure: list[BaseException] = []

        def provision() -> None:
            try:
                asyncio.run(
                    asyncio.wait_for(self._provision(), OPEN_TIMEOUT + 2 * OPEN_REQUEST_TIMEOUT)
                )
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=provision, name="relay-log-open")
        thread.start()
        thread.join()
        if failure:
            exc = failure[0]
            why = "no answer" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            if "insufficient storage" in why:
                why += " (each server keeps RELAY_MAX_BYTES of it: lower RELAY_MAX_BYTES)"
            raise LogUnavailable(f"the replicated log (RELAY_LOG) cannot be opened: {why}")
        self.open_seconds = time.monotonic() - started

    async def _provision(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_not_ready),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            stop=stop_after_delay(OPEN_TIMEOUT),
            before_sleep=_not_ready_yet,
            reraise=True,
        ):
            with attempt:
                await self._provision_once()

    async def _provision_once(self) -> None:
        nc = await connect(self.settings, f"s3-notify-relay {self.role} (open)")
        if self.settings.max_body > nc.max_payload:
            limits = {"max_body": self.settings.max_body, "max_payload": nc.max_payload}
            log.warning("RELAY_MAX_BODY is above the NATS servers' max_payload: an event that "
                        "large is refused with 413", extra=limits)  # fmt: skip
        try:
            js = nc.jetstream(timeout=OPEN_REQUEST_TIMEOUT)
            create = self.role != "ingest"
            await self._stream(js, self._events_config(), create)
            await self._stream(js, api.StreamConfig(
                name=self.names.quarantine, subjects=[self.names.quarantine_subject],
                retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.NEW,
                storage=api.StorageType.FILE, num_replicas=self.replicas,
            ), create)  # fmt: skip
            await self._stream(js, api.StreamConfig(
                name=self.names.ids, subjects=[self.names.ids_subject], max_msgs=1,
                retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
                storage=api.StorageType.FILE, num_replicas=self.replicas,
            ), create)  # fmt: skip
            for bucket, ttl in ((self.names.sinks, None), (self.names.dead, None),
                                (self.names.leases, self._leases.ttl)):  # fmt: skip
                await self._bucket(js, bucket, ttl, create)
            info = await js.stream_info(self.names.events)
            self._counts(info)
        finally:
            await nc.close()

    def _events_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.names.events,
            subjects=[self.names.event_subjects],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            max_msgs=self.max_events,
            max_bytes=self.max_bytes,
            # RELAY_LOG_DEDUP=stream: one message per event id's subject, for good
            max_msgs_per_subject=1 if self.per_id else -1,
            discard_new_per_subject=self.per_id,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.settings.log_duplicate_window,
        )

    async def _stream(self, js: JetStreamContext, config: api.StreamConfig, create: bool) -> None:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
            return
        except nats.js.errors.NotFoundError:
            if not create:
                raise
        await js.add_stream(config)
        log.info("stream created", extra={"stream": config.name, "replicas": self.replicas})

    async def _bucket(
        self, js: JetStreamContext, bucket: str, ttl: float | None, create: bool
    ) -> None:
        try:
            await js.key_value(bucket)
            return
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket, ttl=ttl, replicas=self.replicas, storage=api.StorageType.FILE
            )
        )

    async def _ready(self) -> JetStreamContext:
        """The process's client, connected on first use on the relay's loop."""
        if self._js is not None:
            return self._js
        if self._closed:
            raise LogUnavailable("the log is closed")
        self._loop = asyncio.get_running_loop()
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._js is not None:
                return self._js
            nc = await connect(
                self.settings, f"s3-notify-relay {self.role}",
                disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                error_cb=self._error,
            )  # fmt: skip
            js = nc.jetstream(timeout=self.publish_timeout, publish_async_max_pending=4000)
            self._sinks_kv = await js.key_value(self.names.sinks)
            self._dead_kv = await js.key_value(self.names.dead)
            self._leases.bucket = await js.key_value(self.names.leases)
            self._nc, self._js = nc, js
            if self.role != "client":
                self._tasks.append(asyncio.create_task(self._keep_counts(), name="log counts"))
            if self.role in ("single", "delivery"):
                await self._follow()
                self._tasks.append(asyncio.create_task(self._keep(), name="log upkeep"))
                self._tasks.append(asyncio.create_task(self._renew(), name="leases"))
        return js

    async def _disconnected(self) -> None:
        self._pressure = "log_unavailable"
        self.pressure_detail = "no connection to the NATS servers of RELAY_LOG"

    async def _reconnected(self) -> None:
        self._pressure = None
        self.pressure_detail = ""

    async def _error(self, exc: Exception) -> None:
        log.debug("nats client error", extra={"error": str(exc)})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._leases.release_all(), 5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 5)

    # -- counts, pressure, retention -----------------------------------------------------------

    def _counts(self, info: api.StreamInfo) -> None:
        st = info.state
        self.events, self.bytes = st.messages, st.bytes
        self._last_seq = max(self._last_seq, st.last_seq)
        self.pruned_upto = max(self.pruned_upto, st.first_seq - 1)

    async def _keep_counts(self) -> None:
        assert self._js is not None
        while True:
            try:
                self._counts(await self._js.stream_info(self.names.events))
                self._update_pressure()
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("stream counts not read", extra={"error": str(exc)})
            await asyncio.sleep(STATS_EVERY)

    def _update_pressure(self) -> None:
        if self._nc is not None and not self._nc.is_connected:
            return  # `log_unavailable`, set by the client's callback
        pressure, detail = None, ""
        if self.events >= self.max_events:
            pressure, detail = "log_full_events", f"{self.events} events in the stream"
        elif self.bytes >= self.max_bytes:
            pressure, detail = "log_full_bytes", f"{self.bytes} bytes in the stream"
        blocked = []
        now = time.time()
        for sink, bound in self._bounds.items():
            held = self._docs.get(sink)
            if held is None:
                continue
            over = self.backlog(held[0].cursor, None).over(bound, now)
            if over:
                blocked.append(sink)
                detail = "; ".join(filter(None, [detail, f"{sink}: {over}"]))
                pressure = pressure or "sink_backlog"
        if pressure != self._pressure:
            if pressure:
                log.warning("backpressure on: ingest answers 503",
                            extra={"reason": pressure, "detail": detail})  # fmt: skip
            else:
                log.info("backpressure off: ingest accepts again", extra={"events": self.events})
        self._pressure, self.pressure_detail, self.blocked_by = pressure, detail, tuple(blocked)

    async def _renew(self) -> None:
        """This replica's leases, renewed four times per TTL (a task of its own: nothing
        slow may delay it, or the lease runs out under a live replica)."""
        while True:
            await asyncio.sleep(self._leases.ttl / 4)
            await self._leases.renew_all()

    async def _keep(self) -> None:
        """Purge what retention lets go."""
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                await self._prune()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("log pruning failed", extra={"error": str(exc)})

    async def _prune(self) -> None:
        if not self._configured:
            return
        docs = [await self._read_doc(s) for s in self._configured]
        upto = min(d.cursor for d, _ in docs)
        pinned = [seq for d, _ in docs for seq in (*d.queued, *d.retries)]
        if pinned:
            upto = min(upto, min(pinned) - 1)
        near = self.events >= 0.9 * self.max_events or self.bytes >= 0.9 * self.max_bytes
        if not near:
            first_kept = await self._first_seq_since(time.time() - self.retention)
            upto = min(upto, (first_kept or self._last_seq + 1) - 1)
        if upto > self.pruned_upto:
            assert self._js is not None
            await self._js.purge_stream(self.names.events, seq=upto + 1)
            self.pruned_upto = upto
            log.debug("pruned events", extra={"upto": upto})

    def set_sinks(
        self, names: Sequence[str], bounds: Mapping[str, BacklogBound] | None = None
    ) -> None:
        self._configured = tuple(names)
        self._bounds = {n: b for n, b in (bounds or {}).items() if b and b.block}

    def backlog(self, cursor: int, oldest: float | None) -> Backlog:
        events = max(0, self.last_seq - cursor)
        per_event = self.bytes / self.events if self.events else 0.0
        return Backlog(events, int(events * per_event), oldest if events else None)

    # -- ingest --------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> AppendResult:
        """Each event published with its id as `Nats-Msg-Id`, one after another (a body's
        events keep their order); concurrent requests' publishes share the connection, so
        their round trips overlap. Not nats-py's publish_async: 2.16 raises a 503-coded
        PubAck error (a full stream, an id past the window) inside its reply handler and
        never completes the future, which would turn a refusal into a timeout."""
        js = await self._ready()
        now = time.time()
        encoded = [records.encode_event(event, now) for event in events]
        limit = self._nc.max_payload if self._nc is not None else 0
        too_big = max((len(data) for data in encoded), default=0)
        if limit and too_big > limit:  # a publish would fail after the events before it
            raise EventTooLarge(
                f"an event of {too_big} bytes is over the NATS servers' max_payload ({limit} "
                "bytes): raise max_payload on the servers or lower RELAY_MAX_BODY"
            )
        accepted = duplicates = 0
        try:
            async with asyncio.timeout(self.publish_timeout):
                for event, data in zip(events, encoded, strict=True):
                    try:
                        ack = await js.publish(
                            self.names.event_subject(
                                _subject_id(event.event_id) if self.per_id else "all"
                            ),
                            data,
                            timeout=self.publish_timeout,
                            headers={"Nats-Msg-Id": event.event_id},
                        )
                    except nats.js.errors.APIError as exc:
                        why = str(exc.description or "").lower()
                        if _SUBJECT_TAKEN in why:
                            duplicates += 1  # past the duplicate window, still in the stream
                            continue
                        if any(w in why for w in _FULL):
                            raise LogFull(f"the stream is full: {exc.description}") from None
                        raise LogUnavailable(f"the stream refused the event: {exc}") from None
                    except nats.errors.Error as exc:  # no answer, no stream leader
                        raise LogUnavailable(f"the stream did not acknowledge: {exc}") from None
                    if ack.duplicate:
                        duplicates += 1
                    else:
                        accepted += 1
                        self._last_seq = max(self._last_seq, ack.seq)
        except TimeoutError:
            raise LogUnavailable(
                f"the stream did not acknowledge within {self.publish_timeout:g}s"
            ) from None
        if accepted:
            self._wake()
        return AppendResult(accepted, duplicates)

    async def quarantine(self, source: str, reason: str, headers: str, body: builtins.bytes) -> int:
        js = await self._ready()
        data = records.encode_body(records.StoredBody(time.time(), source, reason, headers, body))
        ack = await js.publish(self.names.quarantine_subject, data, timeout=self.publish_timeout)
        return int(ack.seq)

    # -- reading the stream --------------------------------------------------------------------

    async def _follow(self) -> None:
        """New events, as any replica appends them, into the window; wakes the dispatchers."""
        assert self._js is not None
        start = self._last_seq + 1
        self._window_from, self._window_to = start, start - 1

        async def arrived(msg: Any) -> None:
            seq = msg.metadata.sequence.stream
            self._window[seq] = records.decode_entry(seq, msg.data)
            self._window_to = max(self._window_to, seq)
            self._last_seq = max(self._last_seq, seq)
            while len(self._window) > WINDOW:
                first = next(iter(self._window))
                del self._window[first]
                self._window_from = first + 1
            self._wake()

        await self._js.subscribe(
            self.names.event_subjects, cb=arrived, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=start),
        )  # fmt: skip
        self._following = True

    def _wake(self) -> None:
        for event in self._listeners:
            event.set()

    async def _read(self, start: int, limit: int, *, since: float | None = None) -> list[LogEntry]:
        """Up to `limit` events from seq `start` on (or from those the servers stored at
        `since` or later), from the window when it has them."""
        if since is None and self._following and self._window_from <= start:
            out = []
            for seq in range(start, self._window_to + 1):
                entry = self._window.get(seq)
                if entry is not None:
                    # a LogEntry of its own: delivery marks one sink's copy stale
                    out.append(LogEntry(entry.seq, entry.received_at, entry.event))
                    if len(out) >= limit:
                        break
            return out
        js = await self._ready()
        info = await js.stream_info(self.names.events)
        self._counts(info)
        if (since is None and start > info.state.last_seq) or info.state.messages == 0:
            return []
        if since is not None:
            stamp = datetime.fromtimestamp(max(since - CLOCK_SKEW, 0), UTC)
            config = api.ConsumerConfig(opt_start_time=stamp)
            policy = api.DeliverPolicy.BY_START_TIME
        else:
            config = api.ConsumerConfig(opt_start_seq=max(start, 1))
            policy = api.DeliverPolicy.BY_START_SEQUENCE
        sub = await js.subscribe(
            self.names.event_subjects, ordered_consumer=True, deliver_policy=policy,
            config=config, pending_msgs_limit=max(limit, 1024),
        )  # fmt: skip
        out = []
        try:
            while len(out) < limit:
                try:
                    msg = await sub.next_msg(timeout=READ_WAIT)
                except nats.errors.TimeoutError:
                    break
                out.append(records.decode_entry(msg.metadata.sequence.stream, msg.data))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    async def _get(self, seqs: Sequence[int]) -> list[LogEntry]:
        out = [
            LogEntry(e.seq, e.received_at, e.event)
            for e in (self._window.get(s) for s in seqs)
            if e is not None
        ]
        missing = [s for s in seqs if s not in self._window]
        if missing:
            js = await self._ready()

            async def one(seq: int) -> LogEntry | None:
                try:
                    msg = await js.get_msg(self.names.events, seq)
                except nats.js.errors.NotFoundError:
                    return None
                return records.decode_entry(seq, msg.data or b"")

            out += [e for e in await asyncio.gather(*(one(s) for s in missing)) if e]
        return sorted(out, key=lambda e: e.seq)

    async def _first_seq_since(self, since: float) -> int | None:
        """The first event the servers stored at `since` or later (their clock: the
        relay's within CLOCK_SKEW, which retention and START need not be closer than)."""
        first = await self._read(0, 1, since=since + CLOCK_SKEW)
        return first[0].seq if first else None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """A dispatcher's synchronous read (on a worker thread) run on the relay's loop."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise LogUnavailable("the log is not connected yet")
        if threading.current_thread() is threading.main_thread() and loop.is_running():
            coro.close()
            raise RuntimeError("a synchronous read of the replicated log on its own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT)

    def listener(self) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def entries_after(self, seq: int, limit: int) -> list[LogEntry]:
        if self._following and self._window_from <= seq + 1 and seq >= self._window_to:
            return []  # nothing newer has arrived
        return self._call(self._read(seq + 1, limit))

    def entries_before(self, seq: int, limit: int) -> list[LogEntry]:
        start = max(1, seq - limit + 1)
        return [e for e in reversed(self._call(self._read(start, limit))) if e.seq <= seq]

    def entries(self, seqs: Sequence[int]) -> list[LogEntry]:
        return self._call(self._get(list(seqs))) if seqs else []

    def entries_between(self, after: int, upto: int) -> list[LogEntry]:
        return [e for e in self._call(self._read(after + 1, upto - after)) if e.seq <= upto]

    def first_seq_received(self, after: int, since: float) -> int | None:
        async def first() -> int | None:
            for entry in await self._read(0, 1000, since=since):
                if entry.seq > after and entry.received_at >= since:
                    return entry.seq
            return None

        return self._call(first())

    def pruned_between(self, after: int, before: int) -> Missed | None:
        upto = min(before - 1, self.pruned_upto)
        if upto <= after:
            return None
        return Missed(after + 1, upto, None, None, None, "pruned")

    # -- sinks: documents and leases -----------------------------------------------------------

    async def _read_doc(self, sink: str) -> tuple[state.SinkDoc, int]:
        await self._ready()
        assert self._sinks_kv is not None
        try:
            entry = await self._sinks_kv.get(sink_key(sink))
        except nats.js.errors.KeyNotFoundError:
            return state.SinkDoc(), 0
        return state.DECODER.decode(entry.value or b"{}"), int(entry.revision or 0)

    def _doc(self, sink: str) -> state.SinkDoc:
        """The document of a sink: this replica's own copy while it holds the sink, read
        again after DOC_FRESH (an operator's command may have queued redeliveries)."""
        held = self._docs.get(sink)
        if held is not None and self._leases.holds(sink_key(sink)):
            if time.monotonic() - self._doc_read.get(sink, 0.0) < DOC_FRESH:
                return held[0]
            return self._call(self._refresh(sink))
        return self._call(self._read_doc(sink))[0]

    async def _refresh(self, sink: str) -> state.SinkDoc:
        async with self._lock(sink):  # not between a settlement's read and its write
            doc, revision = await self._read_doc(sink)
            if doc.holder == self.replica and sink in self._docs:
                self._docs[sink] = (doc, revision)
                self._doc_read[sink] = time.monotonic()
            return doc

    def _lock(self, sink: str) -> asyncio.Lock:
        return self._doc_locks.setdefault(sink, asyncio.Lock())

    async def _change(
        self, sink: str, change: Callable[[state.SinkDoc], Any], *, as_holder: bool = False
    ) -> Any:
        """Read, change and write a sink's document (compare-and-set, again on a race). As
        the holder: refused (LeaseLost) once another replica took the sink."""
        assert self._sinks_kv is not None or await self._ready()
        assert self._sinks_kv is not None
        key = sink_key(sink)
        for _ in range(20):
            if as_holder and not self._leases.holds(key):
                self._docs.pop(sink, None)
                raise LeaseLost(f"this replica no longer holds the sink {sink}")
            held = self._docs.get(sink) if as_holder else None
            doc, revision = held if held is not None else await self._read_doc(sink)
            if as_holder and doc.holder != self.replica:
                self._leases.drop(key)
                self._docs.pop(sink, None)
                raise LeaseLost(f"the sink {sink} was taken over by {doc.holder}")
            new = state.DECODER.decode(state.ENCODER.encode(doc))
            result = change(new)
            data = state.ENCODER.encode(new)
            try:
                if revision:
                    revision = await self._sinks_kv.update(key, data, last=revision)
                else:
                    revision = await self._sinks_kv.create(key, data)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._docs.pop(sink, None)  # read again: an operator's change, or a takeover
                continue
            if sink in self._docs or (as_holder and new.holder == self.replica):
                self._docs[sink] = (new, revision)
                self._doc_read[sink] = time.monotonic()
            return result
        raise LogUnavailable(f"the state of sink {sink} kept changing under this replica")

    async def hold(self, sink: str) -> bool:
        key = sink_key(sink)
        if self._leases.holds(key):
            return True
        await self._ready()
        if key in self._leases.held and await self._leases.renew(key):
            return True  # renewed late, but nobody took it meanwhile
        self._docs.pop(sink, None)
        if not await self._leases.take(key):
            return False

        def claim(doc: state.SinkDoc) -> None:
            doc.holder = self.replica

        async with self._lock(sink):
            await self._change(sink, claim)
            self._docs[sink] = await self._read_doc(sink)
        log.info("sink taken: this replica delivers it", extra={"sink": sink})
        return True

    async def init_cursors(
        self, sinks: Sequence[str] | Mapping[str, str | float]
    ) -> lifecycle.Started:
        starts = sinks if isinstance(sinks, Mapping) else dict.fromkeys(sinks, "latest")
        js = await self._ready()
        assert self._sinks_kv is not None
        info = await js.stream_info(self.names.events)
        self._counts(info)
        started = lifecycle.Started()
        now = time.time()
        head = int(info.state.last_seq)
        kept = await self._get([info.state.first_seq]) if info.state.messages else []
        oldest = (kept[0].seq, kept[0].received_at) if kept else None
        befores: dict[float, int] = {}
        for since in {float(s) for s in starts.values() if not isinstance(s, str)}:
            found = await self._first_seq_since(since)
            befores[since] = found - 1 if found is not None else head
        for sink, start in starts.items():
            doc, revision = await self._read_doc(sink)
            if revision and doc.orphaned_at is None:
                continue
            old = doc.cursor if revision else None
            cursor = lifecycle.place(start, old, head, oldest, befores.__getitem__)
            away = lifecycle.removed(start, old, cursor) if old is not None else None

            def restart(
                d: state.SinkDoc,
                cursor: int = cursor,
                away: tuple[int, int] | None = away,
                sink: str = sink,
            ) -> None:
                if d.orphaned_at is not None or not d.cursor_at:
                    d.cursor, d.cursor_at, d.orphaned_at = cursor, now, None
                    # its previous life's schedules and parked events go; a dead letter
                    # retried or a replay queued for it still goes out
                    d.retries = {}
                    d.queued = {s: q for s, q in d.queued.items() if q.reason != "parked"}
                    if away is not None:
                        missed = Missed(away[0], away[1], None, None, None, "sink_removed")
                        state.apply(d, Settlement(sink, missed=missed), now)

            await self._change(sink, restart)
            (started.returned if revision else started.new).append(sink)
        for key in await self._keys(self.names.sinks):
            sink = sink_of_key(key)
            if sink in starts:
                continue
            doc, _ = await self._read_doc(sink)
            if doc.orphaned_at is None:

                def orphan(d: state.SinkDoc) -> None:
                    d.orphaned_at = d.orphaned_at or now

                await self._change(sink, orphan)
                started.orphaned.append(sink)
                log.warning("sink in the log but no longer configured: it pins no event "
                            "(relay sinks forget NAME removes its state)",
                            extra={"sink": sink})  # fmt: skip
        return started

    def cursor(self, sink: str) -> int:
        return self._doc(sink).cursor

    def parked(self, sink: str) -> list[ParkedRow]:
        doc = self._doc(sink)
        seqs = sorted(s for s, q in doc.queued.items() if q.reason == "parked")
        if not seqs:
            return []
        events = {e.seq: e for e in self.entries(seqs)}
        out = []
        for seq in seqs:
            entry = events.get(seq)
            if entry is None:
                continue
            retry = doc.retries.get(seq)
            out.append(ParkedRow(seq, entry.event.bucket, entry.event.key,
                                 retry.attempts if retry else None,
                                 retry.next_at if retry else None))  # fmt: skip
        return out

    def missed(self, sink: str) -> list[Missed]:
        return [m.missed() for m in sorted(self._doc(sink).markers, key=lambda m: m.first_seq)]

    def redeliveries(self, sink: str, limit: int) -> list[tuple[LogEntry, str | None]]:
        doc = self._doc(sink)
        seqs = sorted(s for s, q in doc.queued.items() if q.reason != "parked")[:limit]
        if not seqs:
            return []
        return [(e, doc.queued[e.seq].newer) for e in self.entries(seqs)]

    def retry_state(self, sink: str, seq: int) -> tuple[int, float, float, str] | None:
        r = self._doc(sink).retries.get(seq)
        return (r.attempts, r.first_at, r.next_at, r.error) if r else None

    def retry_states(self, sink: str, seqs: Sequence[int]) -> dict[int, tuple[int, float]]:
        retries = self._doc(sink).retries
        return {s: (retries[s].attempts, retries[s].first_at) for s in seqs if s in retries}

    def sink_state(self, sink: str) -> SinkState:
        doc = self._doc(sink)
        return SinkState(doc.paused, doc.paused_at, doc.failing_since)

    async def set_paused(self, sink: str, reason: str | None) -> None:
        at = time.time() if reason else None

        def pause(d: state.SinkDoc) -> None:
            d.paused, d.paused_at = reason, at

        await self._change(sink, pause)

    async def set_failing_since(self, sink: str, at: float | None) -> None:
        def failing(d: state.SinkDoc) -> None:
            d.failing_since = at

        await self._change(sink, failing)

    async def settle(self, s: Settlement) -> None:
        async with self._lock(s.sink):
            now = time.time()
            if s.dead:
                await self._dead_letters(s, now)
            finished = await self._change(s.sink, lambda d: state.apply(d, s, now), as_holder=True)
            assert self._dead_kv is not None
            for key in finished:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    await self._dead_kv.delete(key)

    def settle_nowait(self, s: Settlement) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.settle(s))

    async def _dead_letters(self, s: Settlement, now: float) -> None:
        """Written before the settlement that moves past them: should that be refused, the
        replica that took over dead-letters them again under the same keys."""
        js = await self._ready()
        assert self._dead_kv is not None
        events = {e.seq: e for e in await self._get([seq for seq, _, _ in s.dead])}
        for seq, attempts, error in s.dead:
            ack = await js.publish(self.names.ids_subject, b"")
            entry = events.get(seq)
            record = records.DeadRecord(
                id=ack.seq, sink=s.sink, seq=seq, attempts=attempts, error=error, at=now,
                received_at=entry.received_at if entry else 0.0,
                event=entry.event if entry else None,
            )  # fmt: skip
            await self._dead_kv.put(_dead_key(s.sink, seq), records.DEAD_ENCODER.encode(record))

    # -- the operator --------------------------------------------------------------------------

    async def _keys(self, bucket: str) -> list[str]:
        """The live keys of a key-value bucket. Not nats-py's KeyValue.keys(): it decides
        the listing is over from a consumer's pending count read beside the deliveries, and
        on a busy machine answered no keys for a bucket holding one (a dead letter missing
        from `relay dlq list`). Here each message's own pending count says when the last
        key came."""
        js = await self._ready()
        stream = f"KV_{bucket}"
        if not (await js.stream_info(stream)).state.messages:
            return []
        prefix = f"$KV.{bucket}."
        sub = await js.subscribe(
            prefix + ">", stream=stream, ordered_consumer=True, headers_only=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )  # fmt: skip
        keys = []
        try:
            while True:
                msg = await sub.next_msg(timeout=self.publish_timeout + READ_WAIT)
                if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    keys.append(msg.subject[len(prefix) :])
                if msg.metadata.num_pending == 0:
                    return keys
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def dead_records(self) -> list[tuple[str, records.DeadRecord]]:
        await self._ready()
        assert self._dead_kv is not None
        out = []
        for key in await self._keys(self.names.dead):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self._dead_kv.get(key)
                if entry.value:
                    out.append((key, records.decode_dead(entry.value)))
        return sorted(out, key=lambda kr: kr[1].id)

    async def sink_stats(self, sinks: Sequence[str]) -> list[SinkStats]:
        out = []
        for sink in sinks:
            doc, _ = await self._read_doc(sink)
            after = max(0, self._last_seq - doc.cursor)
            first = await self._get([doc.cursor + 1]) if after else []
            if after and not first:  # that one is gone (pruned): the next there is
                first = await self._read(doc.cursor + 1, 1)
            parked = sum(1 for q in doc.queued.values() if q.reason == "parked")
            out.append(SinkStats(sink, doc.cursor, after + len(doc.queued),
                                 first[0].received_at if first else None, len(doc.queued),
                                 parked))  # fmt: skip
        return out

    async def dead_letter_counts(self) -> dict[str, int]:
        """From the keys alone (`<sink key>.<seq>`): /metrics asks on every scrape."""
        counts: dict[str, int] = {}
        for key in await self._keys(self.names.dead):
            sink = sink_of_key(key.rpartition(".")[0])
            counts[sink] = counts.get(sink, 0) + 1
        return counts

    async def quarantine_count(self) -> int:
        js = await self._ready()
        return int((await js.stream_info(self.names.quarantine)).state.messages)

    async def orphans(self) -> list[Orphan]:
        keys = await self._keys(self.names.sinks)
        counts = await self.dead_letter_counts()
        out = []
        for key in keys:
            sink = sink_of_key(key)
            doc, _ = await self._read_doc(sink)
            if doc.orphaned_at is not None:
                out.append(Orphan(sink, doc.cursor, doc.orphaned_at, counts.get(sink, 0),
                                  len(doc.queued)))  # fmt: skip
        return out

    async def forget(self, sink: str) -> dict[str, int]:
        await self._ready()
        assert self._sinks_kv is not None and self._dead_kv is not None
        doc, revision = await self._read_doc(sink)
        dead = [k for k, r in await self.dead_records() if r.sink == sink]
        for key in dead:
            await self._dead_kv.delete(key)
        if revision:
            await self._sinks_kv.delete(sink_key(sink))
        return {"cursors": 1 if revision else 0, "dead_letters": len(dead),
                "redeliveries": len(doc.queued), "retries": len(doc.retries),
                "missed": len(doc.markers)}  # fmt: skip

    async def dead_letters(
        self, which: DeadLetterFilter | None = None, limit: int = -1
    ) -> list[DeadLetter]:
        out = [_dead_letter(r) for _, r in await self.dead_records() if _matches(r, which)]
        return out if limit < 0 else out[:limit]

    async def dead_letter(self, dlq_id: int) -> dict[str, Any]:
        for _, r in await self.dead_records():
            if r.id == dlq_id:
                letter = _dead_letter(r)
                return {
                    "id": r.id, "sink": r.sink, "seq": r.seq, "attempts": r.attempts,
                    "error": r.error, "at": r.at, "retrying_to": r.retrying_to,
                    "event_id": r.event.event_id if r.event else None,
                    "event_name": letter.event_name, "bucket": letter.bucket,
                    "key": letter.key,
                    "record": r.event.record.decode("utf-8", "replace") if r.event else None,
                    "state": letter.state,
                }  # fmt: skip
        raise admin.NotFound(f"no dead letter {dlq_id}")

    async def plan_dead_letter_retry(
        self, which: DeadLetterFilter | None, to: str | None = None
    ) -> RetryPlan:
        letters = await self.dead_letters(which)
        return RetryPlan([(letter, to or letter.sink) for letter in letters])

    async def retry_dead_letters(
        self,
        which: DeadLetterFilter | None,
        to: str | None = None,
        routes: admin.Routes | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Queued for the target sink (its document) with the stale check's token, the
        dead letter marked as being retried until that redelivery is finished."""
        assert self._dead_kv is not None or await self._ready()
        assert self._dead_kv is not None
        every = await self.dead_records()
        chosen = [(k, r) for k, r in every if _matches(r, which)]
        again: dict[str, list[LogEntry]] = {}
        for _, r in chosen:
            if r.event is not None:
                again.setdefault(to or r.sink, []).append(LogEntry(r.seq, r.received_at, r.event))
        newer: dict[tuple[str, int], str | None] = {}
        for target, entries in again.items():
            dead = {r.seq for _, r in every if r.sink == target}
            accept = functools.partial(routes, target) if routes else None
            tokens = await self._newer_tokens(target, entries, dead, accept)
            newer.update({(target, seq): token for seq, token in tokens.items()})
        for done, (key, record) in enumerate(chosen, 1):
            target = to or record.sink

            def queue(
                d: state.SinkDoc, seq: int = record.seq, key: str = key,
                token: str | None = newer.get((target, record.seq)),
            ) -> None:  # fmt: skip
                current = d.queued.get(seq)
                letters = [*(current.letters if current else []), key]
                d.queued[seq] = state.Queued(current.reason if current else "dlq-retry",
                                             token, letters)  # fmt: skip

            await self._change(target, queue)
            record.retrying_to = target
            await self._dead_kv.put(key, records.DEAD_ENCODER.encode(record))
            if progress:
                progress(done, len(chosen))
        if chosen:
            self._wake()
        return len(chosen)

    async def purge_dead_letters(self, which: DeadLetterFilter | None) -> int:
        chosen = [k for k, r in await self.dead_records() if _matches(r, which)]
        assert self._dead_kv is not None
        for key in chosen:
            await self._dead_kv.delete(key)
        return len(chosen)

    async def _bodies(self) -> list[tuple[int, records.StoredBody]]:
        js = await self._ready()
        info = await js.stream_info(self.names.quarantine)
        out: list[tuple[int, records.StoredBody]] = []
        if not info.state.messages:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await js.get_msg(self.names.quarantine, seq)
                out.append((seq, records.decode_body(msg.data or b"")))
        return out

    async def quarantined(self, limit: int) -> list[tuple[int, float, str, str, int]]:
        rows = [
            (q, b.received_at, b.source, b.reason, len(b.body)) for q, b in await self._bodies()
        ]
        return rows if limit < 0 else rows[:limit]

    async def quarantined_body(self, qid: int) -> dict[str, Any]:
        js = await self._ready()
        try:
            msg = await js.get_msg(self.names.quarantine, qid)
        except nats.js.errors.NotFoundError:
            raise admin.NotFound(f"no quarantined body {qid}") from None
        b = records.decode_body(msg.data or b"")
        import json

        return {"id": qid, "received_at": b.received_at, "source": b.source, "reason": b.reason,
                "headers": json.loads(b.headers),
                "body": b.body.decode("utf-8", "replace")}  # fmt: skip

    async def retry_quarantine(
        self, qid: int | None, select: admin.Select | None = None
    ) -> list[QuarantineRetry]:
        js = await self._ready()
        bodies = dict(await self._bodies())
        if qid is not None and qid not in bodies:
            return [QuarantineRetry(qid, False, "no such quarantined body")]

        async def reparse(item: int) -> list[Event] | QuarantineRetry:
            body = bodies[item]
            return admin.reparse(item, body.source, body.headers, body.body)

        async def drop(item: int) -> None:
            await js.delete_msg(self.names.quarantine, item)

        items = [qid] if qid is not None else list(bodies)
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
        chosen = []
        async for entry in self.received_between(since, until):
            e = entry.event
            if bucket is not None and e.bucket != bucket:
                continue
            if prefix is not None and not e.key.startswith(prefix):
                continue
            if accept(entry):
                chosen.append(entry)
        seqs = [e.seq for e in chosen]
        dead = {r.seq for _, r in await self.dead_records() if r.sink == sink}
        newer = await self._newer_tokens(sink, chosen, dead, accept)
        queued = 0

        def queue(d: state.SinkDoc) -> int:
            n = 0
            for seq in seqs:
                if seq not in d.queued:
                    d.queued[seq] = state.Queued("replay", newer.get(seq))
                    n += 1
            return n

        if seqs:
            queued = int(await self._change(sink, queue))
            self._wake()
        if progress:
            progress(len(seqs), len(seqs))
        return len(seqs), queued

    async def _newer_tokens(
        self,
        sink: str,
        again: Sequence[LogEntry],
        dead: set[int],
        accept: Callable[[LogEntry], bool] | None,
    ) -> dict[int, str | None]:
        """The stale check's tokens of events about to be sent to `sink` again (admin.py
        `newer_tokens`): what the sink has had of their objects since, up to its cursor,
        neither dead-lettered (`dead`) nor waiting to be sent again, still in the stream
        and among the SEARCH_LIMIT events before the cursor."""
        if not again:
            return {}
        doc, _ = await self._read_doc(sink)
        first, _ = await self.stream_bounds()
        objects = {lane(e.event) for e in again}
        after = max(min(e.seq for e in again), first - 1, doc.cursor - SEARCH_LIMIT)
        later = await self.scan(
            after, doc.cursor,
            lambda e: lane(e.event) in objects and e.seq not in dead and e.seq not in doc.queued,
        )  # fmt: skip
        return admin.newest_since(again, later, accept)

    async def scan(self, after: int, upto: int, keep: Callable[[LogEntry], bool]) -> list[LogEntry]:
        """The events past `after` up to `upto` that `keep` keeps, read SCAN_CHUNK at a time
        (the stream has no index but seq: a search by object or by id reads it)."""
        out: list[LogEntry] = []
        while after < upto:
            chunk = await self._read(after + 1, min(SCAN_CHUNK, upto - after))
            if not chunk:
                break
            out += [e for e in chunk if e.seq <= upto and keep(e)]
            after = chunk[-1].seq
        return out

    async def page(self, after: int, limit: int) -> list[LogEntry]:
        return await self._read(after + 1, limit)

    async def head(self) -> int:
        return (await self.stream_bounds())[1]

    async def received_between(self, since: float, until: float) -> AsyncIterator[LogEntry]:
        batch = await self._read(0, 1000, since=since)
        while batch:
            for entry in batch:
                if entry.received_at >= until:
                    return
                if entry.received_at >= since:
                    yield entry
            batch = await self._read(batch[-1].seq + 1, 1000)

    async def pending_seqs(self, sink: str) -> set[int]:
        doc, _ = await self._read_doc(sink)
        return set(doc.queued)

    async def trace(self, query: TraceQuery, routing: Routing) -> Trace:
        """The rows read on a thread of the operator's (relay/queue/jetstream/trace.py); the
        trace built from them here."""
        from relay.queue import trace
        from relay.queue.jetstream.trace import JetStreamSource

        await self._ready()

        def read() -> trace.TraceRows:
            return trace.read(JetStreamSource(self, routing.sinks), query, routing)

        rows = await asyncio.to_thread(read)
        return trace.build(query, rows, routing)

    async def stream_bounds(self) -> tuple[int, int]:
        """The first and the last seq the events' stream holds (first > last: empty)."""
        js = await self._ready()
        info = await js.stream_info(self.names.events)
        self._counts(info)
        return int(info.state.first_seq), int(info.state.last_seq)

    async def sink_document(self, sink: str) -> state.SinkDoc | None:
        """A sink's document as stored (None: the sink never had one)."""
        doc, revision = await self._read_doc(sink)
        return doc if revision else None

    async def entry_of_id(self, event_id: str) -> LogEntry | None:
        """With RELAY_LOG_DEDUP=stream, the event stored under its id's subject."""
        js = await self._ready()
        subject = self.names.event_subject(_subject_id(event_id))
        try:
            msg = await js.get_last_msg(self.names.events, subject)
        except nats.js.errors.NotFoundError:
            return None
        return records.decode_entry(int(msg.seq or 0), msg.data or b"")

    async def oldest_received(self) -> float | None:
        first = await self._read(1, 1)
        return first[0].received_at if first else None


def _subject_id(event_id: str) -> str:
    if _SAFE_ID.fullmatch(event_id):
        return event_id
    import hashlib

    return hashlib.sha256(event_id.encode()).hexdigest()


def _dead_key(sink: str, seq: int) -> str:
    return f"{sink_key(sink)}.{seq}"


def _dead_letter(r: records.DeadRecord) -> DeadLetter:
    e = r.event
    return DeadLetter(
        r.id, r.sink, r.seq, r.attempts, r.error, r.at,
        e.event_name if e else None, e.bucket if e else None, e.key if e else None,
        r.retrying_to,
    )  # fmt: skip


def _matches(r: records.DeadRecord, which: DeadLetterFilter | None) -> bool:
    if which is None:
        return True
    e = r.event
    return (
        (which.id is None or r.id == which.id)
        and (which.sink is None or r.sink.lower() == which.sink.lower())
        and (which.bucket is None or (e is not None and e.bucket == which.bucket))
        and (which.prefix is None or (e is not None and e.key.startswith(which.prefix)))
        and (which.since is None or r.at >= which.since)
        and (which.until is None or r.at < which.until)
        and (which.error is None or which.error.lower() in r.error.lower())
    )
