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

import asyncio
from collections.abc import Awaitable, Callable, Sequence
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


async def send_each(
    batch: Sequence[LogEntry],
    deliver: Callable[[LogEntry], Awaitable[None]],
    concurrency: int,
) -> list[Result]:
    """Deliver entries one by one, up to `concurrency` at once, keeping the order of the
    entries of one (bucket, key): each key is a lane, lanes run in parallel, and a lane
    stops at its first failure so a later event of that object never overtakes it."""
    results: list[Result] = [None] * len(batch)
    if concurrency == 1:
        # strictly in seq order: nothing overtakes a failed event
        await _run_lane(batch, list(range(len(batch))), deliver, results, None)
        return results
    lanes: dict[tuple[str, str], list[int]] = {}
    for index, entry in enumerate(batch):
        lanes.setdefault((entry.event.bucket, entry.event.key), []).append(index)
    gate = asyncio.Semaphore(concurrency)
    await asyncio.gather(*(_run_lane(batch, ix, deliver, results, gate) for ix in lanes.values()))
    return results


async def _run_lane(
    batch: Sequence[LogEntry],
    indexes: list[int],
    deliver: Callable[[LogEntry], Awaitable[None]],
    results: list[Result],
    gate: asyncio.Semaphore | None,
) -> None:
    for position, index in enumerate(indexes):
        try:
            if gate is None:
                await deliver(batch[index])
            else:
                async with gate:
                    await deliver(batch[index])
        except DeliveryError as exc:
            results[index] = exc
        except Exception as exc:  # a bug or an unclassified client error
            results[index] = Retryable(f"{type(exc).__name__}: {exc}")
        failure = results[index]
        if failure is not None:
            skipped = Retryable(f"not sent: an earlier event failed ({exc_text(failure)})")
            for later in indexes[position + 1 :]:
                results[later] = skipped
            return


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
