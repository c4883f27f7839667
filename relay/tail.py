"""The live tail: `GET /admin/events/stream`, the log's events as server-sent events.

The stream reads the log, never a side buffer: it starts after `Last-Event-ID` (the header a
reconnecting EventSource sends) or `?after=<seq>`, or `?last=<n>` events back, or at the
head; it sends every event past that position that passes the filters (`bucket`, `prefix`,
`event` with the rules' wildcards), then waits for the next commit that appends events. So
a client that reconnects with the last id it saw misses nothing the log still holds.

Events retention pruned before the client saw them (a hole in the seqs past its position,
at or below what the log pruned) are announced by a `relay:MissedEvents` event in their
place, never skipped in silence.

Bounded: the log is read a page at a time, and the next page only once the previous one was
written to the socket. A client that takes no data for WRITE_TIMEOUT seconds is cut off
(its reconnect resumes from its last id); at most MAX_STREAMS streams at once. A comment
line every HEARTBEAT seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from aiohttp import web

from relay.config import ConfigError
from relay.delivery import missed as missed_events
from relay.events import Event
from relay.queue.backend import LogBackend
from relay.queue.log import LogEntry
from relay.rules import compile_event_patterns

log = logging.getLogger("relay.admin")

HEARTBEAT = 15.0
WRITE_TIMEOUT = 10.0
PAGE = 200
MAX_STREAMS = 64
MAX_BACKLOG = 10_000  # ?last=<n>
RECONNECT_MS = 2000  # the client's wait before it reconnects (SSE `retry:`)


class Hub:
    """One listener on the log for every stream: wakes them all after a commit that
    appended events, and ends them all when the server shuts down."""

    def __init__(self, event_log: LogBackend) -> None:
        self.log = event_log
        self.streams = 0
        self.closing = asyncio.Event()
        self._listener = event_log.listener()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admin tail hub")

    async def close(self) -> None:
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def changed(self) -> asyncio.Event:
        """Set by the next commit that appends events. Take it before reading the log: a
        commit between the read and the wait still sets it."""
        return self._changed

    async def _run(self) -> None:
        while True:
            await self._listener.wait()
            self._listener.clear()
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()


@dataclass(frozen=True)
class Filter:
    buckets: frozenset[str]
    prefix: str | None
    events: Any  # a compiled event-pattern set, or None for every event

    @classmethod
    def from_query(cls, query: Any) -> Filter:
        """From `bucket`, `prefix` and `event` (each may be repeated or comma-separated)."""
        buckets = frozenset(b for v in query.getall("bucket", []) for b in _split(v))
        patterns = [p for v in query.getall("event", []) for p in _split(v)]
        try:
            events = compile_event_patterns(patterns, "event")
        except ConfigError as exc:
            raise _bad(str(exc)) from None
        return cls(buckets, query.get("prefix") or None, events)

    def matches(self, event: Event) -> bool:
        if self.buckets and event.bucket not in self.buckets:
            return False
        if self.prefix and not event.key.startswith(self.prefix):
            return False
        return self.events is None or self.events.match(event.event_name)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def event_json(entry: LogEntry) -> dict[str, Any]:
    """The normalised event with its log position and the record as the store sent it."""
    e = entry.event
    try:
        record: Any = json.loads(e.record)
    except ValueError:
        record = e.record.decode("utf-8", "replace")
    return {
        "seq": entry.seq, "received_at": entry.received_at, "event_id": e.event_id,
        "source": e.source, "dialect": e.dialect, "event_name": e.event_name,
        "bucket": e.bucket, "key": e.key, "size": e.size, "etag": e.etag,
        "version_id": e.version_id, "sequencer": e.sequencer, "event_time": e.event_time,
        "principal": e.principal, "source_ip": e.source_ip, "user_agent": e.user_agent,
        "request_id": e.request_id, "sender_event_id": e.sender_event_id,
        "metadata": e.metadata, "tags": e.tags, "record": record,
    }  # fmt: skip


def sse_event(entry: LogEntry) -> str:
    return f"id: {entry.seq}\ndata: {json.dumps(event_json(entry), separators=(',', ':'))}\n\n"


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def start_position(request: web.Request, hub: Hub) -> int:
    """The seq after which the stream starts."""
    given = request.headers.get("Last-Event-ID") or request.query.get("after")
    if given is not None:
        try:
            after = int(given.strip())
        except ValueError:
            raise _bad(f"not an event id: {given!r}") from None
        if after < 0:
            raise _bad("an event id is not negative")
        return after
    head = await hub.log.head()
    last = request.query.get("last")
    if last is None:
        return head
    try:
        back = int(last)
    except ValueError:
        raise _bad(f"last: not a number: {last!r}") from None
    return max(0, head - min(max(back, 0), MAX_BACKLOG))


async def stream(request: web.Request, hub: Hub) -> web.StreamResponse:
    flt = Filter.from_query(request.query)
    after = await start_position(request, hub)
    if hub.streams >= MAX_STREAMS:
        return web.json_response({"error": "too many live streams"}, status=503,
                                 headers={"Retry-After": "5"})  # fmt: skip
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            "X-Content-Type-Options": "nosniff",
        }
    )
    hub.streams += 1
    try:
        await response.prepare(request)
        # an id without data moves the client's last event id to the start position, so a
        # reconnect before the first event resumes here rather than at the head of that time
        await _send(response, f": relay live tail\nretry: {RECONNECT_MS}\nid: {after}\n\n")
        while not hub.closing.is_set():
            changed = hub.changed()
            rows: Sequence[LogEntry] = await hub.log.page(after, PAGE)
            if rows:
                parts = []
                for row in rows:
                    gap = hub.log.pruned_between(after, row.seq)
                    if gap is not None:  # retention pruned them before this client saw them
                        parts.append(sse_event(missed_events.entry("live-tail", gap)))
                    if flt.matches(row.event):
                        parts.append(sse_event(row))
                    after = row.seq
                if parts:
                    await _send(response, "".join(parts))
                continue
            waits = {asyncio.ensure_future(changed.wait()),
                     asyncio.ensure_future(hub.closing.wait())}  # fmt: skip
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in waits:
                    task.cancel()
            if not done:
                await _send(response, ": heartbeat\n\n")
    except TimeoutError:
        log.warning("live tail client too slow: cut off",
                    extra={"remote": request.remote, "after": after})  # fmt: skip
        if request.transport is not None:
            request.transport.abort()  # drop what is buffered for it; it reconnects from its id
    except ConnectionError:
        pass  # the client went away
    finally:
        hub.streams -= 1
    return response


async def _send(response: web.StreamResponse, text: str) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT):
        await response.write(text.encode())


# -- the client: `relay tail` ---------------------------------------------------------------------


@dataclass
class Message:
    id: str | None = None
    data: str | None = None


async def messages(chunks: AsyncIterator[bytes]) -> AsyncIterator[Message]:
    """Server-sent events from a byte stream (comments skipped; any line length)."""
    buffer = b""
    current = Message()
    data: list[str] = []
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    current.data = "\n".join(data)
                if current.id is not None or current.data is not None:
                    yield current
                current, data = Message(), []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "data":
                data.append(value)


def event_line(event: dict[str, Any]) -> str:
    """`2026-03-04T10:11:12.345Z  s3:ObjectCreated:Put  photos/2024/cat 1.jpg`"""
    at = dt.datetime.fromtimestamp(event["received_at"], dt.UTC)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    if event["event_name"] == missed_events.EVENT_NAME:
        r = event["record"]
        gap = f"seqs {r['first_seq']}-{r['last_seq']} ({r['reason']})"
        return f"{stamp}  {event['event_name']}  {gap}"
    return f"{stamp}  {event['event_name']}  {event['bucket']}/{event['key']}"


async def follow(
    url: str,
    token: str,
    query: list[tuple[str, str]],
    after: int | None,
    as_json: bool,
    count: int | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Print the stream's events, one line each, reconnecting from the last id when the
    connection drops (the relay restarts, a proxy times out). Exit 1 when the relay cannot
    be reached at all, or refuses the token or the filters."""
    import aiohttp

    stream_url = url.rstrip("/") + "/admin/events/stream"
    last = after
    seen = 0
    connected_once = False
    delay = 0.5
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=HEARTBEAT * 3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                async with session.get(stream_url, params=query, headers=headers) as response:
                    if response.status != 200:
                        detail = await _error_text(response)
                        if response.status in (400, 401, 403, 404):
                            hint = {
                                401: "the relay refused the admin token",
                                404: "no admin API there (is RELAY_ADMIN_TOKENS set on the relay?)",
                            }.get(response.status, detail)
                            print(f"relay tail: {stream_url}: {hint}", file=err)
                            return 1
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status, message=detail
                        )
                    connected_once, delay = True, 0.5
                    async for message in messages(response.content.iter_any()):
                        if message.id is not None and message.id.isdigit():
                            last = int(message.id)
                        if message.data is None:
                            continue
                        event = json.loads(message.data)
                        print(json.dumps(event) if as_json else event_line(event), file=out,
                              flush=True)  # fmt: skip
                        seen += 1
                        if count and seen >= count:
                            return 0
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not connected_once:
                    print(f"relay tail: cannot reach the relay at {url}: {exc}", file=err)
                    return 1
                print(f"relay tail: connection lost ({exc or type(exc).__name__}); "
                      "reconnecting", file=err, flush=True)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _error_text(response: Any) -> str:
    try:
        body = await response.json(content_type=None)
        return str(body.get("error", body))
    except Exception:
        return f"HTTP {response.status}"
