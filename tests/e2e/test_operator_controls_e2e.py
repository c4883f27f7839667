"""Operator controls against real relay processes: one relay per data directory, the ingest
filter, and dead letters selected by filter and retried to another sink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.e2e
TOKEN = "operator-ingest-5c21"
ADMIN = "operator-admin-90ae"


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
