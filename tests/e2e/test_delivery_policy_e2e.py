"""A sink's pause, by an operator or by its PAUSE_AFTER, kept across a restart of the relay;
the relay as a subprocess, real receivers, the admin API and /metrics as an operator reads
them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support.bodies import records_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "policy-ingest-7d31"
ADMIN = "policy-admin-2b9e"
SINK = "webhook%3Ap"


def relay_env(receiver: Receiver, **keys: str) -> dict[str, str]:
    return {
        "RELAY_AUTH_TOKENS": TOKEN,
        "RELAY_ADMIN_TOKENS": ADMIN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_P": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_P": receiver.url,
        **{f"RUSTFS_NOTIFY_WEBHOOK_{k}_P": v for k, v in keys.items()},
    }


async def post(relay: RelayProcess, first: int, count: int) -> None:
    body = records_body("b", [(f"k{n}", n) for n in range(first, first + count)])
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(relay.url, data=body, headers=headers) as response:
            assert response.status == 200


async def admin(relay: RelayProcess, method: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with session.request(method, relay.url + path, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def sink_view(relay: RelayProcess) -> dict[str, Any]:
    body = await admin(relay, "GET", "/admin/api/sinks")
    return next(s for s in body["sinks"] if s["name"] == "webhook:p")


async def paused_metric(relay: RelayProcess, reason: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/metrics") as response:
            text = await response.text()
    found = re.search(rf'^relay_sink_paused{{reason="{reason}",sink="webhook:p"}} (\S+)$', text,
                      re.M)  # fmt: skip
    assert found, "relay_sink_paused is not exported"
    return float(found.group(1))


async def test_a_pause_made_by_an_operator_survives_a_restart(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(relay_env(receiver)).start()
    body = await admin(relay, "POST", f"/admin/api/sinks/{SINK}/pause")
    assert (body["paused"], body["paused_reason"]) == (True, "operator")
    assert await relay.stop() == 0

    await relay.start()
    await post(relay, 0, 5)
    view = await sink_view(relay)
    assert (view["state"], view["paused_reason"], view["pending"]) == ("paused", "operator", 5)
    assert await paused_metric(relay, "operator") == 1
    assert receiver.attempts == 0
    assert "stays paused until an operator resumes it" in relay.logs()

    await admin(relay, "POST", f"/admin/api/sinks/{SINK}/resume")
    got = await receiver.wait_for(5)
    assert sorted(r.json()["Key"] for r in got) == [f"b/k{n}" for n in range(5)]
    assert await paused_metric(relay, "operator") == 0
    assert await relay.stop() == 0
    await relay.start()  # resumed is kept too
    await post(relay, 5, 1)
    await receiver.wait_for(6)


async def test_pause_after_pauses_a_failing_sink_across_a_restart_until_resumed(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    receiver = await Receiver(status=503).start()
    try:
        relay = relay_factory(relay_env(receiver, PAUSE_AFTER="1s", BACKOFF_MAX="200ms"))
        await relay.start()
        await post(relay, 0, 3)

        async def paused() -> bool:
            return (await sink_view(relay))["paused_reason"] == "pause_after"

        await eventually(paused, timeout=30)
        assert await paused_metric(relay, "pause_after") == 1
        assert "failed PAUSE_AFTER long without a single delivery" in relay.logs()
        attempts = receiver.attempts
        assert await relay.stop() == 0

        receiver.status = 200  # the target is back, but nobody has resumed the sink
        await relay.start()
        await post(relay, 3, 1)
        view = await sink_view(relay)
        assert (view["state"], view["pending"]) == ("paused", 4)
        assert await paused_metric(relay, "pause_after") == 1
        assert receiver.attempts == attempts

        await admin(relay, "POST", f"/admin/api/sinks/{SINK}/resume")
        got = await receiver.wait_for(4)
        assert sorted(r.json()["Key"] for r in got) == [f"b/k{n}" for n in range(4)]
        assert await paused_metric(relay, "pause_after") == 0
        assert (await sink_view(relay))["failing_since"] is None
    finally:
        await receiver.stop()
