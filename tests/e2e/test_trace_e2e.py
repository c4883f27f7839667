"""Where is my event: `relay trace` and GET /admin/api/trace against a running relay whose
sinks each hold the same events in a different state: delivered, waiting (paused), parked and
retrying (a receiver that refuses one object), dead-lettered (a 4xx), queued again (a dead
letter retried to another sink), filtered by a rule (the failing condition named), shed (a
bound with ON_FULL=shed) and stale (STALE=drop). Real webhook receivers on loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.support.bodies import records_body
from tests.support.nats_cluster import Cluster, drop_log
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "trace-ingest-31c"
ADMIN = "trace-admin-7d2"
SINKS = ("ok", "held", "picky", "strict", "images", "bounded")
X = "invoices/2026/03/x.pdf"


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, Receiver]]:
    made = {
        "ok": Receiver(),
        "held": Receiver(),
        "picky": Receiver(refuse=lambda body: body["Key"].endswith("stuck.pdf")),  # 500
        "strict": Receiver(status=400),
        "images": Receiver(),
        "bounded": Receiver(status=503),
    }
    for receiver in made.values():
        await receiver.start()
    yield made
    for receiver in made.values():
        await receiver.stop()


def environment(receivers: dict[str, Receiver]) -> dict[str, str]:
    env = {
        "RELAY_AUTH_TOKENS": TOKEN, "RELAY_ADMIN_TOKENS": ADMIN,
        # images gets .jpg objects only; the others every event
        "RELAY_RULE_IMAGES_SUFFIX": ".jpg", "RELAY_RULE_IMAGES_SINKS": "webhook:images",
        "RELAY_RULE_REST_SINKS": ",".join(f"webhook:{s}" for s in SINKS if s != "images"),
        "RUSTFS_NOTIFY_WEBHOOK_STALE_OK": "drop",
        # a failure is retried an hour later: what the trace shows holds still meanwhile
        "RUSTFS_NOTIFY_WEBHOOK_RETRY_SCHEDULE_PICKY": "1h",
        "RUSTFS_NOTIFY_WEBHOOK_MAX_BACKLOG_BOUNDED": "3",
        "RUSTFS_NOTIFY_WEBHOOK_ON_FULL_BOUNDED": "shed",
    }  # fmt: skip
    for name, receiver in receivers.items():
        env[f"RUSTFS_NOTIFY_WEBHOOK_ENABLE_{name.upper()}"] = "on"
        env[f"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_{name.upper()}"] = receiver.url
    return env


async def call(relay: RelayProcess, method: str, path: str, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, relay.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def post(relay: RelayProcess, body: bytes) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            relay.url + "/minio", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 200, await response.text()


async def api_trace(relay: RelayProcess, query: str) -> dict[str, Any]:
    return dict(await call(relay, "GET", f"/admin/api/trace?q={quote(query)}"))


def states(answer: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {(e["seq"], s["sink"]): s for e in answer["events"] for s in e["sinks"]}


@pytest.fixture(params=["sqlite", "jetstream"])
async def log_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The relay's log: the embedded SQLite one, or a replicated one on the session's
    3-node JetStream cluster (removed afterwards)."""
    if request.param == "sqlite":
        yield {}
        return
    cluster: Cluster = request.getfixturevalue("log_cluster")
    name = "trace" + uuid.uuid4().hex[:8]
    yield {"RELAY_LOG": cluster.urls, "RELAY_LOG_NAME": name, "RELAY_MAX_BYTES": "64MiB"}
    await drop_log(cluster.urls, name)


async def test_trace_says_where_an_event_is_for_every_sink(
    receivers: dict[str, Receiver],
    relay_factory: Callable[..., RelayProcess],
    log_env: dict[str, str],
) -> None:
    relay = await relay_factory({**environment(receivers), **log_env}).start(timeout=60)
    await call(relay, "POST", "/admin/api/sinks/webhook:held/pause")
    # seqs 1-5 in one request (a round sees several objects: one failing object is parked),
    # then seq 6: an event of late.pdf older, by its sequencer, than seq 5
    await post(relay, records_body("invoices", [
        ("2026/03/x.pdf", 10), ("2026/03/stuck.pdf", 11), ("2026/03/other.pdf", 12),
        ("2026/03/stuck.pdf", 13), ("2026/03/late.pdf", 20),
    ]))  # fmt: skip
    await receivers["ok"].wait_for(4)
    await post(relay, records_body("invoices", [("2026/03/late.pdf", 15)]))

    async def settled() -> bool:
        s = states(await api_trace(relay, X))
        stuck = states(await api_trace(relay, "invoices/2026/03/stuck.pdf"))
        late = states(await api_trace(relay, "invoices/2026/03/late.pdf"))
        return (
            s[(1, "webhook:strict")]["state"] == "dead-lettered"
            and s[(1, "webhook:bounded")]["state"] == "shed"
            and s[(1, "webhook:picky")]["state"] == "delivered"
            and stuck[(4, "webhook:picky")]["state"] == "parked"
            and late[(6, "webhook:ok")]["state"] == "stale"
            and late[(6, "webhook:picky")]["state"] == "delivered"
            and late[(6, "webhook:strict")]["state"] == "dead-lettered"
        )

    await eventually(settled, timeout=30)
    other = await call(relay, "GET", "/admin/api/dlq?sink=webhook:strict&prefix=2026/03/other")
    [letter] = other["dead_letters"]
    await call(
        relay, "POST", "/admin/api/dlq/retry", json={"id": letter["id"], "to": "webhook:held"}
    )

    # the object's event, one state per sink
    text = relay.cli("trace", X).stdout
    assert text.startswith("seq 1  s3:ObjectCreated:Put  invoices/2026/03/x.pdf\n"), text
    assert "on POST /minio (minio), event id " in text
    assert "duplicates of it: not counted by the log" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  webhook:")}
    assert " delivered " in lines["webhook:ok"] and "delivered by " in lines["webhook:ok"]
    assert " waiting " in lines["webhook:held"]
    assert (
        "0 events of the sink ahead of it; the sink is paused (operator)" in lines["webhook:held"]
    )
    assert " dead-lettered " in lines["webhook:strict"] and "HTTP 400" in lines["webhook:strict"]
    assert "no retry under way" in lines["webhook:strict"]
    assert lines["webhook:images"].split(None, 2)[1:] == [
        "filtered", 'rule "images": suffix ".jpg" does not match key "2026/03/x.pdf"']  # fmt: skip
    assert " shed " in lines["webhook:bounded"]
    assert "past the sink's MAX_BACKLOG (ON_FULL=shed)" in lines["webhook:bounded"]
    assert "relay:MissedEvents marker" in lines["webhook:bounded"]

    x = states(json.loads(relay.cli("trace", X, "--json").stdout))
    assert x[(1, "webhook:ok")]["delivered_by"] is not None
    assert x[(1, "webhook:held")]["ahead"] == 0
    assert x[(1, "webhook:held")]["paused"] == "operator"
    assert x[(1, "webhook:images")]["why_not"] == [
        'rule "images": suffix ".jpg" does not match key "2026/03/x.pdf"']  # fmt: skip
    shed = x[(1, "webhook:bounded")]["shed"]
    assert shed["reason"] == "max_backlog" and shed["first_seq"] == 1 and shed["last_seq"] >= 3
    assert x[(1, "webhook:strict")]["dead_letter"]["retrying_to"] is None

    # parked behind the failing event of its object, which waits for its next attempt
    stuck = states(json.loads(relay.cli("trace", "invoices/2026/03/stuck.pdf", "--json").stdout))
    head, behind = stuck[(2, "webhook:picky")], stuck[(4, "webhook:picky")]
    assert head["state"] == "retrying" and head["retry"]["attempts"] == 1
    assert head["retry"]["error"].startswith("HTTP 500")
    assert behind["state"] == "parked" and behind["retry"] == head["retry"]
    assert behind["detail"].startswith("parked behind seq 2 of its object, which failed 1 time")
    assert stuck[(2, "webhook:ok")]["state"] == "delivered"

    # a dead letter retried to another sink: queued again there (paused: it stays queued)
    other = states(json.loads(relay.cli("trace", "3", "--json").stdout))
    assert other[(3, "webhook:strict")]["dead_letter"]["retrying_to"] == "webhook:held"
    assert other[(3, "webhook:strict")]["detail"].endswith("a retry is under way to webhook:held")
    assert other[(3, "webhook:held")]["state"] == "queued again"
    assert other[(3, "webhook:held")]["detail"].startswith(
        "queued again (a dead letter of webhook:strict retried)")  # fmt: skip

    # stale: STALE=drop left it out, the others delivered it marked
    late = states(json.loads(relay.cli("trace", "invoices/2026/03/late.pdf", "--json").stdout))
    assert late[(6, "webhook:ok")]["detail"].startswith("not sent: older than seq 5 of its object")
    assert late[(6, "webhook:picky")]["stale"] is True
    assert "it was marked stale (STALE=flag)" in late[(6, "webhook:picky")]["detail"]
    assert late[(6, "webhook:held")]["detail"].endswith(
        "the sink will have had a newer event of its object (seq 5): it will be marked stale "
        "(STALE=flag)")  # fmt: skip
    assert late[(5, "webhook:held")]["ahead"] == 4  # seqs 1-4: every one is for it
    sizes = [r.json()["Records"][0]["s3"]["object"]["size"] for r in receivers["ok"].received]
    assert 115 not in sizes and 120 in sizes  # seq 6 (n=15) never reached it

    # the same answers through the admin API, and by event id
    for query in (X, "invoices/2026/03/stuck.pdf", "3", "invoices/2026/03/late.pdf"):
        assert json.loads(relay.cli("trace", query, "--json").stdout) == await api_trace(
            relay, query
        )
    by_id = json.loads(relay.cli("trace", x_id := (await api_trace(relay, X))["events"][0]["event_id"],
                                 "--json").stdout)  # fmt: skip
    assert [e["seq"] for e in by_id["events"]] == [1] and by_id["query"] == x_id

    # nothing matched: exit status 1, and what the log knows
    missing = relay.cli("trace", "invoices/2026/03/none.pdf", check=False)
    assert missing.returncode == 1
    assert missing.stdout.startswith("no event of invoices/2026/03/none.pdf in the log")
    beyond = relay.cli("trace", "99", check=False)
    assert (beyond.returncode, beyond.stdout) == (1, "no event has seq 99: the newest in the log "
                                                     "is seq 6\n")  # fmt: skip
    bad = relay.cli("trace", "invoices", check=False)
    assert bad.returncode == 1 and "names no event" in bad.stderr
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/admin/api/trace?q=invoices",
                               headers={"Authorization": f"Bearer {ADMIN}"}) as response:  # fmt: skip
            assert response.status == 400
            assert "names no event" in (await response.json())["error"]
        async with session.get(relay.url + f"/admin/api/trace?q={quote(X)}") as response:
            assert response.status == 401  # the admin token, as every admin route
