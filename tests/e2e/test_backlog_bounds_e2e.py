"""Every sink's backlog in bounds: ON_FULL=shed lets a dead sink's oldest events go with an
explicit relay:MissedEvents marker, ON_FULL=block refuses ingest naming the sink; the relay
as a subprocess, real webhook receivers on loopback."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from tests.support.bodies import records_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "bounds-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def two_webhooks(healthy: Receiver, bounded: Receiver, **bounded_keys: str) -> dict[str, str]:
    env = {"RELAY_AUTH_TOKENS": TOKEN}
    for ident, receiver in (("HEALTHY", healthy), ("BOUNDED", bounded)):
        env[f"RUSTFS_NOTIFY_WEBHOOK_ENABLE_{ident}"] = "on"
        env[f"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_{ident}"] = receiver.url
        env[f"RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_{ident}"] = "300ms"
    for key, value in bounded_keys.items():
        env[f"RUSTFS_NOTIFY_WEBHOOK_{key}_BOUNDED"] = value
    return env


async def post_all(relay: RelayProcess, total: int) -> list[int]:
    """`total` events, 100 records per request, in order; the status of every answer."""
    statuses = []
    async with aiohttp.ClientSession() as session:
        for start in range(0, total, 100):
            body = records_body("b", [(f"k{n % 50}", n) for n in range(start, start + 100)])
            async with session.post(relay.url, data=body, headers=AUTH) as response:
                statuses.append(response.status)
    return statuses


def n_of(record: dict[str, object]) -> int:
    return int(record["s3"]["object"]["size"]) - 100  # type: ignore[index]


async def test_shed_delivers_a_marker_then_the_last_events_and_never_refuses_ingest(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    healthy, bounded = await Receiver().start(), await Receiver(status=503).start()
    try:
        relay = await relay_factory(
            two_webhooks(healthy, bounded, ON_FULL="shed", MAX_BACKLOG="1000")
        ).start()
        statuses = await post_all(relay, 5000)
        assert set(statuses) == {200}  # a shedding sink never holds ingest
        got = await healthy.wait_for(5000, timeout=60)
        assert sorted(n_of(r.json()["Records"][0]) for r in got) == list(range(5000))
        await eventually(lambda: bounded.attempts >= 2)  # it is really down meanwhile
        bounded.status = 200
        arrived = await bounded.wait_for(1001, timeout=60)
        marker = arrived[0].json()
        assert marker["EventName"] == "relay:MissedEvents"
        missed = marker["Records"][0]
        assert (missed["count"], missed["reason"]) == (4000, "max_backlog")
        assert (missed["first_seq"], missed["last_seq"]) == (1, 4000)
        assert missed["first_time"] <= missed["last_time"]
        # then the last 1000, each object's in order (lanes run side by side)
        rest = [n_of(r.json()["Records"][0]) for r in arrived[1:]]
        assert sorted(rest) == list(range(4000, 5000))
        for k in range(50):
            mine = [n for n in rest if n % 50 == k]
            assert mine == sorted(mine)
        text = relay.cli("queue", "stats").stdout
        assert "webhook:bounded" in text
        metrics = await _scrape(relay)
        assert (
            'relay_sink_missed_events_total{reason="max_backlog",sink="webhook:bounded"} 4000.0'
            in metrics
        )
    finally:
        await healthy.stop()
        await bounded.stop()


async def test_block_refuses_ingest_naming_the_sink_and_loses_nothing(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    healthy, bounded = await Receiver().start(), await Receiver(status=503).start()
    try:
        relay = await relay_factory(
            two_webhooks(healthy, bounded, ON_FULL="block", MAX_BACKLOG="1000")
        ).start()
        accepted = 0
        refused = 0
        async with aiohttp.ClientSession() as session:
            for start in range(0, 3000, 100):
                body = records_body("b", [(f"k{n % 50}", n) for n in range(start, start + 100)])
                async with session.post(relay.url, data=body, headers=AUTH) as response:
                    if response.status == 200:
                        accepted += 100
                    else:
                        assert response.status == 503
                        assert response.headers["Retry-After"]
                        assert "webhook:bounded" in await response.text()
                        refused += 1
        assert refused and 1000 <= accepted < 3000
        async with aiohttp.ClientSession() as session:
            async with session.get(relay.url + "/readyz") as response:
                ready = await response.json()
        assert response.status == 503
        assert ready["blocked_by"] == ["webhook:bounded"] and "MAX_BACKLOG" in ready["detail"]
        metrics = await _scrape(relay)
        assert 'relay_ingest_blocked_by{sink="webhook:bounded"} 1.0' in metrics
        assert 'relay_ingest_blocked_by{sink="webhook:healthy"} 0.0' in metrics
        bounded.status = 200  # back: everything accepted arrives, and ingest opens again
        got = await bounded.wait_for(accepted, timeout=60)
        assert sorted(n_of(r.json()["Records"][0]) for r in got) == list(range(accepted))

        async def ready_again() -> bool:
            async with aiohttp.ClientSession() as session:
                async with session.get(relay.url + "/readyz") as response:
                    return response.status == 200

        await eventually(ready_again)
        assert "events missed" not in relay.logs()
    finally:
        await healthy.stop()
        await bounded.stop()


async def _scrape(relay: RelayProcess) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/metrics") as response:
            return await response.text()
