"""Sink plugins: a package that registers a sink in the `s3_notify_relay.sinks` entry-point
group is installed (pip, into a directory on the relay's path) and configured like any sink."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FIXTURES
from tests.support.bodies import minio_body
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_an_installed_plugin_sink_delivers(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    site = tmp_path / "site"
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(site), str(FIXTURES / "plugin")],
        check=True, timeout=300,
    )  # fmt: skip
    memo = tmp_path / "memo.txt"
    relay = relay_factory({
        "PYTHONPATH": str(site),
        "RUSTFS_NOTIFY_MEMO_ENABLE_NOTES": "on",
        "RUSTFS_NOTIFY_MEMO_PATH_NOTES": str(memo),
    })  # fmt: skip
    reference = relay.cli("config-reference").stdout
    assert "### Sink `memo`" in reference and "RUSTFS_NOTIFY_MEMO_PATH_<ID>" in reference
    await relay.start()
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.url, data=minio_body("b", "plugged in.txt", 1)) as r:
            assert r.status == 200
    await eventually(lambda: memo.exists() and "plugged in.txt" in memo.read_text())
    assert memo.read_text().split(" ", 2)[1] == "s3:ObjectCreated:Put"
    assert "sink memo:notes" in relay.cli("check").stdout
