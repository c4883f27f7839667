"""Per-object lanes: how a batch reaches a sink without an object's events overtaking each
other.

A sink either sends one event at a time (`send_event`: webhook, AMQP, MQTT) or a whole batch
(`send_batch`: Kafka, Redis, SQL, the audit trails). For the first kind the lanes are run
here: each object's events in order, one after the other, lanes side by side up to the
sink's concurrency, and a lane stops at its first failure so nothing of that object is sent
past it. The second kind hands every event over at once (pipelined), so a later event of an
object can be acknowledged while an earlier one failed; `plan.py` then sends it again after
the earlier one and counts the resend. A batch sink whose target would not take that resend
(JetStream drops it as a duplicate of the copy it already has, which stays before the
earlier event) sets `one_per_object`: its batches are sent in waves, each holding the next
event of every object whose events so far were delivered, so an object's event is handed
over only once the one before it is in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from relay.events import lane
from relay.queue.log import LogEntry
from relay.sinks.base import DeliveryError, NotSent, Result, Retryable, describe


def by_lane(batch: Sequence[LogEntry]) -> dict[tuple[str, str], list[int]]:
    """Indexes of the batch per object, each list in batch order."""
    lanes: dict[tuple[str, str], list[int]] = {}
    for index, entry in enumerate(batch):
        lanes.setdefault(lane(entry.event), []).append(index)
    return lanes


async def send_in_lanes(
    batch: Sequence[LogEntry],
    deliver: Callable[[LogEntry], Awaitable[None]],
    concurrency: int,
) -> list[Result]:
    results: list[Result] = [None] * len(batch)
    if concurrency == 1:
        # One at a time, in the log's order across objects too; an object stops at its
        # first failure, the others go on.
        failed: set[tuple[str, str]] = set()
        for index, entry in enumerate(batch):
            if lane(entry.event) in failed:
                results[index] = NotSent()
                continue
            try:
                await deliver(entry)
            except DeliveryError as exc:
                results[index] = exc
            except Exception as exc:  # a bug or an unclassified client error
                results[index] = Retryable(describe(exc))
            if results[index] is not None:
                failed.add(lane(entry.event))
        return results
    gate = asyncio.Semaphore(concurrency)

    async def run(indexes: list[int]) -> None:
        for position, index in enumerate(indexes):
            try:
                async with gate:
                    await deliver(batch[index])
            except DeliveryError as exc:
                results[index] = exc
            except Exception as exc:  # a bug or an unclassified client error
                results[index] = Retryable(describe(exc))
            if results[index] is not None:
                for later in indexes[position + 1 :]:
                    results[later] = NotSent()
                return

    await asyncio.gather(*(run(indexes) for indexes in by_lane(batch).values()))
    return results


async def send_in_waves(
    batch: Sequence[LogEntry],
    deliver: Callable[[Sequence[LogEntry]], Awaitable[list[Result]]],
) -> list[Result]:
    results: list[Result] = [None] * len(batch)
    lanes = [deque(indexes) for indexes in by_lane(batch).values()]
    while lanes:
        wave = [indexes.popleft() for indexes in lanes]
        try:
            answers = await deliver([batch[i] for i in wave])
            if len(answers) != len(wave):
                raise RuntimeError(f"sink returned {len(answers)} results for {len(wave)} events")
        except DeliveryError as exc:
            answers = [exc] * len(wave)
        except Exception as exc:  # a bug or an unclassified client error
            answers = [Retryable(describe(exc))] * len(wave)
        going = []
        for indexes, index, answer in zip(lanes, wave, answers):
            results[index] = answer
            if answer is not None:
                for later in indexes:
                    results[later] = NotSent()
            elif indexes:
                going.append(indexes)
        lanes = going
    return results
