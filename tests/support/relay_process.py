"""`relay serve` as a real subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.waiting import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("RELAY_", "RUSTFS_", "MINIO_"))
            },
            "RELAY_LISTEN": f"127.0.0.1:{self.port}",
            "RELAY_DATA_DIR": str(workdir / "data"),
            "RELAY_LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "relay.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0, probe: bool = True) -> RelayProcess:
        """Start `relay serve`; with `probe`, wait until /healthz answers over plain HTTP."""
        self.starts += 1
        log = open(self.log_path, "ab")
        # a session (process group) of its own: killing the relay kills every process of it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve"],
            env=self.env, stdout=log, stderr=log, cwd=self.workdir, start_new_session=True,
        )  # fmt: skip
        log.close()
        if probe:
            await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until /healthz answers over plain HTTP; fails at once if the relay exits."""

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(self.url + "/healthz") as response:
                        return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to every process of the relay (the supervisor and its workers, when it
        has them) at once: no shutdown code runs, as on a crash of the machine's process
        or a container's. Returns once none of them is left."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        while True:  # the workers are reaped by init; wait until the group is empty
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)

    def workers(self) -> list[int]:
        """The pids of the relay's worker processes (none with RELAY_WORKERS=1)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker process: its supervisor starts it again."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def stop(self, timeout: float = 20.0) -> int:
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "relay", *args],
            env=self.env, capture_output=True, text=True, timeout=60, cwd=self.workdir,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"relay {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")  # fmt: skip
        return result
