"""A disk that is really full: the log on a small tmpfs, mostly taken by a filler file.
Ingest answers 503 with Retry-After (never a 500, never a crash), nothing answered 2xx is
lost, the log is not damaged, and everything resumes on its own once space is freed.
Needs root for the mount (the development and CI machines run as root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults
TOKEN = "full-token"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, f"cannot mount a tmpfs (root needed): {result.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def post(session: aiohttp.ClientSession, relay: RelayProcess, n: int) -> int:
    async with session.post(relay.url, data=minio_body("full", f"k{n}", n),
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:  # fmt: skip
        return r.status


async def test_full_disk_refuses_with_503_and_recovers_when_space_is_freed(
    small_disk: Path, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503  # nothing leaves the log: it only grows
    filler = small_disk / "someone-elses-data"
    relay = relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN,
        "RELAY_DATA_DIR": str(small_disk / "data"),
        "RELAY_MIN_FREE_BYTES": "0",  # no early warning: let the disk really fill
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_W": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_W": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_W": "300ms",
    })  # fmt: skip
    await relay.start()
    stat = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 1024 * 1024))  # leave ~1 MiB
    acked: set[str] = set()
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        n = 0
        while statuses.get(503, 0) < 20 and n < 20_000:
            status = await post(session, relay, n)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                acked.add(f"full/k{n}")
            n += 1
        assert relay.proc is not None and relay.proc.poll() is None  # still running
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.get(503, 0) >= 20 and acked
        async with session.get(relay.url + "/healthz") as r:
            assert r.status == 200
        print(f"disk full: {len(acked)} accepted, then {statuses[503]} refused with 503")

        filler.unlink()  # space comes back
        receiver.status = 200

        async def accepting() -> bool:
            return await post(session, relay, n) == 200

        await eventually(accepting, timeout=30, interval=0.2)
        acked.add(f"full/k{n}")
    await eventually(lambda: acked <= {r.json()["Key"] for r in receiver.received}, timeout=60)
    await relay.stop()
    assert relay.cli("fsck").stdout.strip().endswith("ok")  # no damage
