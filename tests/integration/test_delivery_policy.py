"""RETRY_SCHEDULE, RATE_LIMIT and PAUSE_AFTER through the real dispatcher and log, with a
webhook sink against a real HTTP receiver (the policy is the same for every sink). How
closely the schedule and the rate are kept is measured by bench/policy.py; here, only what
cannot hold if the policy is not applied."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from relay import metrics
from relay.delivery.dispatcher import Dispatcher
from relay.rules import Router
from tests.support.pipeline import minio_event, pipeline
from tests.support.receiver import Receiver
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]


def env(url: str, **keys: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_P": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_P": url,
        **{f"RUSTFS_NOTIFY_WEBHOOK_{k}_P": v for k, v in keys.items()},
    }


def nobody_listening() -> str:
    """A loopback URL whose port refuses connections (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def test_a_retry_schedule_spaces_the_attempts_then_dead_letters(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 503
    async with pipeline(tmp_path, env(receiver.url, RETRY_SCHEDULE="300ms,600ms,900ms")) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await eventually(lambda: _dead(pipe), timeout=30)
        dead = await pipe.dead_letters()
    assert receiver.attempts == 4  # the first attempt, one per step, nothing in between
    assert dead[0][1].startswith("HTTP 503")
    gaps = [b - a for a, b in zip(receiver.attempted_at, receiver.attempted_at[1:])]
    # never sooner than its step (how close to it: bench/policy.py)
    assert [round(g, 1) >= step for g, step in zip(gaps, (0.3, 0.6, 0.9))] == [True] * 3, gaps


async def _dead(pipe) -> bool:  # type: ignore[no-untyped-def]
    return bool(await pipe.dead_letters())


async def test_a_rate_limit_paces_a_drain_and_keeps_its_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with pipeline(tmp_path, env(receiver.url, RATE_LIMIT="200", RATE_BURST="20")) as pipe:
        await pipe.append([minio_event("b", f"k{n % 7}", n) for n in range(400)])
        got = await receiver.wait_for(400, timeout=60)
        await pipe.settled()
    # 380 events past the burst at 200/s cannot be sent in less than 1.9 s; received, the
    # first may have taken a little longer on its way than the last
    assert got[-1].at - got[0].at >= 1.8
    keys = [r.json()["Key"] for r in got]
    sizes = [r.json()["Records"][0]["s3"]["object"]["size"] for r in got]
    for k in range(7):  # each object's events in the order they were appended
        mine = [size for key, size in zip(keys, sizes) if key == f"b/k{k}"]
        assert mine == sorted(mine)


async def test_pause_after_pauses_a_sink_that_never_delivers_and_the_log_keeps_it(
    tmp_path: Path,
) -> None:
    async with pipeline(
        tmp_path, env(nobody_listening(), PAUSE_AFTER="500ms", BACKOFF_MAX="100ms")
    ) as pipe:
        d = pipe.dispatcher
        await pipe.append([minio_event("b", "k", 1), minio_event("b", "j", 2)])
        await eventually(lambda: d.paused, timeout=30)
        assert d.paused_reason == "pause_after"
        state = pipe.log.sink_state(d.name)
        assert state.paused == "pause_after" and state.failing_since is not None
        assert metrics.SINK_PAUSED.labels(d.name, "pause_after")._value.get() == 1

        # the same log read by a new dispatcher (a restart): still paused, nothing sent
        again = Dispatcher(pipe.sink, pipe.log, Router([], [d.name]), d.policy)
        await again._load_state()
        assert again.paused and again.paused_reason == "pause_after"
        assert again.failing_since == state.failing_since

        await d.resume()
        assert not d.paused and metrics.SINK_PAUSED.labels(d.name, "pause_after")._value.get() == 0
        state = pipe.log.sink_state(d.name)
        assert state.paused is None and state.failing_since is None
        # failing again: it counts afresh, and pauses again only after PAUSE_AFTER more
        await eventually(lambda: d.paused, timeout=30)


async def test_a_sink_that_delivers_now_and_then_is_never_paused(
    tmp_path: Path, receiver: Receiver
) -> None:
    # every other request refused: failures never run PAUSE_AFTER long without a delivery
    receiver.status = lambda attempt: 503 if attempt % 2 else 200
    async with pipeline(
        tmp_path, env(receiver.url, PAUSE_AFTER="300ms", BACKOFF_MAX="200ms", CONCURRENCY="1")
    ) as pipe:
        for n in range(6):
            await pipe.append([minio_event("b", f"k{n}", n)])
            await receiver.wait_for(n + 1)
        await pipe.settled()
        assert not pipe.dispatcher.paused
        # the last delivery clears the run of failures in the log after its settlement

        async def cleared() -> bool:
            state = await asyncio.to_thread(pipe.log.sink_state, pipe.dispatcher.name)
            return state.failing_since is None

        await eventually(cleared, timeout=10)
