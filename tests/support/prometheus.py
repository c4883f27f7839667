"""A real Prometheus (Debian's `prometheus` package, scripts/install-prometheus.sh) of a test's
own: its config and rule files and its TSDB under the test's tmp dir, its web API on a free
loopback port, scraping the targets the test names every second and evaluating the rules
every second. `promtool` from the same package checks and unit-tests rule files.

    with prometheus(tmp_path, targets=[relay_port], rules=[copy_of_alerts]) as prom:
        await prom.query("relay_sink_up")            # the API's result list
        await prom.alerts()                          # the active alerts
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.servers import HOST, PrivateServer, free_port

INSTALL_HINT = "run scripts/install-prometheus.sh (or make test-servers)"


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)  # fmt: skip


class Prometheus(PrivateServer):
    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.port}/api/v1"

    async def ready(self) -> bool:
        """True once the TSDB is open and the API answers (/-/ready)."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                async with session.get(f"http://{HOST}:{self.port}/-/ready") as response:
                    return response.status == 200
        except aiohttp.ClientError:
            return False

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(self.api + path, params=params) as response:
                body = await response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples, or a scalar as one sample)."""
        data = await self._get("/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        data = await self._get("/alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts

    async def rule_groups(self) -> list[dict[str, Any]]:
        data = await self._get("/rules")
        groups: list[dict[str, Any]] = data["groups"]
        return groups

    async def targets_up(self) -> bool:
        data = await self._get("/targets")
        active = data["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    async def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = await self._get(f"/label/{label}/values", {"match[]": match})
        return values


@contextmanager
def prometheus(
    tmp_path: Path, *, targets: Sequence[int], rules: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    """Prometheus scraping 127.0.0.1:<port>/metrics of each target (job "relay") every
    second and evaluating `rules` every second."""
    workdir = tmp_path / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(r) for r in rules],
        "scrape_configs": [
            {"job_name": "relay", "static_configs": [{"targets": [f"{HOST}:{p}" for p in targets]}]}
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(config_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    args = [f"--config.file={config_file}", f"--web.listen-address={HOST}:{port}",
            f"--storage.tsdb.path={workdir / 'data'}", "--log.level=warn"]  # fmt: skip
    server = Prometheus("prometheus", tool("prometheus"), args, port, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
