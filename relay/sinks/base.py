"""The Sink interface every output implements, and the errors that steer delivery.

A sink knows one client library and nothing else. What every sink needs is written once,
outside it: relay/delivery/ owns batching, per-object order, retries and backoff, parking,
dead letters, stale events and cursors; relay/sinks/ has one helper per cross-cutting
concern (connection.py: reconnect with backoff; probe.py: health probes; redact.py:
secrets out of error text; clientlogs.py; tls.py; template.py; formats.py). A sink module
provides:

    TYPE = "webhook"                     # the <TYPE> of RUSTFS_NOTIFY_<TYPE>_<KEY>_<ID>
    class Config(SinkConfig): ...        # its own keys, typed and documented (relay/config.py)
    def create(spec: SinkSpec) -> Sink

and the sink sends in one of two ways:

- `send_event(entry)`: one event, raising `Retryable`/`Permanent` when it did not go. The
  delivery layer runs each object's events in order, objects side by side up to the sink's
  CONCURRENCY (webhook, AMQP, MQTT).
- `send_batch(batch)`: every event at once (pipelined), returning one result per entry, in
  order: None when delivered, or the `Retryable`/`Permanent` error for that entry. Raising
  instead says the whole batch failed that way (broker unreachable). The layer sends again,
  after the failed one, any later event of the same object the target acknowledged. A sink
  whose target would drop that resend as a duplicate, keeping its first copy before the
  failed event (JetStream), sets `one_per_object = True`: each call then holds at most one
  event of each object, the next only once the one before was delivered (relay/delivery/
  lanes.py, waves).

No sink keeps order, redacts secrets or schedules retries itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from relay.queue.log import LogEntry


class DeliveryError(Exception):
    """Why an event did not reach a sink. The message is shown to operators: never put a
    secret (token, password, DSN) in it."""


class Retryable(DeliveryError):
    """Try again later: network, timeout, 5xx, 429, broker unavailable."""


class Permanent(DeliveryError):
    """Trying again cannot help: 4xx, serialisation, schema. The event is dead-lettered."""


class NotSent(Retryable):
    """Held back: an earlier event of the same object failed, and this one must follow it."""

    def __init__(self, why: str = "not sent: an earlier event of this object failed") -> None:
        super().__init__(why)


Result = DeliveryError | None


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


class Sink(Protocol):
    name: str  # "<type>:<id>", the `sink` label everywhere

    async def start(self) -> None:
        """Connect. Raise Retryable when the target is unreachable (the dispatcher retries
        with backoff and marks the sink down meanwhile)."""

    async def close(self) -> None: ...

    async def health(self) -> Health:
        """A cheap reachability check, for `relay check` and readiness detail."""
        ...


class EventSink(Sink, Protocol):
    async def send_event(self, entry: LogEntry) -> None: ...


class BatchSink(Sink, Protocol):
    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]: ...


def event_time(entry: LogEntry) -> datetime:
    """The record's eventTime (RFC 3339, any precision) in UTC; when it is absent, cannot be
    read or is a zero value (year 1 from Go), the time the relay received the event."""
    text = entry.event.event_time
    if text:
        try:
            parsed = datetime.fromisoformat(text.strip())
        except ValueError:
            parsed = None
        if parsed is not None and parsed.year >= 1970:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    return datetime.fromtimestamp(entry.received_at, UTC)


def object_name(entry: LogEntry) -> str:
    """`bucket/decoded key`: what the stores use as a target's key for an object."""
    return f"{entry.event.bucket}/{entry.event.key}"


def exc_text(exc: BaseException | None) -> str:
    return "" if exc is None else (str(exc) or type(exc).__name__)


def describe(exc: BaseException) -> str:
    """`Type: message` for an error of a client library; our own errors as they are."""
    if isinstance(exc, DeliveryError):
        return exc_text(exc)
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name
