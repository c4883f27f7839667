"""Reachability probes for `health()`: what MinIO checks of its own targets, whether a TCP
connection can be opened to the endpoint (or to one of several)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from relay.sinks.base import Health, describe

PROBE_TIMEOUT = 5.0


def endpoint(address: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare host → (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        return address.strip().strip("[]"), default_port
    return host.strip("[]"), int(port)


async def tcp(endpoints: Sequence[tuple[str, int]], within: float = PROBE_TIMEOUT) -> Health:
    """Healthy when one of `endpoints` accepts a TCP connection."""
    errors = []
    for host, port in endpoints:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
        except (OSError, TimeoutError) as exc:
            errors.append(f"{host}:{port}: {describe(exc)}")
            continue
        writer.close()
        return Health(True, f"{host}:{port} accepts connections")
    return Health(False, "cannot connect to " + "; ".join(errors))
