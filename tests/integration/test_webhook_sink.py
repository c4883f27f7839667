"""The webhook sink against a real HTTP receiver, driven by the real dispatcher and log."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from relay import metrics, signing
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.receiver import Received, Receiver
from tests.support.waiting import eventually

# on both logs: SQLite, and a replicated JetStream log on a 3-node cluster
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]


def env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_T": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_T": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_T": "200ms",
        **{f"RUSTFS_NOTIFY_WEBHOOK_{k}_T": v for k, v in extra.items()},
    }


async def test_2xx_delivers_with_headers_and_token(tmp_path: Path, receiver: Receiver) -> None:
    async with pipeline(tmp_path, env(receiver, AUTH_TOKEN="tok123")) as pipe:
        events = [minio_event("b", f"k{n}", n) for n in range(5)]
        await pipe.append(events)
        got = await receiver.wait_for(5)
        await pipe.settled()
    assert sorted(r.json()["Key"] for r in got) == [f"b/k{n}" for n in range(5)]
    by_id = {r.headers["webhook-id"]: r for r in got}
    assert set(by_id) == {e.event_id for e in events}
    assert got[0].headers["Authorization"] == "Bearer tok123"
    assert got[0].headers["Content-Type"] == "application/json"


async def test_two_word_token_is_sent_as_written(tmp_path: Path, receiver: Receiver) -> None:
    async with pipeline(tmp_path, env(receiver, AUTH_TOKEN="Basic dXNlcjpwdw==")) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        got = await receiver.wait_for(1)
    assert got[0].headers["Authorization"] == "Basic dXNlcjpwdw=="


async def test_5xx_then_2xx_is_retried_until_delivered(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = lambda attempt: 503 if attempt <= 4 else 200
    async with pipeline(tmp_path, env(receiver, CONCURRENCY="1")) as pipe:
        await pipe.append([minio_event("b", "k1", 1), minio_event("b", "k2", 2)])
        got = await receiver.wait_for(2)
        await pipe.settled()
        assert await pipe.dead_letters() == []
    assert [r.json()["Key"] for r in got] == ["b/k1", "b/k2"]
    assert receiver.attempts >= 6


async def test_4xx_goes_to_the_dead_letters_and_the_rest_flows(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = lambda attempt: 400 if attempt == 1 else 200
    async with pipeline(tmp_path, env(receiver, CONCURRENCY="1")) as pipe:
        await pipe.append([minio_event("b", f"k{n}", n) for n in range(3)])
        got = await receiver.wait_for(2)
        await pipe.settled()
        dead = await pipe.dead_letters()
    assert [r.json()["Key"] for r in got] == ["b/k1", "b/k2"]
    assert len(dead) == 1 and dead[0][1].startswith("HTTP 400")


async def test_timeout_is_retryable(tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay = 1.0
    receiver.status = lambda attempt: 200
    async with pipeline(tmp_path, env(receiver, TIMEOUT="300ms")) as pipe:
        await pipe.append([minio_event("b", "slow", 1)])
        await receiver.wait_for(1)  # the receiver got it, but answered too late
        receiver.delay = 0.0
        await pipe.settled()
        assert await pipe.dead_letters() == []
        errors = await pipe.retries()
    assert errors == 0
    assert receiver.attempts >= 2  # at least once more after the timeout


async def test_max_attempts_dead_letters_a_retryable_failure(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 503
    async with pipeline(tmp_path, env(receiver, MAX_ATTEMPTS="2")) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await pipe.settled()
        dead = await pipe.dead_letters()
    assert len(dead) == 1 and "HTTP 503" in dead[0][1]


async def test_signed_requests_verify_with_the_standard_algorithm(
    tmp_path: Path, receiver: Receiver
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    async with pipeline(tmp_path, env(receiver, SIGNING_SECRET=secret)) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        got = await receiver.wait_for(1)
    signing.verify([signing.secret_key(secret)], got[0].headers, got[0].body)
    with pytest.raises(signing.SignatureError):
        signing.verify([b"another key"], got[0].headers, got[0].body)


async def test_cloudevents_binary_mode(tmp_path: Path, receiver: Receiver) -> None:
    event = minio_event("b", "dir/k.txt", 1)
    async with pipeline(
        tmp_path, env(receiver, FORMAT="cloudevents", CLOUDEVENTS_MODE="binary")
    ) as pipe:
        await pipe.append([event])
        got = await receiver.wait_for(1)
    assert got[0].body == event.record
    assert got[0].headers["ce-type"] == "com.amazonaws.s3.ObjectCreated:Put"
    assert got[0].headers["ce-subject"] == "dir/k.txt"
    assert got[0].headers["ce-id"] == event.event_id


# -- per-object order and parking, against the real receiver -------------------------------------


def _arrivals(got: list[Received], key: str) -> list[int]:
    """The `n` of one object's events (tests.support.bodies: size = 100 + n) in arrival order."""
    sizes = [r.json()["Records"][0]["s3"]["object"]["size"] for r in got if r.json()["Key"] == key]
    return [size - 100 for size in sizes]


async def test_concurrent_lanes_keep_each_objects_order_around_a_failing_object(
    tmp_path: Path, receiver: Receiver
) -> None:
    """CONCURRENCY=8 and an object whose first five POSTs get 500: every object's events
    arrive in order, each once (a one-event-at-a-time sink never sends past a failure, so
    nothing is resent), the other objects while it fails."""
    failures = {"left": 5}

    def refuse(body: dict[str, object]) -> bool:
        if body["Key"] == "b/k3" and failures["left"] > 0:
            failures["left"] -= 1
            return True
        return False

    receiver.refuse = refuse
    before = _resends("webhook:t")
    events = [minio_event("b", f"k{n % 8}", n) for n in range(160)]
    async with pipeline(tmp_path, env(receiver, CONCURRENCY="8", BATCH_SIZE="20")) as pipe:
        await pipe.append(events)
        got = await receiver.wait_for(160)
        await pipe.settled()
    for k in range(8):
        assert _arrivals(got, f"b/k{k}") == list(range(k, 160, 8)), k
    assert _resends("webhook:t") - before == 0


def _resends(sink: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_resends_total", {"sink": sink}) or 0.0


async def _parked(pipe: Pipeline, count: int) -> bool:
    return (await pipe.stats()).parked == count


async def _latencies(tmp_path: Path, receiver: Receiver, *, poisoned: bool) -> list[float]:
    """Events at a steady 250/s over 40 objects for 4 s; the delivery latency (append to
    arrival) of every event of the healthy objects. With `poisoned`, the receiver answers
    500 for ever to one object, which gets a tenth of the events."""
    receiver.received.clear()
    receiver.refuse = (lambda body: body["Key"] == "b/poison") if poisoned else None
    appended: dict[str, float] = {}
    total, rate = 1000, 250.0
    env_ = env(receiver, CONCURRENCY="8", BATCH_SIZE="50")
    async with pipeline(tmp_path / ("p" if poisoned else "h"), env_) as pipe:
        started = time.monotonic()
        for n in range(total):
            key = "poison" if n % 10 == 3 else f"k{n % 40}"
            event = minio_event("b", key, n)
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))  # pacing
            appended[event.event_id] = time.monotonic()
            await pipe.append([event])
        healthy = total - total // 10
        got = await receiver.wait_for(healthy)
        if poisoned:  # every event of the failing object waits, parked
            await eventually(lambda: _parked(pipe, total // 10))
    return sorted(r.at - appended[r.headers["webhook-id"]] for r in got[:healthy])


async def test_an_object_refused_for_ever_is_parked_and_the_others_keep_their_latency(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The head-of-line block the stores' own queues have: one object the receiver always
    refuses. Its events are parked; every other object's events arrive, and their delivery
    latency is printed beside a run without the failing object (same rate, same receiver)."""
    without = await _latencies(tmp_path, receiver, poisoned=False)
    with_poison = await _latencies(tmp_path, receiver, poisoned=True)

    def p(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    print(
        f"\nwebhook, 250 events/s, 40 objects, CONCURRENCY=8: healthy objects' delivery "
        f"latency p50/p99 {p(with_poison, 0.5):.1f}/{p(with_poison, 0.99):.1f} ms with one "
        f"object refused for ever, {p(without, 0.5):.1f}/{p(without, 0.99):.1f} ms without "
        f"(p99 ratio {p(with_poison, 0.99) / max(p(without, 0.99), 0.001):.2f}x)"
    )
    assert len(with_poison) == len(without) == 900
