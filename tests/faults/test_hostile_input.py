"""Hostile input at the ingest port: never a 5xx, never a crash, bounded memory, nothing
authenticated dropped (unreadable bodies are quarantined), and slow clients cannot hold
connections."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.bodies import minio_body
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults
TOKEN = "hostile-token"
ALLOWED = {200, 202, 400, 401, 408, 413, 431}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post(port: int, body: bytes, headers: dict[str, str], path: str = "/fuzz") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def mutations() -> st.SearchStrategy[bytes]:
    valid = minio_body("fuzz", "a b+c%2F.txt", 1)
    return st.one_of(
        st.binary(max_size=4096),
        st.builds(
            lambda i, b: valid[:i] + b + valid[i + len(b) :],
            st.integers(0, len(valid)),
            st.binary(min_size=1, max_size=16),
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "Records",
                            "EventName",
                            "Key",
                            "s3",
                            "eventName",
                            "bucket",
                            "object",
                            "key",
                            "size",
                        ]
                    ),
                    children,
                    max_size=4,
                )
            ),
            max_leaves=30,
        ).map(lambda v: json.dumps(v).encode()),
    )


async def test_fuzzed_bodies_and_headers_never_5xx_and_memory_stays_bounded(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN}).start()
    assert relay.proc is not None
    seen: set[int] = set()

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        body=mutations(),
        content_type=st.sampled_from(
            [
                "application/json",
                "text/plain",
                "",
                "application/x-ndjson",
                "multipart/form-data; boundary=x",
                "\u00e9\u00e9",
            ]
        ),
        ce=st.booleans(),
        auth=st.sampled_from([f"Bearer {TOKEN}", TOKEN, "Bearer wrong", "", "Basic !!!"]),
    )
    def fuzz(body: bytes, content_type: str, ce: bool, auth: str) -> None:
        headers = {"Authorization": auth} if auth else {}
        if content_type:
            headers["Content-Type"] = content_type.encode("latin-1", "replace").decode("latin-1")
        if ce:
            headers.update({"ce-specversion": "1.0", "ce-type": "com.amazonaws.ObjectCreated:Put",
                            "ce-source": "ceph:s3.zg.b", "ce-subject": "k"})  # fmt: skip
        status = post(relay.port, body, headers)
        seen.add(status)
        assert status in ALLOWED, status

    await asyncio.to_thread(fuzz)  # warm-up round: imports, caches, first quarantines
    baseline = rss_kib(relay.proc.pid)
    for _ in range(3):
        await asyncio.to_thread(fuzz)
    growth = rss_kib(relay.proc.pid) - baseline
    print(f"fuzz: 1600 requests, statuses {sorted(seen)}, RSS growth {growth} KiB after warm-up")
    assert relay.proc.poll() is None
    assert growth < 64 * 1024  # bounded: no per-request leak


async def test_abusive_requests_get_clear_answers(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = await relay_factory(
        {"RELAY_AUTH_TOKENS": TOKEN, "RELAY_MAX_BODY": "64KiB", "RELAY_REQUEST_TIMEOUT": "1s"}
    ).start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    p = relay.port
    assert await asyncio.to_thread(post, p, b"x" * (65 * 1024), auth) == 413
    assert await asyncio.to_thread(post, p, b"[" * 60_000, auth) == 202  # deep nesting
    assert await asyncio.to_thread(post, p, b"\xff\xfe\x00{bad", auth) == 202  # not UTF-8
    assert (
        await asyncio.to_thread(
            post, p, minio_body("b", "k", 1), {**auth, "Content-Type": "text/html"}
        )
        == 200
    )
    many = {**auth, **{f"X-H{i}": "v" for i in range(300)}}
    assert await asyncio.to_thread(post, p, b"{}", many) in {400, 431}
    assert await asyncio.to_thread(post, p, b"{}", {**auth, "X-Big": "v" * 20000}) in {400, 431}

    # a body announced longer than it is: answered 408 after RELAY_REQUEST_TIMEOUT
    reader, writer = await asyncio.open_connection("127.0.0.1", p)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Length: 5000\r\n\r\n{\"Rec")  # fmt: skip
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(200), 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()
    assert relay.proc is not None and relay.proc.poll() is None


async def test_slowloris_cannot_hold_connections(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = await relay_factory({"RELAY_AUTH_TOKENS": TOKEN, "RELAY_REQUEST_TIMEOUT": "2s"}).start()
    attackers = []
    for _ in range(300):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
        attackers.append((reader, writer))
    started = time.monotonic()

    async def dribble() -> None:
        for _ in range(20):
            for _, writer in attackers:
                if not writer.is_closing():
                    writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.25)

    dribbling = asyncio.create_task(dribble())
    # a real sender is served meanwhile
    status = await asyncio.to_thread(post, relay.port, minio_body("b", "k", 1),
                                     {"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert status == 200

    async def all_closed() -> bool:
        results = await asyncio.gather(*(r.read(1) for r, _ in attackers), return_exceptions=True)
        return all(x == b"" or isinstance(x, Exception) for x in results)

    await eventually(all_closed, timeout=15)
    elapsed = time.monotonic() - started
    dribbling.cancel()
    print(f"slowloris: 300 dribbling connections closed after {elapsed:.1f}s (timeout 2s)")
    assert elapsed < 10
