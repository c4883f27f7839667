"""The admin API, the live tail and the CLI's progress bars against a real relay process:
real HTTP, effects checked in the log or at a real receiver."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
ADMIN = "admin-token-3f9c1d"
ADMIN_ROTATED = "admin-token-rotated-77a2"
TOKEN = "ingest-token-b41e"


def webhook(sink_id: str, receiver: Receiver) -> dict[str, str]:
    return {
        f"RUSTFS_NOTIFY_WEBHOOK_ENABLE_{sink_id}": "on",
        f"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_{sink_id}": receiver.url,
        f"RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_{sink_id}": "300ms",
    }


def env(*sinks: dict[str, str], **extra: str) -> dict[str, str]:
    out = {"RELAY_AUTH_TOKENS": TOKEN, "RELAY_ADMIN_TOKENS": f"{ADMIN},{ADMIN_ROTATED}"}
    for sink in sinks:
        out.update(sink)
    out.update(extra)
    return out


async def call(
    relay: RelayProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = ADMIN,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, relay.url + path, json=body, data=data, headers=sent, params=params
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def ingest(relay: RelayProcess, bodies: list[bytes], path: str = "/minio") -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(
                relay.url + path, data=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                statuses.append(response.status)
    return statuses


def in_log(relay: RelayProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(relay.workdir / "data" / "relay.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def sink_view(relay: RelayProcess, name: str) -> dict[str, Any]:
    status, body = await call(relay, "GET", "/admin/api/sinks")
    assert status == 200, body
    return next(s for s in body["sinks"] if s["name"] == name)


@pytest.fixture
async def other_receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


# -- on, off, and who may use it ------------------------------------------------------------------


async def test_admin_is_off_without_admin_tokens(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN, **webhook("MAIN", receiver)}).start()
    for method, path in (
        ("GET", "/admin/"), ("GET", "/admin"), ("GET", "/admin/api/sinks"),
        ("POST", "/admin/api/dlq/retry"), ("GET", "/admin/events/stream"),
        ("GET", "/admin/static/app.js"),
    ):  # fmt: skip
        for token in (None, TOKEN, ADMIN):
            status, _ = await call(relay, method, path, token=token)
            assert status == 404, (method, path, token)
    # a POST under /admin/ is not taken for a notification either
    status, _ = await call(relay, "POST", "/admin/api/x", token=TOKEN, data=minio_body("b", "k", 1))
    assert status == 404
    assert in_log(relay, "SELECT count(*) FROM events") == [(0,)]


async def test_admin_needs_its_own_bearer_token(
    tmp_path: Path, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(env(webhook("MAIN", receiver))).start()
    refused: list[dict[str, Any]] = [
        {"token": None},
        {"token": TOKEN},  # an ingest token
        {"token": "wrong"},
        {"token": None, "headers": {"Authorization": ADMIN}},  # bare, as MinIO audit sends
        {"token": None, "headers": {"Authorization": "Basic " + _basic(ADMIN)}},
        {"token": None, "params": {"token": ADMIN}},  # never in a URL
    ]
    for case in refused:
        status, body = await call(relay, "GET", "/admin/api/sinks", **case)
        assert status == 401, case
        assert body == {"error": "missing or wrong admin token"}
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/admin/api/dlq") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(relay.url + "/admin/events/stream") as response:
            assert response.status == 401
        # the page and its script carry no data: no token needed
        async with session.get(relay.url + "/admin/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            page = await response.text()
            assert ADMIN not in page and "/admin/static/app.js" in page
        async with session.get(relay.url + "/admin/static/app.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with session.get(relay.url + "/admin", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/admin/"
    for token in (ADMIN, ADMIN_ROTATED):  # several, for rotation
        status, body = await call(relay, "GET", "/admin/api/sinks", token=token)
        assert status == 200 and body["sinks"][0]["name"] == "webhook:main"
    # anything else under /admin/ is a 404 for the operator, a 401 for others; never an event
    assert (await call(relay, "POST", "/admin/api/nope", data=minio_body("b", "k", 1)))[0] == 404
    assert (await call(relay, "POST", "/admin/api/nope", token=TOKEN))[0] == 401
    assert (await call(relay, "GET", "/admin/api/dlq/retry"))[0] == 404
    assert in_log(relay, "SELECT count(*) FROM events") == [(0,)]

    # the admin tokens are secrets: never shown, never logged
    checked = relay.cli("check")
    assert "RELAY_ADMIN_TOKENS = ***" in checked.stdout
    for output in (checked.stdout + checked.stderr, relay.logs()):
        assert ADMIN not in output and ADMIN_ROTATED not in output

    # an admin token that is also an ingest token is a configuration error
    (tmp_path / "clash").mkdir()
    clash = RelayProcess(tmp_path / "clash", env(webhook("MAIN", receiver),
                                                 RELAY_ADMIN_TOKENS=f"x,{TOKEN}"))  # fmt: skip
    result = clash.cli("check", check=False)
    assert result.returncode == 2
    assert "RELAY_ADMIN_TOKENS" in result.stderr and TOKEN not in result.stderr


def _basic(password: str) -> str:
    import base64

    return base64.b64encode(f"user:{password}".encode()).decode()


# -- queue stats and dead letters -----------------------------------------------------------------


async def test_dead_letters_listed_shown_retried_and_purged_through_the_api(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 400  # every event is refused: dead letters
    relay = await relay_factory(env(webhook("MAIN", receiver))).start()
    assert await ingest(relay, [minio_body("b", f"k{n}", n) for n in range(4)]) == [200] * 4

    async def dead() -> int:
        return int((await sink_view(relay, "webhook:main"))["dead_letters"])

    await eventually(lambda: _equals(dead(), 4))
    view = await sink_view(relay, "webhook:main")
    assert view["state"] == "up" and view["paused"] is False
    assert (view["cursor"], view["pending"], view["oldest_pending_age"]) == (4, 0, None)
    stats = relay.cli("queue", "stats").stdout  # the CLI reads the same numbers
    assert re.search(r"webhook:main\s+4\s+0\s+-\s+4", stats), stats

    status, listed = await call(relay, "GET", "/admin/api/dlq")
    assert status == 200
    letters = listed["dead_letters"]
    assert [(d["bucket"], d["key"]) for d in letters] == [("b", f"k{n}") for n in range(4)]
    assert all("HTTP 400" in d["error"] and d["sink"] == "webhook:main" for d in letters)
    assert (await call(relay, "GET", "/admin/api/dlq", params={"sink": "webhook:x"}))[1] == {
        "dead_letters": []
    }
    assert len((await call(relay, "GET", "/admin/api/dlq", params={"limit": "2"}))[1][
        "dead_letters"]) == 2  # fmt: skip
    ids = [d["id"] for d in letters]
    status, shown = await call(relay, "GET", f"/admin/api/dlq/{ids[0]}")
    assert status == 200 and shown["key"] == "k0" and len(shown["event_id"]) == 32
    assert json.loads(shown["record"])["s3"]["object"]["key"] == "k0"
    assert (await call(relay, "GET", "/admin/api/dlq/99999"))[0] == 404

    for bad in ({}, {"id": "seven"}, {"id": True}, {"sink": 3}):
        status, body = await call(relay, "POST", "/admin/api/dlq/retry", bad)
        assert status == 400, (bad, body)
    status, body = await call(relay, "POST", "/admin/api/dlq/retry", data=b"not json")
    assert status == 400 and "JSON" in body["error"]

    receiver.status = 200  # the cause is fixed
    assert await call(relay, "POST", "/admin/api/dlq/retry", {"id": ids[0]}) == (
        200, {"retried": 1})  # fmt: skip
    # the retried one stays until delivered, marked as being retried; the others wait
    assert in_log(relay, "SELECT count(*) FROM dead_letters WHERE retrying_to IS NULL") == [(3,)]
    assert [r.json()["Key"] for r in await receiver.wait_for(1)] == ["b/k0"]

    assert await call(relay, "POST", "/admin/api/dlq/purge", {"id": ids[1]}) == (
        200, {"purged": 1})  # fmt: skip
    assert in_log(relay, "SELECT seq FROM dead_letters WHERE retrying_to IS NULL ORDER BY seq"
                  ) == [(3,), (4,)]  # fmt: skip
    assert await call(relay, "POST", "/admin/api/dlq/retry", {"sink": "webhook:main"}) == (
        200, {"retried": 2})  # fmt: skip
    got = await receiver.wait_for(3)
    assert sorted(r.json()["Key"] for r in got) == ["b/k0", "b/k2", "b/k3"]  # k1 was purged
    # delivered, the retried ones leave the dead letters: nothing is left to purge
    await eventually(lambda: in_log(relay, "SELECT count(*) FROM dead_letters") == [(0,)])
    assert await call(relay, "POST", "/admin/api/dlq/purge", {"all": True}) == (
        200, {"purged": 0})  # fmt: skip

    async def delivering() -> bool:
        view = await sink_view(relay, "webhook:main")
        return view["delivered_total"] == 3 and view["delivery_rate"] > 0 and view["pending"] == 0

    await eventually(delivering)
    assert len(receiver.received) == 3


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


# -- quarantine -----------------------------------------------------------------------------------


async def test_quarantine_listed_shown_and_retried_through_the_api(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(env(webhook("MAIN", receiver))).start()
    good = minio_body("q", "late.txt", 7)
    garbage = b"\xff\xfe not even utf-8"
    assert await ingest(relay, [good[:-5], garbage]) == [202, 202]
    status, listed = await call(relay, "GET", "/admin/api/quarantine")
    assert status == 200
    bodies = listed["quarantine"]
    assert [(q["id"], q["source"], q["size"]) for q in bodies] == [
        (1, "minio", len(good) - 5), (2, "minio", len(garbage))]  # fmt: skip
    status, shown = await call(relay, "GET", "/admin/api/quarantine/1")
    assert status == 200 and shown["body"] == good[:-5].decode()
    assert shown["headers"]["Authorization"] == "***"  # the sender's token is not kept
    assert (await call(relay, "GET", "/admin/api/quarantine/42"))[0] == 404
    assert (await call(relay, "POST", "/admin/api/quarantine/retry", {}))[0] == 400

    status, body = await call(relay, "POST", "/admin/api/quarantine/retry", {"all": True})
    assert status == 200
    assert [(r["id"], r["ok"]) for r in body["results"]] == [(1, False), (2, False)]
    assert all("still unreadable" in r["detail"] for r in body["results"])

    # an operator repairs the stored body (here: directly in the log) and retries it
    with sqlite3.connect(relay.workdir / "data" / "relay.db") as conn:
        conn.execute("UPDATE quarantine SET body = ? WHERE id = 1", (good,))
    status, body = await call(relay, "POST", "/admin/api/quarantine/retry", {"id": 1})
    assert status == 200
    assert body == {"results": [{"id": 1, "ok": True, "detail": "1 event(s) accepted"}]}
    got = await receiver.wait_for(1)
    assert got[0].json()["Key"] == "q/late.txt"
    assert in_log(relay, "SELECT id FROM quarantine") == [(2,)]
    assert in_log(relay, "SELECT bucket, key FROM events") == [("q", "late.txt")]
    # retried again (say, by a second operator): nothing is stored twice
    status, body = await call(relay, "POST", "/admin/api/quarantine/retry", {"id": 1})
    assert body["results"][0] == {"id": 1, "ok": False, "detail": "no such quarantined body"}


# -- replay ---------------------------------------------------------------------------------------


async def test_replay_backfills_another_sink_that_the_rules_kept_away(
    receiver: Receiver, other_receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = receiver, other_receiver
    relay = await relay_factory(env(
        webhook("A", a), webhook("B", b), RELAY_RULE_ONLY_A_SINKS="webhook:a",
    )).start()  # fmt: skip
    bodies = [minio_body("photos", f"2024/x{n}.jpg", n) for n in range(3)]
    bodies.append(minio_body("docs", "2024/readme.txt", 3))
    assert await ingest(relay, bodies) == [200] * 4
    await a.wait_for(4)

    async def b_skipped_them() -> bool:  # B's loop has looked at the events and passed them
        view = await sink_view(relay, "webhook:b")
        return view["cursor"] == 4 and view["pending"] == 0

    await eventually(b_skipped_them)
    assert b.attempts == 0

    status, body = await call(relay, "POST", "/admin/api/replay", {"sink": "webhook:b"})
    assert (status, body) == (200, {"sink": "webhook:b", "selected": 0, "queued": 0})  # rules
    status, body = await call(relay, "POST", "/admin/api/replay", {
        "sink": "WEBHOOK:B", "bucket": "photos", "prefix": "2024/", "ignore_rules": True,
        "since": "1h", "until": time.time() + 60,
    })  # fmt: skip
    assert (status, body) == (200, {"sink": "webhook:b", "selected": 3, "queued": 3})
    got = await b.wait_for(3)
    assert sorted(r.json()["Key"] for r in got) == [f"photos/2024/x{n}.jpg" for n in range(3)]
    ids_at_a = {r.json()["Key"]: r.headers["webhook-id"] for r in a.received}
    assert all(r.headers["webhook-id"] == ids_at_a[r.json()["Key"]] for r in got)
    await eventually(lambda: _equals(_pending(relay, "webhook:b"), 0))
    assert in_log(relay, "SELECT count(*) FROM redeliveries") == [(0,)]

    for body, expected in (
        ({"sink": "webhook:nope"}, 404),
        ({}, 400),
        ({"sink": "webhook:b", "since": "yesterday-ish"}, 400),
        ({"sink": "webhook:b", "since": [1]}, 400),
    ):
        assert (await call(relay, "POST", "/admin/api/replay", body))[0] == expected, body
    status, body = await call(relay, "POST", "/admin/api/replay", {
        "sink": "webhook:b", "ignore_rules": True, "until": "2000-01-01T00:00:00Z"})  # fmt: skip
    assert body["selected"] == 0
    assert len(b.received) == 3 and len(a.received) == 4


async def _pending(relay: RelayProcess, sink: str) -> int:
    return int((await sink_view(relay, sink))["pending"])


# -- pause / resume -------------------------------------------------------------------------------


async def test_pause_stops_deliveries_and_resume_restarts_them(
    receiver: Receiver, other_receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = receiver, other_receiver
    relay = await relay_factory(env(webhook("A", a), webhook("B", b))).start()
    status, body = await call(relay, "POST", "/admin/api/sinks/webhook:a/pause")
    assert status == 200 and body["state"] == "paused" and body["paused"] is True
    assert await ingest(relay, [minio_body("p", f"k{n}", n) for n in range(3)]) == [200] * 3
    await b.wait_for(3)  # the relay is delivering: to the sink that is not paused
    view = await sink_view(relay, "webhook:a")
    assert (view["state"], view["pending"], view["cursor"]) == ("paused", 3, 0)
    assert a.attempts == 0
    assert re.search(r"webhook:a\s+0\s+3\s", relay.cli("queue", "stats").stdout)

    status, body = await call(relay, "POST", "/admin/api/sinks/webhook%3Aa/resume")
    assert status == 200 and body["paused"] is False and body["state"] != "paused"
    got = await a.wait_for(3)
    assert sorted(r.json()["Key"] for r in got) == ["p/k0", "p/k1", "p/k2"]
    await eventually(lambda: _equals(_pending(relay, "webhook:a"), 0))
    assert (await sink_view(relay, "webhook:a"))["state"] == "up"

    assert (await call(relay, "POST", "/admin/api/sinks/webhook:zz/pause"))[0] == 404
    assert (await call(relay, "GET", "/admin/api/sinks/webhook:a/pause"))[0] == 404
    assert (await call(relay, "POST", "/admin/api/sinks/webhook:a/pause", token=TOKEN))[0] == 401


# -- the status page's charts and a sink's recent errors ---------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_series_sample_ingest_deliveries_and_backlog_and_sinks_keep_recent_errors(
    workers: str,
    receiver: Receiver,
    other_receiver: Receiver,
    relay_factory: Callable[..., RelayProcess],
) -> None:
    """Sampled where /admin/ is served (the delivery process with 2 workers, the relay with
    1): events appended by ingest (another process with 2) count in the ingest rate."""
    other_receiver.status = 503  # webhook:b fails: its backlog stays, its errors are kept
    relay = await relay_factory(
        env(webhook("A", receiver), webhook("B", other_receiver),
            RELAY_WORKERS=workers, RELAY_ADMIN_SAMPLE_INTERVAL="200ms")
    ).start()  # fmt: skip
    assert len(relay.workers()) == (0 if workers == "1" else 3)  # 2 ingest, 1 delivery
    status, empty = await call(relay, "GET", "/admin/api/series")
    assert status == 200 and empty["interval"] == 0.2 and empty["points"] == 360
    assert [s["sink"] for s in empty["sinks"]] == ["webhook:a", "webhook:b"]
    assert (await call(relay, "GET", "/admin/api/series", token=TOKEN))[0] == 401

    assert await ingest(relay, [minio_body("p", f"k{n}", n) for n in range(20)]) == [200] * 20
    await receiver.wait_for(20)

    async def charted() -> dict[str, Any] | None:
        _, body = await call(relay, "GET", "/admin/api/series")
        a, b = body["sinks"]
        done = (max(body["ingest_rate"], default=0) > 0 and max(a["delivered_rate"]) > 0
                and b["backlog"] and b["backlog"][-1] == 20)  # fmt: skip
        return body if done else None

    body = await eventually(charted)
    n = len(body["at"])
    assert n <= 360 and body["at"] == sorted(body["at"])
    assert all(len(x) == n for x in (body["ingest_rate"], *(
        v for s in body["sinks"] for v in (s["delivered_rate"], s["backlog"]))))  # fmt: skip
    assert max(body["sinks"][1]["delivered_rate"]) == 0  # nothing went through to b
    last = body["at"][-1]
    _, newer = await call(relay, "GET", "/admin/api/series", params={"after": repr(last)})
    assert all(t > last for t in newer["at"]) and len(newer["at"]) < n
    assert len(newer["sinks"][0]["backlog"]) == len(newer["at"])
    status, refused = await call(relay, "GET", "/admin/api/series", params={"after": "soon"})
    assert status == 400 and "unix seconds" in refused["error"]

    # webhook:b's row carries its recent errors, newest first; webhook:a's has none
    async def failed() -> list[dict[str, Any]]:
        return list((await sink_view(relay, "webhook:b"))["recent_errors"])

    errors = await eventually(failed)
    first = errors[0]
    assert first["outcome"] == "retrying" and "HTTP 503" in first["error"], first
    assert first["seq"] == 1 and (first["bucket"], first["key"]) == ("p", "k0")
    assert first["attempts"] >= 1 and first["at"] > 0
    assert (await sink_view(relay, "webhook:a"))["recent_errors"] == []


# -- the live tail --------------------------------------------------------------------------------


class Stream:
    """A server-sent-event stream read with plain aiohttp; an independent parser."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 15.0) -> dict[str, Any]:
        message: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode()
                if line == "":
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if line == "":
                    if message:
                        return message
                    continue
                if line.startswith(":"):
                    message.setdefault("comments", []).append(line[1:].strip())
                    continue
                field, _, value = line.partition(": ")
                message[field] = value

    async def event(self, timeout: float = 15.0) -> dict[str, Any]:
        """The next message that carries data, as (id, parsed data)."""
        while True:
            message = await self.next(timeout)
            if "data" in message:
                data = json.loads(message["data"])
                assert int(message["id"]) == data["seq"]
                return data


async def open_stream(
    session: aiohttp.ClientSession, relay: RelayProcess, query: str = "", **headers: str
) -> Stream:
    response = await session.get(
        relay.url + "/admin/events/stream" + query,
        headers={"Authorization": f"Bearer {ADMIN}", **headers},
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Stream(response)


async def test_live_tail_catches_up_from_the_log_then_follows_with_filters(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(
        env(webhook("MAIN", receiver), RELAY_SHUTDOWN_TIMEOUT="30s")
    ).start()
    put, delete = "s3:ObjectCreated:Put", "s3:ObjectRemoved:Delete"
    first = [
        minio_body("photos", "a.jpg", 1, put),  # seq 1
        minio_body("photos", "b.jpg", 2, put),  # seq 2
        minio_body("docs", "c.txt", 3, put),  # seq 3: another bucket
        minio_body("photos", "d.jpg", 4, delete),  # seq 4: another event
        minio_body("photos", "x/e.jpg", 5, put),  # seq 5
    ]
    assert await ingest(relay, first) == [200] * 5
    async with aiohttp.ClientSession() as session:
        # caught up from Last-Event-ID, filtered by bucket and an event wildcard
        stream = await open_stream(
            session, relay, "?bucket=photos&event=s3:ObjectCreated:*", **{"Last-Event-ID": "1"}
        )
        opening = await stream.next()
        assert opening["id"] == "1" and "data" not in opening and opening["retry"] == "2000"
        assert [(e["seq"], e["key"]) for e in [await stream.event(), await stream.event()]] == [
            (2, "b.jpg"), (5, "x/e.jpg")]  # fmt: skip
        # … then follows the log as events arrive
        follow = [
            minio_body("photos", "f.jpg", 6, put),  # seq 6: matches
            minio_body("photos", "g.jpg", 7, delete),  # seq 7: filtered out
            minio_body("photos", "h.jpg", 8, "s3:ObjectCreated:Copy"),  # seq 8: matches
        ]
        assert await ingest(relay, follow) == [200] * 3
        six, eight = await stream.event(), await stream.event()
        assert (six["seq"], six["key"], eight["seq"], eight["event_name"]) == (
            6, "f.jpg", 8, "s3:ObjectCreated:Copy")  # fmt: skip
        assert six["bucket"] == "photos" and six["source"] == "minio" and six["size"] == 106
        assert six["record"]["eventName"] == put and len(six["event_id"]) == 32

        # ?after= and a prefix; ?last=n; no position: from the head, new events only
        by_prefix = await open_stream(session, relay, "?after=3&prefix=x/")
        assert (await by_prefix.event())["seq"] == 5
        recent = await open_stream(session, relay, "?last=2")
        assert [(await recent.event())["seq"] for _ in range(2)] == [7, 8]
        fresh = await open_stream(session, relay, "?bucket=late")
        assert (await fresh.next())["id"] == "8"  # it starts at the head
        assert await ingest(relay, [minio_body("late", "i.jpg", 9)]) == [200]
        assert (await fresh.event())["key"] == "i.jpg"

        for query, status in (("?after=abc", 400), ("?event=s3:Object*Created", 400),
                              ("?last=many", 400)):  # fmt: skip
            async with session.get(relay.url + "/admin/events/stream" + query,
                                   headers={"Authorization": f"Bearer {ADMIN}"}) as response:  # fmt: skip
                assert response.status == status, query

        # `relay tail`: one line per event; from a position, with filters
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "tail", "--bucket", "photos",
            "--event", "s3:ObjectRemoved:*", "--after", "0", "--count", "2",
            env=relay.env, cwd=relay.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(tail.communicate(), 30)
        assert tail.returncode == 0, err
        lines = out.decode().splitlines()
        assert len(lines) == 2, lines
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
        assert re.fullmatch(stamp + r"  s3:ObjectRemoved:Delete  photos/d\.jpg", lines[0])
        assert re.fullmatch(stamp + r"  s3:ObjectRemoved:Delete  photos/g\.jpg", lines[1])
        refused = relay.cli("tail", "--token", "nope", "--count", "1", check=False)
        assert refused.returncode == 1 and "refused the admin token" in refused.stderr

        # a stopping relay ends open streams at once, not at its shutdown timeout
        started = time.monotonic()
        assert await relay.stop() == 0
        assert time.monotonic() - started < 10
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            while True:
                await stream.next(timeout=10)


async def test_relay_tail_reports_an_admin_api_that_is_off(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN, **webhook("MAIN", receiver)}).start()
    result = relay.cli("tail", "--token", ADMIN, "--count", "1", check=False)
    assert result.returncode == 1 and "RELAY_ADMIN_TOKENS" in result.stderr


async def test_a_tail_client_that_reads_nothing_is_cut_off(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(env(webhook("MAIN", receiver))).start()
    # 4 000 events of ~2.7 KB on the stream (~11 MB): far more than the socket buffers
    # hold (the kernel's send buffer grows to 4 MiB at most here)
    bodies = []
    for batch in range(40):
        body = json.loads(minio_body("big", "x", 0))
        body["Records"] = [
            json.loads(minio_body("big", f"{batch:02d}{n:03d}" + "k" * 900, batch * 100 + n))[
                "Records"][0]
            for n in range(100)
        ]  # fmt: skip
        bodies.append(json.dumps(body).encode())
    assert await ingest(relay, bodies) == [200] * 40

    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", relay.port))
    client.sendall(
        f"GET /admin/events/stream?after=0 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN}\r\n\r\n".encode()
    )
    try:
        # it reads nothing; the relay gives up on it after its write timeout
        await eventually(lambda: "live tail client too slow" in relay.logs(), timeout=45,
                         interval=0.2)  # fmt: skip

        def drain() -> int:
            client.settimeout(20)
            total = 0
            try:
                while chunk := client.recv(65536):
                    total += len(chunk)
            except ConnectionResetError:
                pass
            return total

        received = await asyncio.to_thread(drain)  # ends: the connection was closed
        assert received < 4000 * 2000  # cut off before the end of the stream
    finally:
        client.close()
    status, _ = await call(relay, "GET", "/admin/api/sinks")  # the relay is fine
    assert status == 200


# -- progress bars --------------------------------------------------------------------------------


def in_terminal(relay: RelayProcess, *args: str, **env: str) -> tuple[int, str]:
    """Run `relay …` with its stdout and stderr on a pseudo-terminal, 100 columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", *args], env={**relay.env, **env}, cwd=relay.workdir,
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


BAR = re.compile(r"\[[#.]+\] [\d ]+/[\d ]+ [a-z ]+ +\d+% [\d ]+/s (ETA \d+:\d\d|in \d+:\d\d)")


async def test_progress_bars_on_a_terminal_and_nothing_when_piped(
    tmp_path: Path, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 400  # every event becomes a dead letter
    relay = await relay_factory(env(webhook("MAIN", receiver))).start()
    n = 500
    bodies = []
    for batch in range(5):
        body = json.loads(minio_body("pg", "x", 0))
        body["Records"] = [json.loads(minio_body("pg", f"k{batch}-{i}", batch * 100 + i))[
            "Records"][0] for i in range(100)]  # fmt: skip
        bodies.append(json.dumps(body).encode())
    assert await ingest(relay, bodies) == [200] * 5

    def dead() -> bool:  # dead letters waiting (not being retried)
        return in_log(relay, "SELECT count(*) FROM dead_letters WHERE retrying_to IS NULL") == [
            (n,)]  # fmt: skip

    await eventually(dead)
    piped = relay.cli("dlq", "retry", "--all")
    assert (piped.stdout, piped.stderr) == (f"{n} dead letter(s) queued for redelivery\n", "")
    await eventually(dead)
    code, shown = await asyncio.to_thread(in_terminal, relay, "dlq", "retry", "--all")
    assert code == 0, shown
    assert "dlq retry [" in shown and BAR.search(shown), shown
    assert shown.rstrip().endswith(f"{n} dead letter(s) queued for redelivery")

    await eventually(dead)
    piped = relay.cli("replay", "--sink", "webhook:main", "--ignore-rules")
    assert (piped.stdout, piped.stderr) == (
        f"{n} event(s) queued for redelivery to webhook:main\n",
        "",
    )
    code, shown = await asyncio.to_thread(in_terminal, relay, "replay", "--sink", "webhook:main",
                                          "--bucket", "pg")  # fmt: skip
    assert code == 0, shown
    assert re.search(r"replay \[#+\] 500/500 events 100% [\d ]+/s in \d+:\d\d", shown), shown
    assert shown.rstrip().endswith("event(s) queued for redelivery to webhook:main")

    # fsck --repair: a bar per table on a terminal, the same report as before when piped
    assert await relay.stop() == 0
    db = relay.workdir / "data" / "relay.db"
    copies = {}
    for name in ("piped", "terminal"):
        data = tmp_path / name / "data"
        data.mkdir(parents=True)
        shutil.copy(db, data / "relay.db")
        size = (data / "relay.db").stat().st_size
        with open(data / "relay.db", "r+b") as f:  # overwrite pages in the middle
            f.seek(size // 2 - (size // 2) % 4096)
            f.write(b"\xde\xad\xbe\xef" * 1024)
        copies[name] = {"RELAY_DATA_DIR": str(data)}
    piped_run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay", "fsck", "--repair"],
        env={**relay.env, **copies["piped"]}, capture_output=True, text=True, timeout=60,
        cwd=relay.workdir,
    )  # fmt: skip
    assert piped_run.returncode == 0, piped_run.stdout + piped_run.stderr
    assert "\r" not in piped_run.stdout and "[#" not in piped_run.stdout
    assert re.search(r"^  events: \d+ rows copied", piped_run.stdout, re.M), piped_run.stdout
    code, shown = await asyncio.to_thread(in_terminal, relay, "fsck", "--repair",
                                          **copies["terminal"])  # fmt: skip
    assert code == 0, shown
    assert re.search(r"  events \[[#.]+\] [\d ]+/[\d ]+ keys", shown), shown
    assert "repaired:" in shown


async def test_live_tail_says_what_retention_pruned_before_the_client_saw_it(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    # near its high-water mark (90 % of RELAY_MAX_EVENTS) the log prunes every delivered event
    relay = await relay_factory(env(webhook("MAIN", receiver), RELAY_MAX_EVENTS="10")).start()
    assert (
        await ingest(relay, [minio_body("photos", f"p{n}.jpg", n) for n in range(1, 10)])
        == [200] * 9
    )
    await receiver.wait_for(9)

    async def pruned() -> bool:
        async with aiohttp.ClientSession() as session:
            async with session.get(relay.url + "/metrics") as response:
                return "\nrelay_log_events 0.0" in await response.text()

    await eventually(pruned, timeout=30)
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, relay, "", **{"Last-Event-ID": "2"})
        await stream.next()  # the opening
        assert await ingest(relay, [minio_body("photos", "p10.jpg", 10)]) == [200]
        marker, event = await stream.event(), await stream.event()
    assert marker["event_name"] == "relay:MissedEvents" and marker["seq"] == 9
    assert (marker["record"]["first_seq"], marker["record"]["last_seq"]) == (3, 9)
    assert marker["record"]["reason"] == "pruned"
    assert (event["seq"], event["key"]) == (10, "p10.jpg")
