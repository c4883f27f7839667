"""Reachability probes for `health()`: what MinIO checks of its own targets, whether a TCP
connection can be opened to the endpoint (or to one of several), and for a sink that speaks
TLS whether the handshake with its own context succeeds (a server certificate its CA did not
sign shows here, not only at the first send)."""

from __future__ import annotations

import asyncio
import ssl as tls
from collections.abc import Sequence

from relay.sinks.base import Health, describe

PROBE_TIMEOUT = 5.0
# TLS 1.3 completes the client's side of the handshake before the server has checked the
# client's certificate: a refusal is an alert that follows at once, waited for this long.
REFUSAL_WAIT = 0.3


def endpoint(address: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare host → (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        return address.strip().strip("[]"), default_port
    return host.strip("[]"), int(port)


async def tcp(
    endpoints: Sequence[tuple[str, int]],
    within: float = PROBE_TIMEOUT,
    ssl: tls.SSLContext | None = None,
) -> Health:
    """Healthy when one of `endpoints` accepts a TCP connection, and with `ssl` (the sink's
    client context) completes a TLS handshake."""
    errors = []
    for host, port in endpoints:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl, server_hostname=host if ssl else None),
                within,
            )
        except tls.SSLError as exc:
            errors.append(f"{host}:{port}: TLS handshake failed: {describe(exc)}")
            continue
        except (OSError, TimeoutError) as exc:
            errors.append(f"{host}:{port}: {describe(exc)}")
            continue
        try:
            if ssl is not None:
                await asyncio.wait_for(reader.read(1), REFUSAL_WAIT)
        except tls.SSLError as exc:
            errors.append(f"{host}:{port}: the server refused the TLS connection: "
                          f"{describe(exc)}")  # fmt: skip
            continue
        except (OSError, TimeoutError):
            pass  # nothing said: the server waits for the client to speak first
        finally:
            writer.close()
        what = "TLS connections" if ssl else "connections"
        return Health(True, f"{host}:{port} accepts {what}")
    return Health(False, "cannot connect to " + "; ".join(errors))
