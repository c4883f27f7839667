"""An ingest worker passes /admin (the API, the status page, the live tail) on to the
delivery process, which has the dispatchers the admin API acts on. Operators' requests are
few; a live tail is streamed through as it comes."""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web

SESSION_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("delivery_session")
STREAMS_KEY: web.AppKey[set[aiohttp.ClientResponse]] = web.AppKey("delivery_streams")
# hop-by-hop headers, and the length of a body that is streamed on in chunks
_NOT_PASSED = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authenticate", "proxy-connection", "content-length", "host"}  # fmt: skip


def mount(app: web.Application, address: str) -> None:
    """`address`: the delivery process's admin socket."""

    async def open_session(app: web.Application) -> None:
        app[SESSION_KEY] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=address),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )

    async def close_session(app: web.Application) -> None:
        for upstream in app[STREAMS_KEY]:
            upstream.close()  # ends its passing-on handler
        await app[SESSION_KEY].close()

    app[STREAMS_KEY] = set()
    app.on_startup.append(open_session)
    # at shutdown, before the server waits for its handlers: a live tail being passed on
    # would otherwise hold this worker until the delivery process, stopped after it, ends it
    app.on_shutdown.append(close_session)
    app.router.add_route("*", "/admin", to_delivery)
    app.router.add_route("*", "/admin/{tail:.*}", to_delivery)


async def to_delivery(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION_KEY]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_PASSED}
    body = await request.read() if request.body_exists else None
    try:
        upstream = await session.request(
            request.method, f"http://relay{request.rel_url}", headers=headers, data=body,
            allow_redirects=False,
        )  # fmt: skip
    except (aiohttp.ClientError, OSError):
        return web.json_response(
            {"error": "the delivery process is not answering (being restarted?)"},
            status=503, headers={"Retry-After": "1"},
        )  # fmt: skip
    streams = request.app[STREAMS_KEY]
    streams.add(upstream)
    try:
        return await _pass_on(request, upstream)
    finally:
        streams.discard(upstream)
        upstream.close()


async def _pass_on(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for key, value in upstream.headers.items():
        if key.lower() not in _NOT_PASSED:
            response.headers.add(key, value)
    await response.prepare(request)
    with contextlib.suppress(aiohttp.ClientError, ConnectionResetError):
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    await response.write_eof()
    return response
