"""Operator controls against real relay processes: one relay per data directory, the ingest
filter, and dead letters selected by filter and retried to another sink."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "operator-ingest-5c21"
ADMIN = "operator-admin-90ae"
GET = "s3:ObjectAccessed:Get"


async def post(relay: RelayProcess, bodies: list[bytes]) -> list[tuple[int, Any]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(
                relay.url + "/minio", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                answers.append((response.status, await response.json()))
    return answers


def records(bucket: str, keys: list[str], first: int, event: str = "s3:ObjectCreated:Put") -> bytes:
    """One MinIO body carrying a record per key."""
    body = json.loads(minio_body(bucket, keys[0], first, event))
    body["Records"] = [json.loads(minio_body(bucket, key, first + i, event))["Records"][0]
                       for i, key in enumerate(keys)]  # fmt: skip
    return json.dumps(body).encode()


def in_log(relay: RelayProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(relay.env["RELAY_DATA_DIR"]) / "relay.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def admin_call(relay: RelayProcess, method: str, path: str, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, relay.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def metric(relay: RelayProcess, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/metrics") as response:
            text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = re.escape(f"{name}{{{wanted}}}" if labels else name)
    found = re.search(rf"^{series} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# -- one relay per data directory ---------------------------------------------------------------


async def test_a_second_relay_on_the_same_data_directory_is_turned_away(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    data = tmp_path / "data"
    first = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN}).start()
    assert first.proc is not None
    pidfile = data / "relay.pid"
    assert pidfile.read_text().strip() == str(first.proc.pid)  # for `relay reload`

    (tmp_path / "second").mkdir()
    second = relay_factory({"RELAY_AUTH_TOKENS": TOKEN, "RELAY_DATA_DIR": str(data)},
                           tmp_path / "second")  # fmt: skip
    await second.start(probe=False)
    assert second.proc is not None
    code = await asyncio.to_thread(second.proc.wait, 2)  # TimeoutExpired past 2 s
    assert code != 0, second.logs()
    refused = second.logs()
    assert f"pid {first.proc.pid}" in refused and str(data) in refused, refused
    assert "Traceback" not in refused
    assert pidfile.read_text().strip() == str(first.proc.pid)  # the holder's, untouched

    repair = first.cli("fsck", "--repair", check=False)
    assert repair.returncode != 0
    assert f"pid {first.proc.pid}" in repair.stderr and str(data) in repair.stderr
    assert "copied" not in repair.stdout  # it did not repair under the running relay

    assert await first.stop() == 0
    assert not pidfile.exists()
    third = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN, "RELAY_DATA_DIR": str(data)},
                                tmp_path / "second").start()  # fmt: skip
    assert third.proc is not None
    assert pidfile.read_text().strip() == str(third.proc.pid)
    # a relay that dies without a word leaves its pid file; the lock goes with the process
    third.kill()
    assert pidfile.exists()
    fourth = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN}).start()
    assert fourth.proc is not None
    assert pidfile.read_text().strip() == str(fourth.proc.pid)
    assert await fourth.stop() == 0
    assert first.cli("fsck", "--repair").returncode == 0  # nothing holds it now


# -- the ingest filter --------------------------------------------------------------------------


async def test_events_outside_the_ingest_filter_are_answered_counted_and_not_stored(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = await relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN,
        "RELAY_ADMIN_TOKENS": ADMIN,
        "RELAY_INGEST_EVENTS": "s3:ObjectCreated:*,s3:ObjectRemoved:*",
    }).start()  # fmt: skip
    gets = [records("photos", [f"k{b}-{i}" for i in range(500)], b * 500, GET) for b in range(20)]
    answers = await post(relay, gets)
    assert answers == [(200, {"accepted": 500, "duplicates": 0})] * 20
    assert in_log(relay, "SELECT count(*) FROM events") == [(0,)]
    assert await metric(relay, "relay_events_filtered_total", event=GET) == 10_000

    # what the filter lets through is stored as before, also beside filtered events
    mixed = json.loads(records("photos", ["a.jpg"], 20_000))
    mixed["Records"] += json.loads(records("photos", ["a.jpg"], 20_001, GET))["Records"]
    mixed["Records"] += json.loads(
        records("photos", ["a.jpg"], 20_002, "s3:ObjectRemoved:Delete"))["Records"]  # fmt: skip
    assert await post(relay, [json.dumps(mixed).encode()]) == [
        (200, {"accepted": 3, "duplicates": 0})]  # fmt: skip
    assert in_log(relay, "SELECT event_name FROM events ORDER BY seq") == [
        ("s3:ObjectCreated:Put",), ("s3:ObjectRemoved:Delete",)]  # fmt: skip
    assert await metric(relay, "relay_events_filtered_total", event=GET) == 10_001
    assert await metric(relay, "relay_events_received_total", source="minio",
                        dialect="minio") == 2  # fmt: skip

    # a quarantined body that parses once repaired is filtered as ingest filters: through
    # the CLI and through the admin API
    repaired = [records("late", ["x.txt", "y.txt"], 30_000 + 2 * n) for n in range(2)]
    answers = await post(relay, [body[:-5] for body in repaired])
    assert [status for status, _ in answers] == [202, 202]
    with sqlite3.connect(Path(relay.env["RELAY_DATA_DIR"]) / "relay.db") as conn:
        for qid, body in enumerate(repaired, 1):
            mixed = json.loads(body)
            mixed["Records"][1]["eventName"] = GET
            conn.execute("UPDATE quarantine SET body = ? WHERE id = ?",
                         (json.dumps(mixed).encode(), qid))  # fmt: skip
    retried = relay.cli("quarantine", "retry", "1").stdout
    assert "1 event(s) accepted, 1 outside RELAY_INGEST_EVENTS not stored" in retried
    async with aiohttp.ClientSession() as session:
        async with session.post(
            relay.url + "/admin/api/quarantine/retry", json={"id": 2},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as response:  # fmt: skip
            assert (await response.json())["results"] == [{
                "id": 2, "ok": True,
                "detail": "1 event(s) accepted, 1 outside RELAY_INGEST_EVENTS not stored"}]  # fmt: skip
    assert in_log(relay, "SELECT bucket, event_name FROM events WHERE bucket = 'late'") == [
        ("late", "s3:ObjectCreated:Put")] * 2  # fmt: skip


def test_an_invalid_ingest_filter_is_a_configuration_error_naming_the_variable(
    tmp_path: Path,
) -> None:
    relay = RelayProcess(tmp_path, {"RELAY_INGEST_EVENTS": "s3:ObjectCreated:*,s3:Obj*ect"})
    result = relay.cli("serve", check=False)
    assert result.returncode == 2
    assert "RELAY_INGEST_EVENTS" in result.stderr and "s3:Obj*ect" in result.stderr
    assert not (tmp_path / "data").exists()


# -- dead letters by filter, and to another sink ------------------------------------------------


@pytest.fixture
async def receivers() -> Any:
    made = [await Receiver().start() for _ in range(3)]
    yield made
    for receiver in made:
        await receiver.stop()


def webhook(sink_id: str, receiver: Receiver) -> dict[str, str]:
    return {
        f"RUSTFS_NOTIFY_WEBHOOK_ENABLE_{sink_id}": "on",
        f"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_{sink_id}": receiver.url,
        f"RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_{sink_id}": "300ms",
    }


def keys(received: list[Any]) -> list[str]:
    return sorted(r.json()["Key"] for r in received)


async def test_dead_letters_selected_by_bucket_and_time_are_retried_to_another_sink(
    receivers: list[Receiver], relay_factory: Callable[..., RelayProcess]
) -> None:
    refusing, backup, down = receivers
    refusing.status = 400  # webhook:a gives every event up at once: dead letters
    down.status = 503  # webhook:c fails, and keeps retrying
    relay = await relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN, "RELAY_ADMIN_TOKENS": ADMIN,
        "RELAY_RULE_ONLY_A_SINKS": "webhook:a",  # the log's events go to webhook:a alone
        **webhook("A", refusing), **webhook("B", backup), **webhook("C", down),
    }).start()  # fmt: skip

    def dlq(*args: str) -> str:
        return relay.cli("dlq", *args).stdout

    before = [records("keep", ["k0", "k1", "k2"], 0), records("other", ["o0", "o1"], 10)]
    assert [status for status, _ in await post(relay, before)] == [200, 200]
    await eventually(lambda: in_log(relay, "SELECT count(*) FROM dead_letters") == [(5,)])
    boundary = dt.datetime.now(dt.UTC).isoformat()  # every dead letter after it is newer
    after = [records("keep", ["k3", "k4", "k5"], 20), records("other", ["o2", "o3"], 30)]
    assert [status for status, _ in await post(relay, after)] == [200, 200]
    await eventually(lambda: in_log(relay, "SELECT count(*) FROM dead_letters") == [(10,)])

    chosen = ("--bucket", "keep", "--since", boundary)
    listed = dlq("list", *chosen, "--sink", "WEBHOOK:A", "--error", "http 400")
    assert "3 dead letter(s)" in listed and listed.count("  waiting  error: HTTP 400") == 3
    assert all(f"keep/k{n}" in listed for n in (3, 4, 5))
    assert "0 dead letter(s)" in dlq("list", *chosen, "--error", "timeout")

    # a dry run says how many would go where, and changes nothing
    assert dlq("retry", *chosen, "--to", "webhook:b", "--dry-run") == (
        "dry run: 3 dead letter(s) would be queued for redelivery (3 to webhook:b); "
        "nothing was changed\n"
    )
    assert in_log(relay, "SELECT count(*) FROM redeliveries") == [(0,)]
    assert in_log(relay, "SELECT count(*) FROM dead_letters WHERE retrying_to IS NULL") == [
        (10,)]  # fmt: skip

    assert dlq("retry", *chosen, "--to", "webhook:b") == (
        "3 dead letter(s) queued for redelivery to webhook:b\n")  # fmt: skip
    assert keys(await backup.wait_for(3)) == ["keep/k3", "keep/k4", "keep/k5"]
    assert "0 dead letter(s) queued" in dlq("retry", *chosen, "--to", "webhook:b")

    # the same through the admin API: the older dead letters of the other bucket
    selection = {"bucket": "other", "until": boundary, "error": "HTTP 400", "to": "webhook:B"}
    answer = await admin_call(relay, "POST", "/admin/api/dlq/retry",
                              json={**selection, "dry_run": True})  # fmt: skip
    assert answer == {"dry_run": True, "would_retry": 2, "to": {"webhook:b": 2}}
    assert len(backup.received) == 3
    answer = await admin_call(relay, "POST", "/admin/api/dlq/retry", json=selection)
    assert answer == {"retried": 2}
    got = await backup.wait_for(5)
    assert keys(got) == ["keep/k3", "keep/k4", "keep/k5", "other/o0", "other/o1"]
    assert all(r.json()["Records"][0]["eventName"] == "s3:ObjectCreated:Put" for r in got)
    assert refusing.received == [] and down.received == []
    # delivered there, they leave the dead letters
    retried = "SELECT seq FROM dead_letters WHERE retrying_to IS NOT NULL"
    await eventually(lambda: in_log(relay, retried) == [])

    # a sink that is down: the dead letter shows as being retried there, for as long as it
    # takes, and a purge of the others leaves it
    assert "1 dead letter(s) queued for redelivery to webhook:c" in dlq(
        "retry", "--bucket", "keep", "--prefix", "k0", "--to", "webhook:c")  # fmt: skip
    await eventually(lambda: down.attempts >= 2)
    shown = await admin_call(relay, "GET", "/admin/api/dlq", params={"bucket": "keep",
                                                                     "prefix": "k0"})  # fmt: skip
    assert [(d["key"], d["state"], d["retrying_to"]) for d in shown["dead_letters"]] == [
        ("k0", "being retried to webhook:c", "webhook:c")]  # fmt: skip
    assert "being retried to webhook:c" in dlq("list", "--prefix", "k0")
    waiting = ("--bucket", "keep", "--until", boundary)
    assert dlq("purge", *waiting, "--dry-run") == (
        "dry run: 3 dead letter(s) would be purged; nothing was changed\n")  # fmt: skip
    answer = await admin_call(relay, "POST", "/admin/api/dlq/purge",
                              json={"bucket": "keep", "until": boundary, "prefix": "k1"})  # fmt: skip
    assert answer == {"purged": 1}
    assert "1 dead letter(s) purged" in dlq("purge", "--bucket", "keep", "--prefix", "k2")
    assert "being retried to webhook:c" in dlq("list", "--bucket", "keep", "--until", boundary)
    assert in_log(relay, "SELECT r.sink, e.key FROM redeliveries r JOIN events e USING (seq)"
                  ) == [("webhook:c", "k0")]  # still queued there  # fmt: skip
    assert refusing.received == []
