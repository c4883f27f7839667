"""Live reload: rules on SIGHUP (`relay reload`), TLS files when they change on disk — for
ingest and for a sink — with no restart and nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.bodies import minio_body
from tests.support.certs import CA, install, make_ca
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "reload-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(url: str, key: str, n: int, ssl_context: ssl.SSLContext | bool = True) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=minio_body("r", key, n), headers=AUTH,
                                ssl=ssl_context) as response:  # fmt: skip
            return response.status


async def test_rules_reload_on_sighup_and_invalid_rules_are_refused(
    tmp_path: Path, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[rules.jpg]\nsuffix = ".jpg"\n')
    relay = await relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN, "RELAY_RULES_FILE": str(rules),
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_W": "on", "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_W": receiver.url,
    }).start()  # fmt: skip
    assert await post(relay.url, "a.txt", 1) == 200  # not routed
    assert await post(relay.url, "b.jpg", 2) == 200
    await receiver.wait_for(1)

    rules.write_text('[rules.txt]\nsuffix = ".txt"\n')
    assert "reload signal sent" in relay.cli("reload").stdout
    await eventually(lambda: '"rules reloaded"' in relay.logs())
    assert await post(relay.url, "c.txt", 3) == 200
    await receiver.wait_for(2)

    rules.write_text('[rules.txt]\nsufix = ".txt"\n')  # a typo
    assert relay.cli("reload", check=False).returncode == 2  # the CLI checks first
    assert relay.proc is not None
    os.kill(relay.proc.pid, signal.SIGHUP)  # a signal from elsewhere: the relay checks too
    await eventually(lambda: '"reload refused' in relay.logs())
    assert await post(relay.url, "d.txt", 4) == 200  # the running rules still route .txt
    got = await receiver.wait_for(3)
    assert [r.json()["Key"] for r in got] == ["r/b.jpg", "r/c.txt", "r/d.txt"]


def peer_name(context: ssl.SSLContext, port: int) -> str:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            cert = tls.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]  # type: ignore[index]


async def test_ingest_tls_with_client_certificates_and_rotation(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    ca: CA = await asyncio.to_thread(make_ca, tmp_path / "ca")
    first, second, client = [
        await asyncio.to_thread(ca.issue, n) for n in ("first", "second", "sender")
    ]
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(first, cert, key)
    relay = relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN, "RELAY_TLS_CERT": str(cert), "RELAY_TLS_KEY": str(key),
        "RELAY_TLS_CLIENT_CA": str(ca.cert),
    })  # fmt: skip
    # the readiness probe of RelayProcess speaks plain HTTP: wait for the port instead
    relay_url = f"https://127.0.0.1:{relay.port}"
    sender = ssl.create_default_context(cafile=str(ca.cert))
    sender.load_cert_chain(str(client.cert), str(client.key))
    await relay.start(probe=False)

    async def up() -> bool:
        try:
            return await asyncio.to_thread(peer_name, sender, relay.port) == "first"
        except OSError:
            return False

    await eventually(up)
    assert await post(relay_url, "k", 1, sender) == 200
    anonymous = ssl.create_default_context(cafile=str(ca.cert))  # no client certificate
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):  # refused in the handshake
        await post(relay_url, "k", 2, anonymous)

    install(second, cert, key)  # cert-manager rotates the certificate

    async def rotated() -> bool:
        return await asyncio.to_thread(peer_name, sender, relay.port) == "second"

    await eventually(rotated, timeout=10)
    assert await post(relay_url, "k", 3, sender) == 200
    assert relay.proc is not None and relay.proc.poll() is None  # no restart


async def test_sink_client_certificate_rotation(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    ca = await asyncio.to_thread(make_ca, tmp_path / "ca")
    server, old, new = [await asyncio.to_thread(ca.issue, n) for n in ("receiver", "old", "new")]
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append(dict(x[0] for x in peer["subject"])["commonName"])  # type: ignore[index]
        await request.read()
        response = web.Response(text="ok")
        response.force_close()  # each event on a new connection: a new TLS handshake
        return response

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert))
    context.load_cert_chain(str(server.cert), str(server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()

    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    install(old, cert, key)
    relay = await relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_TLS": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_TLS": f"https://127.0.0.1:{port}/hook",
        "RUSTFS_NOTIFY_WEBHOOK_CLIENT_CA_TLS": str(ca.cert),
        "RUSTFS_NOTIFY_WEBHOOK_CLIENT_CERT_TLS": str(cert),
        "RUSTFS_NOTIFY_WEBHOOK_CLIENT_KEY_TLS": str(key),
    }).start()  # fmt: skip
    assert await post(relay.url, "k1", 1) == 200
    await eventually(lambda: seen == ["old"])

    install(new, cert, key)
    n = 2

    async def rotated() -> bool:
        nonlocal n
        n += 1
        assert await post(relay.url, f"k{n}", n) == 200
        await eventually(lambda: len(seen) >= n - 1)
        return seen[-1] == "new"

    await eventually(rotated, timeout=20, interval=0.5)
    assert relay.proc is not None and relay.proc.poll() is None  # no restart
    assert len(seen) == n - 1  # every event delivered, before and after the rotation
    await runner.cleanup()
