"""The Sink interface every output implements, and the errors that steer delivery.

A sink knows one client library and nothing else: the dispatcher (relay/dispatch.py) owns
batching, retries, backoff, dead letters and cursors. A sink module provides:

    TYPE = "webhook"                     # the <TYPE> of RUSTFS_NOTIFY_<TYPE>_<KEY>_<ID>
    OPTIONS = (Option(...), ...)         # its own keys, documented where declared
    def create(spec: SinkSpec) -> Sink

`send(batch)` returns one result per entry, in order: None when delivered, or the
`Retryable`/`Permanent` error for that entry. Raising `Retryable`/`Permanent` instead says
the whole batch failed that way (broker unreachable, serialisation error for all).
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

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]: ...

    async def close(self) -> None: ...

    async def health(self) -> Health:
        """A cheap reachability check, for `relay check` and readiness detail."""
        ...


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
