"""What every part of the benchmark suite shares: the machine header, the results table with
its targets, `relay serve` as a subprocess, /metrics scraping, percentiles and temp dirs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

TOKEN = "bench-token"
START_LOAD = os.getloadavg()
ROOT = Path(__file__).resolve().parent.parent

# -- machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()  # fmt: skip

    sha = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "relay")
    return f"{sha}{' + uncommitted changes in relay/' if dirty else ''}"


def relay_fingerprint() -> str:
    """A hash of the relay's source (relay/**/*.py, *.sql): tells whether the code under
    test changed while a run was going on (every measurement starts `relay serve` anew)."""
    digest = hashlib.sha1()
    for path in sorted((ROOT / "relay").rglob("*")):
        if path.suffix in (".py", ".sql") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


START_GIT = git_state()
START_TREE = relay_fingerprint()


def code_changed() -> str:
    """ "" if the relay's source is as it was when the run started, else what changed."""
    now = relay_fingerprint()
    if now == START_TREE:
        return ""
    return (f"the relay's source changed during the run (git {START_GIT}, source {START_TREE} "
            f"→ git {git_state()}, source {now}): later parts ran on newer code")  # fmt: skip


def machine_lines() -> list[str]:
    return [
        f"machine: {os.cpu_count()} cores, {cpu_model()}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Linux {platform.release()}",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"relay at git {START_GIT} (source {START_TREE}) when the run started",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; load average "
        f"before the run {' '.join(f'{x:.2f}' for x in START_LOAD)} (other work on the "
        "machine skews every figure)",
    ]


# -- the table ----------------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    what: str
    value: str
    note: str = ""  # baseline, ratio, knob, caveat
    target: str = ""
    met: bool | None = None

    @property
    def mark(self) -> str:
        return "" if self.met is None else ("✓" if self.met else "✗")


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: object, **kwargs: object) -> Row:
        row = Row(*args, **kwargs)  # type: ignore[arg-type]
        self.rows.append(row)
        return row

    def extend(self, other: Table) -> None:
        self.rows += other.rows
        self.notes += other.notes

    def markdown(self) -> str:
        head = ["part", "measurement", "figure", "baseline / ratio / note", "target", "met"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.part, r.what, r.value, r.note, r.target, r.mark]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)

    def render(self, title: str = "") -> str:
        out = [title] if title else []
        out += machine_lines()
        out += ["", self.markdown()]
        notes = list(self.notes)
        changed = code_changed()
        if changed and changed not in notes:
            notes.append(changed)
        if notes:
            out += ["", *[f"- {n}" for n in notes]]
        return "\n".join(out)


def check(value: float, op: str, limit: float) -> bool:
    return value >= limit if op == ">=" else value <= limit


def rate(x: float) -> str:
    return f"{x:,.0f}/s" if x >= 100 else f"{x:,.1f}/s"


def ms(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.2f} ms" if x < 100 else f"{x:,.0f} ms"


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.1f} MB"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of unsorted values (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def say(*parts: object) -> None:
    """Progress on stderr: the table is what goes to stdout."""
    print(*parts, file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_pin() -> bool:
    return bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2


def base_env() -> dict[str, str]:
    """The environment without any relay or sink setting of the caller's."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "RUSTFS_", "MINIO_"))
    }


class Relay:
    """`relay serve` as a subprocess on a free loopback port, with its data dir given.
    `cpu` pins it to one core (taskset execs, so the pid is the relay's)."""

    def __init__(self, data_dir: Path, env: dict[str, str], cpu: int | None = None,
                 log: Path | None = None) -> None:  # fmt: skip
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.env = {
            **base_env(),
            "RELAY_LISTEN": f"127.0.0.1:{self.port}",
            "RELAY_DATA_DIR": str(self.data_dir),
            "RELAY_AUTH_TOKENS": TOKEN,
            "RELAY_MIN_FREE_BYTES": "0",
            "RELAY_LOG_LEVEL": "warning",
            "RELAY_LOG_FORMAT": "json",
            **env,
        }
        self.cpu = cpu if cpu is not None and can_pin() else None
        self.log = log or self.data_dir.parent / f"relay-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> Relay:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "relay", "serve"]
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu), *argv]
        with open(self.log, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log, cwd=ROOT)
        return self

    async def wait(self, path: str = "/healthz", timeout: float = 600.0,
                   interval: float = 0.02) -> float:  # fmt: skip
        """Seconds from spawn until GET `path` answers 200."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"relay exited:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(self.url + path) as response:
                        if response.status == 200:
                            return time.monotonic() - self.started_at
                if time.monotonic() > deadline:
                    raise RuntimeError(f"relay not answering {path} in {timeout}s:\n{self.tail()}")
                await asyncio.sleep(interval)

    async def start(self, path: str = "/healthz", timeout: float = 600.0) -> float:
        self.spawn()
        return await self.wait(path, timeout)

    async def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the relay, in bytes."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out

    async def metrics(self, session: aiohttp.ClientSession) -> Metrics:
        async with session.get(self.url + "/metrics") as response:
            return Metrics.parse(await response.text())


# -- /metrics ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Metrics:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if m:
                labels = frozenset(_LABEL.findall(m.group(2) or ""))
                samples[(m.group(1), labels)] = float(m.group(3))
        return cls(samples)

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        want = set(labels.items())
        total, found = 0.0, False
        for (n, ls), v in self.samples.items():
            if n == name and want <= ls:
                total += v
                found = True
        return total if found else default


# -- a quiet machine ------------------------------------------------------------------------------

QUIET_IDLE = 0.85  # share of CPU time idle
QUIET_WAIT = 20.0
BUSY_STARTS: list[str] = []  # measurements started on a machine that did not quiet down


def _cpu_times() -> tuple[int, int]:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])


async def quiet(what: str, wait: float = QUIET_WAIT) -> None:
    """Wait (at most `wait` s) until the machine is ≥ 85 % idle over half a second: the
    servers behind the previous run (a dropped table being purged, a deleted stream, dirty
    pages being written) must not bill their work to the next measurement."""
    deadline = time.monotonic() + wait
    while True:
        idle0, total0 = _cpu_times()
        await asyncio.sleep(0.5)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= QUIET_IDLE:
            return
        if time.monotonic() > deadline:
            BUSY_STARTS.append(what)
            say(f"  (the machine stayed busy; measuring {what} anyway)")
            return


# -- temp dirs ------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str = "relay-bench-", keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def tag() -> str:
    return os.urandom(4).hex()


def run(coro: Any) -> Any:
    """Run a benchmark coroutine on uvloop, the loop the relay itself runs on."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
