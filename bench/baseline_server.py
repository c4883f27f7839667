"""The ceiling for Python HTTP on this machine: an aiohttp server that reads and parses each
body like the relay does, then answers 200 without storing anything."""

from __future__ import annotations

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
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="ok"))  # readiness probe
    app.router.add_post("/{tail:.*}", receive)
    uvloop.run(web._run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                            print=None))  # fmt: skip


if __name__ == "__main__":
    main()
