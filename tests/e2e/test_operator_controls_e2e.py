"""Operator controls against real relay processes: one relay per data directory, the ingest
filter, and dead letters selected by filter and retried to another sink."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.relay_process import RelayProcess

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
