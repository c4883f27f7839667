"""The relay as operators run it: `relay serve` in its own process, events over HTTP,
delivery checked at a real HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import aiohttp
import pytest

from relay import signing
from tests.conftest import FIXTURES
from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "e2e-token-9f3"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def webhook_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_PRIMARY": "500ms",
        **extra,
    }


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict]:
    async with session.post(url, data=body, headers=AUTH) as response:
        return response.status, await response.json(content_type=None)


def ceph_put_body() -> bytes:
    raw = (FIXTURES / "ceph" / "ceph-rgw-16.2.15-objectcreated-put.http").read_bytes()
    return (
        raw[raw.index(b"\r\n\r\n") + 4 :] if b"\r\n\r\n" in raw else raw[raw.index(b"\n\n") + 2 :]
    )


async def test_minio_and_ceph_bodies_reach_the_webhook_as_minio_format(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(webhook_env(receiver)).start()
    body = minio_body("photos", "2024/cat 1.jpg", 1)
    record = json.loads(body)["Records"][0]
    assert record["s3"]["object"]["key"] == "2024%2Fcat+1.jpg"
    async with aiohttp.ClientSession() as session:
        assert (await post(session, relay.url + "/minio", body))[0] == 200
        assert (await post(session, relay.url + "/ceph", ceph_put_body()))[0] == 200
    got = await receiver.wait_for(2)
    first, second = got[0].json(), got[1].json()
    assert first["EventName"] == "s3:ObjectCreated:Put"
    assert first["Key"] == "photos/2024/cat 1.jpg"
    # the record exactly as the store sent it: same bytes inside the envelope
    assert json.dumps(first["Records"][0]) == json.dumps(record)
    sent_record = body[body.index(b'"Records": [') + len(b'"Records": [') : -2]
    assert sent_record in got[0].body
    assert second["EventName"] == "s3:ObjectCreated:Put"
    assert second["Records"][0]["eventName"] == "ObjectCreated:Put"
    assert second["Key"] == "src/photos/cat.jpg"
    assert (
        got[0].headers["webhook-id"]
        and got[0].headers["webhook-id"] != got[1].headers["webhook-id"]
    )


async def test_a_body_posted_twice_is_delivered_once_but_two_gets_are_two(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(
        webhook_env(receiver, RUSTFS_NOTIFY_WEBHOOK_CONCURRENCY_PRIMARY="1")
    ).start()
    put = minio_body("b", "k", 1)
    get_a = minio_body("b", "k", 1, event="s3:ObjectAccessed:Get").replace(
        b"REQ000000000001", b"GETREQ-A"
    )
    get_b = minio_body("b", "k", 1, event="s3:ObjectAccessed:Get").replace(
        b"REQ000000000001", b"GETREQ-B"
    )
    async with aiohttp.ClientSession() as session:
        assert (await post(session, relay.url, put))[1] == {"accepted": 1, "duplicates": 0}
        assert (await post(session, relay.url, put))[1] == {"accepted": 0, "duplicates": 1}
        assert (await post(session, relay.url, get_a))[1]["accepted"] == 1
        assert (await post(session, relay.url, get_b))[1]["accepted"] == 1
        assert (await post(session, relay.url, minio_body("b", "sentinel", 2)))[0] == 200
    got = await receiver.wait_for(4)
    names = [(r.json()["EventName"], r.json()["Key"]) for r in got]
    assert names == [
        ("s3:ObjectCreated:Put", "b/k"),
        ("s3:ObjectAccessed:Get", "b/k"),
        ("s3:ObjectAccessed:Get", "b/k"),
        ("s3:ObjectCreated:Put", "b/sentinel"),
    ]


async def test_receiver_down_1000_accepted_then_all_delivered(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503
    relay = await relay_factory(
        webhook_env(receiver, RUSTFS_NOTIFY_WEBHOOK_CONCURRENCY_PRIMARY="1")
    ).start()
    async with aiohttp.ClientSession() as session:
        for n in range(1000):  # one at a time: the order of acceptance is the order sent
            status, _ = await post(session, relay.url, minio_body("bucket", f"obj-{n}", n))
            assert status == 200
    await eventually(lambda: receiver.attempts >= 3)  # it is really failing meanwhile
    assert receiver.received == []
    receiver.status = 200  # the receiver comes back; the relay is not restarted
    got = await receiver.wait_for(1000, timeout=60)
    keys = [r.json()["Key"] for r in got]
    # every one, once; order is per object (a round the receiver answered half of parks
    # the objects it refused, while the rest go on)
    assert sorted(keys) == sorted(f"bucket/obj-{n}" for n in range(1000))


async def test_kill_9_while_receiver_fails_loses_no_acknowledged_event(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503  # acknowledged events can only survive in the log
    relay = await relay_factory(webhook_env(receiver)).start()
    acked: set[str] = set()
    kill_after = random.randint(500, 3000)
    killed = asyncio.Event()

    async def one(session: aiohttp.ClientSession, n: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            if killed.is_set():
                return
            try:
                status, _ = await post(session, relay.url, minio_body("crash", f"o-{n}", n))
            except (TimeoutError, aiohttp.ClientError):
                return
            if status == 200:
                acked.add(f"crash/o-{n}")
                if len(acked) >= kill_after and not killed.is_set():
                    relay.kill()
                    killed.set()

    gate = asyncio.Semaphore(16)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, n, gate) for n in range(5000)))
    assert killed.is_set(), "the relay was never killed"
    assert len(acked) >= kill_after
    await relay.start()
    receiver.status = 200
    await eventually(lambda: acked <= {r.json()["Key"] for r in receiver.received}, timeout=120)
    delivered = [r.json()["Key"] for r in receiver.received]
    lost = acked - set(delivered)
    print(
        f"kill -9 after {len(acked)} acks: {len(delivered)} delivered, {len(lost)} lost, "
        f"{len(delivered) - len(set(delivered))} duplicates"
    )
    assert not lost


async def test_quarantine_auth_and_probe(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(webhook_env(receiver)).start()
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, relay.url + "/rustfs", b"not json")
        assert status == 202 and body["quarantined"] >= 1
        async with session.post(relay.url, data=minio_body("b", "k", 1)) as response:
            assert response.status == 401
        async with session.post(
            relay.url, data=minio_body("b", "k", 1), headers={"Authorization": "Bearer wrong"}
        ) as response:
            assert response.status == 401
        async with session.head(relay.url + "/") as response:
            assert response.status == 200
    listed = relay.cli("quarantine", "list").stdout
    assert "source=rustfs" in listed and "not JSON" in listed
    shown = json.loads(relay.cli("quarantine", "show", str(body["quarantined"])).stdout)
    assert shown["body"] == "not json"
    assert shown["headers"]["Authorization"] == "***"
    # nothing of the 401s reached the log
    stats = relay.cli("queue", "stats").stdout
    assert "events in log: 0" in stats


DESIGN_METRICS = (
    "relay_events_received_total", "relay_events_duplicate_total", "relay_ingest_rejected_total",
    "relay_ingest_commit_seconds", "relay_log_events", "relay_log_bytes", "relay_sink_pending",
    "relay_sink_oldest_pending_seconds", "relay_deliveries_total", "relay_delivery_seconds",
    "relay_retries_total", "relay_dead_letters", "relay_sink_up",
)  # fmt: skip


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels) if labels else "")) and not line.startswith("#"):
            rest = line[len(name) :]
            if labels or rest.startswith(" "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not in /metrics")


async def test_metrics_have_live_values(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(webhook_env(receiver)).start()
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            await post(session, relay.url + "/m", minio_body("m", f"k{n}", n))
        await post(session, relay.url + "/m", minio_body("m", "k0", 0))  # duplicate
        await receiver.wait_for(3)

        async def scrape() -> str:
            async with session.get(relay.url + "/metrics") as response:
                return await response.text()

        def settled(t: str) -> bool:
            return (
                metric(t, "relay_deliveries_total", 'outcome="delivered"') == 3
                and metric(t, "relay_sink_pending", 'sink="webhook:primary"') == 0
            )

        text = await eventually(lambda: _when(scrape(), settled))
    for name in DESIGN_METRICS:
        assert name in text, name
    assert metric(text, "relay_events_received_total", 'dialect="minio",source="m"') == 3
    assert metric(text, "relay_events_duplicate_total") == 1
    assert metric(text, "relay_log_events") == 3
    assert metric(text, "relay_log_bytes") > 0
    assert metric(text, "relay_sink_up", 'sink="webhook:primary"') == 1
    assert metric(text, "relay_sink_pending", 'sink="webhook:primary"') == 0
    assert metric(text, "relay_ingest_commit_seconds_count") == 4


async def _when(text_future, predicate):  # type: ignore[no-untyped-def]
    text = await text_future
    return text if predicate(text) else None


async def test_signed_ingest_needs_no_token_and_bad_signatures_are_refused(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    relay = await relay_factory(webhook_env(receiver, RELAY_INGEST_SIGNING_SECRETS=secret)).start()
    body = minio_body("signed", "k", 1)
    good = signing.sign([signing.secret_key(secret)], "msg-1", body)
    bad = {**good, "webhook-signature": "v1,AAAA"}
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.url, data=body, headers=good) as r:
            assert r.status == 200
        async with session.post(relay.url, data=body, headers=bad) as r:
            assert r.status == 401
            assert "signature" in (await r.json())["error"]
    assert (await receiver.wait_for(1))[0].json()["Key"] == "signed/k"
