"""The webhook sink against a real HTTP receiver, driven by the real dispatcher and log."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from relay import signing
from tests.support.pipeline import minio_event, pipeline
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


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
        errors = await pipe.log.read(lambda c: c.execute("SELECT count(*) FROM retries").fetchone())
    assert errors == (0,)
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
