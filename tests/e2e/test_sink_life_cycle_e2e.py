"""A sink removed from the configuration, and configured again: it pins nothing while gone,
is told by a relay:MissedEvents marker what retention pruned meanwhile, and `relay sinks
forget` removes what the log keeps for it. The relay as a subprocess, real receivers."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from tests.support.bodies import records_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "life-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sinks_env(**receivers: Receiver) -> dict[str, str]:
    # Near its high-water mark (90 % of RELAY_MAX_EVENTS) the log prunes every event no
    # configured sink still needs, whatever RELAY_RETENTION says: pruning without a wait,
    # while an orphan's state is kept for the retention.
    env = {"RELAY_AUTH_TOKENS": TOKEN, "RELAY_RETENTION": "1h", "RELAY_MAX_EVENTS": "33"}
    for ident, receiver in receivers.items():
        env[f"RUSTFS_NOTIFY_WEBHOOK_ENABLE_{ident}"] = "on"
        env[f"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_{ident}"] = receiver.url
        env[f"RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_{ident}"] = "300ms"
    return env


async def post(relay: RelayProcess, first: int, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        body = records_body("b", [(f"k{n}", n) for n in range(first, first + count)])
        async with session.post(relay.url, data=body, headers=AUTH) as response:
            assert response.status == 200


async def log_events(relay: RelayProcess) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/metrics") as response:
            text = await response.text()
    line = next(x for x in text.splitlines() if x.startswith("relay_log_events "))
    return float(line.split()[1])


async def test_a_sink_configured_again_after_retention_pruned_its_backlog_gets_a_marker(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    a, b = await Receiver().start(), await Receiver(status=503).start()
    try:
        relay = relay_factory(sinks_env(A=a, B=b))
        await relay.start()
        await post(relay, 0, 30)
        await a.wait_for(30)
        await eventually(lambda: b.attempts >= 1)
        assert await relay.stop() == 0

        relay.env = {k: v for k, v in relay.env.items() if not k.endswith("_B")}
        await relay.start()  # B removed: an orphan, it pins nothing
        assert "no longer configured" in relay.logs()
        # B's 30 undelivered events pinned nothing: retention prunes them (with a delivery
        # worker, maybe before the first scrape, so no nonzero reading is awaited first)
        await eventually(lambda: _is_zero(log_events(relay)), timeout=40)
        assert "webhook:b" in relay.cli("queue", "stats").stdout
        assert await relay.stop() == 0

        relay.env.update(sinks_env(A=a, B=b))
        relay.env["RUSTFS_NOTIFY_WEBHOOK_START_B"] = "earliest"  # resume where it was
        b.status = 200
        await relay.start()
        await post(relay, 30, 2)
        got = await b.wait_for(3)
        marker = got[0].json()
        assert marker["EventName"] == "relay:MissedEvents"
        record = marker["Records"][0]
        assert (record["reason"], record["first_seq"], record["last_seq"]) == ("pruned", 1, 30)
        assert record["count"] is None  # pruned before anyone could count them for B
        assert sorted(r.json()["Key"] for r in got[1:]) == ["b/k30", "b/k31"]
    finally:
        await a.stop()
        await b.stop()


async def _is_zero(value: object) -> bool:
    return await value == 0  # type: ignore[misc]


async def test_sinks_forget_removes_what_the_log_keeps_for_an_orphan(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    a, b = await Receiver().start(), await Receiver(status=400).start()
    try:
        relay = relay_factory(sinks_env(A=a, B=b))
        await relay.start()
        await post(relay, 0, 20)
        await a.wait_for(20)
        await eventually(
            lambda: relay.cli("dlq", "list", "--sink", "webhook:b").stdout.count("b/k") == 20
        )
        assert await relay.stop() == 0
        relay.env = {k: v for k, v in relay.env.items() if not k.endswith("_B")}
        refused = relay.cli("sinks", "forget", "webhook:a", check=False)
        assert refused.returncode != 0 and "is configured" in refused.stderr
        out = relay.cli("sinks", "forget", "webhook:b").stdout
        assert "20 dead letters" in out
        assert "webhook:b" not in relay.cli("queue", "stats").stdout
        missing = relay.cli("sinks", "forget", "webhook:b", check=False)
        assert missing.returncode != 0 and "holds nothing" in missing.stderr
    finally:
        await a.stop()
        await b.stop()
