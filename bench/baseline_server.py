"""The ceiling for Python HTTP on this machine: an aiohttp server that reads and parses each
body like the relay does, then answers 200 without storing anything.

    python -m bench.baseline_server PORT [PROCESSES]

With PROCESSES > 1, that many such servers share the port (SO_REUSEPORT): what any number
of Python processes can answer here, the ceiling of the relay's RELAY_WORKERS."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import uvloop
from aiohttp import web

_decode = msgspec.json.Decoder()


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    _decode.decode(body)
    return web.json_response({"accepted": 1, "duplicates": 0})


def main() -> None:
    port = int(sys.argv[1])
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    children = [subprocess.Popen([sys.executable, "-m", "bench.baseline_server", str(port), "1",
                                  "shared"]) for _ in range(processes - 1)]  # fmt: skip
    shared = processes > 1 or sys.argv[3:] == ["shared"]
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="ok"))  # readiness probe
    app.router.add_post("/{tail:.*}", receive)
    try:
        uvloop.run(web._run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                                reuse_port=shared))  # fmt: skip
    finally:
        for child in children:
            child.terminate()


if __name__ == "__main__":
    main()
