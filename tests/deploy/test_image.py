"""What the Dockerfile does, done without a Docker engine (none exists in CI):

- the build context is what .dockerignore lets through, and the build stage's COPY lines pick
  from it; `pip wheel --no-deps` builds the project's wheel from that copy;
- the wheel is installed with `--only-binary=:all:` into a fresh venv (the image's /opt/relay);
- `relay serve` (ENTRYPOINT + CMD) runs with the image's ENV, as the image's uid/gid, with no
  capabilities and no_new_privs, in a private mount namespace where the root filesystem and
  the venv are read-only and only the data dir and /tmp are writable: what
  `docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges` gives;
- the HEALTHCHECK command passes while it runs; one event goes in and reaches a file sink;
  SIGTERM stops it with exit status 0 within RELAY_SHUTDOWN_TIMEOUT; the HEALTHCHECK fails then.

It must run as root (CI does): the mount namespace and the switch to the image's uid need it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from relay.config import parse_duration
from tests.deploy.support import ROOT, build_context, read_dockerfile
from tests.support.bodies import minio_body
from tests.support.relay_process import free_port
from tests.support.waiting import eventually

DOCKERFILE = read_dockerfile()
FINAL = DOCKERFILE.final
UID, GID = (int(x) for x in FINAL.one("USER").args.split(":"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
TOKEN = "smoke-token-0123456789abcdef"


@dataclass
class Installed:
    root: Path  # 0755, outside /tmp (the run mounts its own /tmp)
    wheel: Path
    venv: Path
    install_log: str


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, (
        f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def _as_image_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]  # fmt: skip


def _base_python() -> str:
    """A Python 3.11 the image's uid can run (pyenv's under /root is not readable by it)."""
    candidates = ["/usr/local/bin/python3.11", "/usr/bin/python3.11", shutil.which("python3.11")]
    for candidate in dict.fromkeys(c for c in candidates if c):
        probe = subprocess.run(
            _as_image_user([candidate, "-c", "import sys, ensurepip; print(sys.version_info[:2])"]),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 11)":
            return candidate
    pytest.fail(f"no Python 3.11 with ensurepip that uid {UID} can run among {candidates}")


def _copy_build_stage_sources(dest: Path) -> None:
    """The build stage's COPY lines, from the context .dockerignore lets through."""
    files = build_context(ROOT)
    for inst in DOCKERFILE.stage("build").all("COPY"):
        *sources, target = inst.args.split()
        for source in sources:
            chosen = [f for f in files if f == source or f.startswith(source + "/")]
            assert chosen, f"COPY {source}: not in the build context"
            for rel in chosen:
                if rel == source:
                    out = dest / target / Path(rel).name if target.endswith("/") else dest / target
                else:
                    out = dest / target / rel[len(source) + 1 :]
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, out)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if os.geteuid() != 0:
        pytest.fail("tests/deploy/test_image.py runs as root (as CI does): it needs a mount "
                    "namespace and setpriv to the image's uid")  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="relay-image-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        src, wheels, venv = root / "src", root / "wheels", root / "venv"
        _copy_build_stage_sources(src)
        build_env = {**os.environ, **DOCKERFILE.stage("build").env()}
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), "."],
             cwd=src, env=build_env)  # fmt: skip
        (wheel,) = wheels.glob("*.whl")
        _run([_base_python(), "-m", "venv", str(venv)])
        log = _run([str(venv / "bin/pip"), "install", "--only-binary=:all:", str(wheel)],
                   env=build_env).stdout  # fmt: skip
        yield Installed(root, wheel, venv, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_and_the_venv_are_complete(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "relay/queue/schema.sql" in names and "relay/queue/queries.sql" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    # every file of the package that the build context holds reaches the image (data files
    # need [tool.setuptools.package-data] in pyproject.toml)
    in_context = [f for f in build_context(ROOT) if f.startswith("relay/")]
    assert [f for f in in_context if f not in names] == []
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "relay = relay.cli:main" in zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    assert "Building wheel" not in installed.install_log  # no dependency built from source
    (installed_package,) = installed.venv.glob("lib/python3.11/site-packages/relay")
    pycache = installed_package / "__pycache__"
    compiled = {p.name.split(".")[0] for p in pycache.glob("*.pyc")}
    assert {"app", "cli", "ingest"} <= compiled  # a read-only root needs no .pyc writes
    delivery = {
        p.name.split(".")[0] for p in (installed_package / "delivery/__pycache__").glob("*.pyc")
    }
    assert "dispatcher" in delivery
    version = _run(_as_image_user([str(installed.venv / "bin/relay"), "--version"]))
    assert version.stdout.strip() == VERSION


async def test_runs_unprivileged_on_a_read_only_root_and_stops_on_sigterm(
    installed: Installed,
) -> None:
    root, venv = installed.root, installed.venv
    data, tmp = root / "data", root / "tmp"
    data.mkdir()
    os.chown(data, UID, GID)
    data.chmod(0o750)
    tmp.mkdir()
    tmp.chmod(0o1777)
    port = free_port()
    env = {
        **FINAL.env(),
        "PATH": f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "RELAY_DATA_DIR": str(data),  # /data in the image
        "HOME": str(data),
        "RELAY_LISTEN": f"127.0.0.1:{port}",
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_FILE_ENABLE_SMOKE": "on",
        "RUSTFS_NOTIFY_FILE_PATH_SMOKE": str(data / "events.ndjson"),
    }
    shutdown_timeout = parse_duration(env["RELAY_SHUTDOWN_TIMEOUT"])
    command = FINAL.one("ENTRYPOINT").exec_form() + FINAL.one("CMD").exec_form()  # type: ignore[operator]
    script = " && ".join([
        f"mount --bind {data} {data}",
        f"mount --bind {tmp} /tmp",
        f"mount --bind {venv} {venv}",
        f"mount -o remount,bind,ro {venv}",
        "mount -o remount,bind,ro /",
        f"cd {data}",
        "exec " + shlex.join(_as_image_user(command)),
    ])  # fmt: skip
    healthcheck = FINAL.one("HEALTHCHECK").args.partition(" CMD ")[2]
    health_argv = _as_image_user(json.loads(healthcheck))
    log_path = root / "relay.log"
    with open(log_path, "wb") as log:
        # unshare, sh and setpriv exec one another: this pid is the relay's.
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            env=env, stdout=log, stderr=log, cwd=data,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"relay exited {proc.returncode}:\n{log_path.read_text()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=60)

        # the process is the image's user, without privileges, on a read-only root
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.M), status
        assert re.search(rf"^Gid:\s+{GID}\s+{GID}\s+{GID}\s+{GID}$", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(
            r"^CapBnd:\s+0+$", status, re.M
        )
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        assert "serve" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        mounts = _mount_options(proc.pid)
        assert mounts["/"] == "ro" and mounts[str(venv)] == "ro"
        assert mounts[str(data)] == "rw" and mounts["/tmp"] == "rw"
        rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M).group(1))  # type: ignore[union-attr]

        assert (await _healthcheck(health_argv, env)) == 0

        async with aiohttp.ClientSession() as s:
            body = minio_body("photos", "smoke/cat 1.jpg", 1)
            async with s.post(url + "/minio", data=body) as r:
                assert r.status == 401  # the token the image gets by env is enforced
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            async with s.post(url + "/minio", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"accepted": 1, "duplicates": 0}

            def delivered() -> bool:
                path = data / "events.ndjson"
                lines = path.read_text().splitlines() if path.exists() else []
                return any(json.loads(line)["Key"] == "photos/smoke/cat 1.jpg" for line in lines)

            await eventually(delivered, timeout=30)
            async with s.get(url + "/metrics") as r:
                metrics = await r.text()
        assert re.search(r'^relay_sink_up\{sink="file:smoke"\} 1\.0$', metrics, re.M)
        assert re.search(
            r'^relay_events_received_total\{[^}]*source="minio"[^}]*\} 1\.0$', metrics, re.M
        )

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=shutdown_timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {shutdown_timeout}s after SIGTERM") from None
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = log_path.read_text()
    assert code == 0, logs
    entries = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert [e["msg"] for e in entries][-2:] == ["shutting down", "stopped"], logs
    assert not [e for e in entries if e["level"] in ("error", "critical")], logs
    assert "Read-only file system" not in logs and "Permission denied" not in logs, logs
    assert (await _healthcheck(health_argv, env)) != 0
    written = sorted(p.name for p in data.iterdir())
    assert {"relay.db", "events.ndjson"} <= set(written)
    assert all(p.stat().st_uid == UID for p in data.iterdir())
    print(f"\nimage smoke: stopped in {took:.2f}s (limit {shutdown_timeout:g}s), "
          f"RSS {rss_kib / 1024:.0f} MiB, data dir {written}, /tmp {sorted(os.listdir(tmp))}")  # fmt: skip


async def _healthcheck(argv: list[str], env: dict[str, str]) -> int:
    """The HEALTHCHECK command's exit status, run as the image's user with its env."""
    result = await asyncio.to_thread(subprocess.run, argv, env=env, timeout=30, capture_output=True)
    return result.returncode


def _mount_options(pid: int) -> dict[str, str]:
    """Mount point → "ro"/"rw", as the process sees its mounts (the last mount wins)."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        found[fields[4].replace("\\040", " ")] = fields[5].split(",")[0]
    return found
