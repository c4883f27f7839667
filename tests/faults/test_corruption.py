"""A damaged log file: the relay refuses to start with a message saying what to do, never a
traceback; `relay fsck` finds the damage; `--repair` keeps every readable event and says
what was lost; RELAY_ON_DAMAGE=set-aside starts on a new log instead."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.faults
TOKEN = "fsck-token"
EVENTS = 3000


async def fill_log(relay: RelayProcess) -> None:
    await relay.start()
    async with aiohttp.ClientSession() as session:
        for n in range(EVENTS):
            async with session.post(relay.url, data=minio_body("f", f"k{n}", n),
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as response:  # fmt: skip
                assert response.status == 200
    assert await relay.stop() == 0


def damage(db: Path, how: str) -> None:
    size = db.stat().st_size
    if how == "truncate":
        os.truncate(db, size // 2)
    else:  # overwrite pages in the middle of the file with garbage
        with open(db, "r+b") as f:
            f.seek(size // 3 - (size // 3) % 4096)
            f.write(b"\xde\xad\xbe\xef" * 2048)


def serve(relay: RelayProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "serve"], env=relay.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
async def test_damaged_log_is_refused_checked_and_repaired(
    how: str, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503  # nothing is delivered: every event is still pending in the log
    relay = relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_W": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_W": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_W": "200ms",
    })  # fmt: skip
    await fill_log(relay)
    db = relay.workdir / "data" / "relay.db"
    damage(db, how)

    refused = serve(relay)
    assert refused.returncode == 3
    assert "relay fsck --repair" in refused.stderr and str(db) in refused.stderr
    assert "Traceback" not in refused.stderr

    checked = relay.cli("fsck", check=False)
    assert checked.returncode == 3 and "damaged" in checked.stdout

    repaired = relay.cli("fsck", "--repair")
    print(repaired.stdout)
    assert "repaired:" in repaired.stdout
    assert relay.cli("fsck").stdout.strip().endswith("ok")
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert 0 < kept < EVENTS
    assert list(db.parent.glob("relay.db.damaged-*"))

    receiver.status = 200  # the relay starts on the repaired log and delivers what was kept
    await relay.start()
    await receiver.wait_for(kept, timeout=60)
    assert len({r.json()["Key"] for r in receiver.received}) == kept


async def test_set_aside_starts_a_new_log(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_AUTH_TOKENS": TOKEN})
    await fill_log(relay)
    db = relay.workdir / "data" / "relay.db"
    damage(db, "truncate")
    relay.env["RELAY_ON_DAMAGE"] = "set-aside"
    await relay.start()
    assert list(db.parent.glob("relay.db.damaged-*"))
    assert '"log damaged: set aside, starting a new log"' in relay.logs()
