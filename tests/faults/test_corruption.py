"""A damaged log file: the relay refuses to start with a message saying what to do, never a
traceback; `relay fsck` finds the damage; `--repair` keeps every readable event and says
what was lost; RELAY_ON_DAMAGE=set-aside starts on a new log instead. With the integrity
check in the background (RELAY_LOG_CHECK), damage found while serving stops ingest (503)
and readiness, and the relay stays up delivering what can be read."""

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
from tests.support.damage import damage_record_page
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

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


def webhook_relay(relay_factory: Callable[..., RelayProcess], receiver: Receiver) -> RelayProcess:
    """A relay with one webhook sink pointing at `receiver`."""
    return relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_W": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_W": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_W": "200ms",
    })  # fmt: skip


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
async def test_damaged_log_is_refused_checked_and_repaired(
    how: str, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503  # nothing is delivered: every event is still pending in the log
    relay = webhook_relay(relay_factory, receiver)
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


async def test_auto_checks_a_small_log_at_start(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_AUTH_TOKENS": TOKEN, "RELAY_LOG_CHECK": "auto"})
    await fill_log(relay)
    # a page of events that only the integrity check reads: refused at start all the same
    damage_record_page(relay.workdir / "data" / "relay.db", b"REQ%012d" % (EVENTS // 2))
    refused = serve(relay)
    assert refused.returncode == 3
    assert "relay fsck --repair" in refused.stderr and "Traceback" not in refused.stderr


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_damage_found_in_the_background_stops_ingest_not_the_relay(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503  # every event stays pending in the log
    relay = webhook_relay(relay_factory, receiver)
    await fill_log(relay)
    damage_record_page(relay.workdir / "data" / "relay.db", b"REQ%012d" % (EVENTS // 2))

    receiver.status = 200
    relay.env["RELAY_LOG_CHECK"] = "background"
    await relay.start()
    await eventually(lambda: '"log_check": "background"' in relay.logs())
    async with aiohttp.ClientSession() as session:

        async def not_ready() -> bool:
            status, text = await _get(session, relay.url + "/readyz")
            return status == 503 and '"reason": "log_damaged"' in text

        await eventually(not_ready)
        async with session.post(relay.url, data=minio_body("f", "new", EVENTS),
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:  # fmt: skip
            assert response.status == 503 and response.headers["Retry-After"]
        _, exposition = await _get(session, relay.url + "/metrics")
        assert "relay_log_damaged 1.0" in exposition.splitlines()
    # the events before the damaged page still go out
    await receiver.wait_for(EVENTS // 4, timeout=60)
    assert relay.proc is not None and relay.proc.poll() is None
    logs = relay.logs()
    assert '"log damaged: ingest answers 503' in logs and "relay fsck --repair" in logs
    assert await relay.stop() == 0


async def test_a_sound_log_passes_the_background_check(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory({"RELAY_AUTH_TOKENS": TOKEN})
    await fill_log(relay)
    relay.env["RELAY_LOG_CHECK"] = "background"
    await relay.start()
    await eventually(lambda: '"log check passed"' in relay.logs())
    async with aiohttp.ClientSession() as session:
        status, _ = await _get(session, relay.url + "/readyz")
        assert status == 200
        _, exposition = await _get(session, relay.url + "/metrics")
        assert "relay_log_damaged 0.0" in exposition.splitlines()
    assert await relay.stop() == 0
