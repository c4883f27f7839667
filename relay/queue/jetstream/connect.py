"""How the replicated log reaches its NATS servers, and the names it keeps there.

One client per process. nats-py reconnects by itself, forever (the log has nowhere else
to go); while it reconnects, ingest answers 503 (`log_unavailable`) rather than queue
publishes in the reconnect buffer behind requests that already gave up.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from relay.config import Settings, log_servers

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Names:
    """The stream, subjects and buckets of one log (RELAY_LOG_NAME)."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}_events"

    @property
    def event_subjects(self) -> str:
        return f"{self.prefix}.ev.>"

    def event_subject(self, event_id: str) -> str:
        return f"{self.prefix}.ev.{event_id}"

    @property
    def quarantine(self) -> str:
        return f"{self.prefix}_quarantine"

    @property
    def quarantine_subject(self) -> str:
        return f"{self.prefix}.quarantine"

    @property
    def ids(self) -> str:
        """A stream of one message whose sequence numbers the dead letters."""
        return f"{self.prefix}_ids"

    @property
    def ids_subject(self) -> str:
        return f"{self.prefix}.ids"

    @property
    def sinks(self) -> str:
        return f"{self.prefix}_sinks"

    @property
    def leases(self) -> str:
        return f"{self.prefix}_leases"

    @property
    def dead(self) -> str:
        return f"{self.prefix}_dead"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    uses_tls = any(u.startswith("tls://") for u in log_servers(settings.log))
    if not (uses_tls or settings.log_tls_ca or settings.log_tls_client_cert):
        return None
    context = ssl.create_default_context(cafile=settings.log_tls_ca or None)
    if settings.log_tls_client_cert:
        context.load_cert_chain(settings.log_tls_client_cert, settings.log_tls_client_key)
    return context


def auth(settings: Settings) -> dict[str, Any]:
    if settings.log_username:
        return {"user": settings.log_username, "password": settings.log_password}
    if settings.log_token:
        return {"token": settings.log_token}
    if settings.log_credentials_file:
        return {"user_credentials": settings.log_credentials_file}
    return {}


async def connect(settings: Settings, name: str, **callbacks: Any) -> NatsClient:
    """A client of every server of RELAY_LOG (raises when none answers in time)."""
    return await nats.connect(
        servers=list(log_servers(settings.log)),
        name=name,
        connect_timeout=CONNECT_TIMEOUT,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        tls=tls_context(settings),
        **auth(settings),
        **callbacks,
    )
