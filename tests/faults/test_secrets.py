"""Secrets never leave the relay: tokens, passwords and DSNs configured below are searched
for in every output it produces (logs, /metrics, CLI output, dead letters, quarantine) after
it has been made to fail in the ways that print errors."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults
SECRETS = {
    "ingest": "ingest-secret-7Qx",
    "ingest2": "rotated-secret-9Lm",
    "webhook": "webhook-secret-3Fz",
    "admin": "admin-secret-8Kd",
}


async def test_no_secret_in_any_output(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 401  # the sink refuses: dead letters with errors
    dead_port = free_port()
    relay = await relay_factory({
        "RELAY_AUTH_TOKENS": f"{SECRETS['ingest']},{SECRETS['ingest2']}",
        "RELAY_ADMIN_TOKENS": SECRETS["admin"],
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_A": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_A": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_AUTH_TOKEN_A": SECRETS["webhook"],
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_B": "on",  # unreachable: sink down, retries logged
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_B": f"http://127.0.0.1:{dead_port}/x",
        "RUSTFS_NOTIFY_WEBHOOK_AUTH_TOKEN_B": SECRETS["webhook"],
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_B": "200ms",
        "RELAY_LOG_LEVEL": "debug",
    }).start()  # fmt: skip
    outputs: list[str] = []
    async with aiohttp.ClientSession() as session:
        for auth in (f"Bearer {SECRETS['ingest']}", SECRETS["ingest2"], "Bearer wrong-token"):
            async with session.post(relay.url, data=minio_body("s", "k", len(outputs)),
                                    headers={"Authorization": auth}) as r:  # fmt: skip
                outputs.append(await r.text())
        async with session.post(relay.url + f"/ceph?token={SECRETS['ingest']}",
                                data=b"garbage") as r:  # fmt: skip
            outputs.append(await r.text())  # quarantined, with the query token in its record
        await eventually(
            lambda: "2 dead letter(s)" in relay.cli("dlq", "list", "--sink", "webhook:a").stdout
        )
        await eventually(lambda: '"sink down"' in relay.logs() and "webhook:b" in relay.logs())
        async with session.get(relay.url + "/metrics") as r:
            outputs.append(await r.text())
        async with session.get(relay.url + "/readyz") as r:
            outputs.append(await r.text())
        admin = {"Authorization": f"Bearer {SECRETS['admin']}"}

        async def every_sink_has_recent_errors() -> bool:
            async with session.get(relay.url + "/admin/api/sinks", headers=admin) as r:
                return all(s["recent_errors"] for s in (await r.json())["sinks"])

        await eventually(every_sink_has_recent_errors)  # the status page's rows of errors
        for path in ("/admin/api/sinks", "/admin/api/dlq", "/admin/api/quarantine/1", "/admin/",
                     "/admin/api/series"):  # fmt: skip
            async with session.get(relay.url + path, headers=admin) as r:
                assert r.status == 200, path
                outputs.append(await r.text())
    for args in (("check",), ("queue", "stats"), ("dlq", "list"), ("dlq", "show", "1"),
                 ("quarantine", "list"), ("quarantine", "show", "1")):  # fmt: skip
        result = relay.cli(*args, check=False)
        outputs += [result.stdout, result.stderr]
    await relay.stop()
    outputs.append(relay.logs())
    everything = "\n".join(outputs)
    assert "quarantined" in everything and "HTTP 401" in everything  # the failures happened
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"
