"""Durable ingest throughput and ack latency, against a bare-aiohttp baseline in the same run.

    python -m bench.ingest [--seconds 10] [--connections 64]

Needs `wrk` (Debian package `wrk`). wrk runs on one core with one thread and the server on
the other, each request a distinct MinIO body (one record per request, as the stores send).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
local n = 0
local prefix = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  local id = prefix .. "-" .. n
  local body = '{"EventName":"s3:ObjectCreated:Put","Key":"bench/obj-' .. id .. '.bin",' ..
    '"Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"",' ..
    '"eventTime":"2026-03-04T10:11:12.345Z","eventName":"s3:ObjectCreated:Put",' ..
    '"userIdentity":{"principalId":"minioadmin"},"requestParameters":{"principalId":"minioadmin",' ..
    '"region":"","sourceIPAddress":"10.0.0.7"},"responseElements":{"x-amz-id-2":"dd9025bab4ad464b0491",' ..
    '"x-amz-request-id":"' .. id .. '","x-minio-deployment-id":"6b3c0f5e-1111-2222-3333-444455556666",' ..
    '"x-minio-origin-endpoint":"http://10.0.0.2:9000"},"s3":{"s3SchemaVersion":"1.0",' ..
    '"configurationId":"Config","bucket":{"name":"bench","ownerIdentity":{"principalId":"minioadmin"},' ..
    '"arn":"arn:aws:s3:::bench"},"object":{"key":"obj-' .. id .. '.bin","size":52311,' ..
    '"eTag":"9b2cf535f27731c974343645a3985328","contentType":"application/octet-stream",' ..
    '"userMetadata":{"content-type":"application/octet-stream"},"sequencer":"1829C3F0A5B1E2D4"}},' ..
    '"source":{"host":"10.0.0.7","port":"","userAgent":"MinIO (linux; amd64) minio-go/v7.0.70"}}]}'
  return wrk.format(nil, "/minio", nil, body)
end
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, path: str = "/healthz", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not come up")


def run_wrk(port: int, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            value, unit = float(m.group(1)), m.group(2)
            result[f"p{pct}"] = (
                value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
            )
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    return result


def measure(name: str, argv: list[str], env: dict[str, str], port: int, health: str,
            args: argparse.Namespace, script: Path) -> dict[str, float]:  # fmt: skip
    proc = subprocess.Popen(["taskset", "-c", "1", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_up(port, health)
        run_wrk(port, 2, args.connections, script)  # warm-up
        result = run_wrk(port, args.seconds, args.connections, script)
    finally:
        proc.terminate()
        proc.wait(20)
    print(f"  {name:<28} {result['rps']:>9.0f} ev/s   p50 {result.get('p50', 0):6.2f} ms   "
          f"p99 {result.get('p99', 0):6.2f} ms   non-2xx {result['errors']:.0f}", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    script = work / "minio.lua"
    script.write_text(WRK_SCRIPT)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {platform.machine()}")  # fmt: skip
    print(f"load: wrk, 1 thread, {args.connections} keep-alive connections, {args.seconds}s, "
          "one MinIO record per request")  # fmt: skip
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "RUSTFS_", "MINIO_"))
    }
    results = {}
    port = free_port()
    results["baseline"] = measure(
        "bare aiohttp (no storage)", [sys.executable, "-m", "bench.baseline_server", str(port)],
        base, port, "/", args, script,
    )  # fmt: skip
    for sync in ("full", "normal"):
        port = free_port()
        data = work / f"data-{sync}"
        env = {**base, "RELAY_LISTEN": f"127.0.0.1:{port}", "RELAY_DATA_DIR": str(data),
               "RELAY_SYNC": sync, "RELAY_AUTH_TOKENS": "bench-token",
               "RELAY_MIN_FREE_BYTES": "0", "RELAY_LOG_LEVEL": "warning"}  # fmt: skip
        results[sync] = measure(f"relay, RELAY_SYNC={sync}", [sys.executable, "-m", "relay", "serve"],
                                env, port, "/healthz", args, script)  # fmt: skip
    b = results["baseline"]["rps"]
    print(f"ratio durable (full) / baseline: {results['full']['rps'] / b:.2f}   "
          f"normal / baseline: {results['normal']['rps'] / b:.2f}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
