"""Webhook sink: POSTs each event to an HTTP endpoint, one event per request, as the stores'
own webhook targets do, so a receiver written for MinIO or RustFS works unchanged.

2xx = delivered; 408, 429, 5xx and network errors = retryable; redirects are not followed
and, like every other 4xx, are permanent (the event is dead-lettered, `relay dlq retry`
sends it again once the receiver is fixed). Every request carries `webhook-id: <event id>`,
stable across retries and replays, so a receiver can drop duplicates.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp

from relay import __version__, signing
from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Retryable
from relay.sinks.formats import cloudevent_headers, content_type, render
from relay.sinks.tls import client_context

TYPE = "webhook"
OPTIONS = (
    Option("endpoint", "str", "", "URL events are POSTed to.", required=True),
    Option(
        "auth_token",
        "str",
        "",
        "One word → `Authorization: Bearer <token>`; two words "
        "(e.g. `Basic xyz`) are sent as written, as MinIO and RustFS do.",
        secret=True,
    ),
    Option("client_cert", "str", "", "PEM client certificate for mutual TLS."),
    Option("client_key", "str", "", "PEM key of the client certificate.", secret=False),
    Option("client_ca", "str", "", "PEM CA bundle that signs the endpoint's certificate."),
    Option("skip_tls_verify", "bool", False, "Do not verify the endpoint's certificate."),
    Option(
        "signing_secret",
        "list",
        (),
        "Standard Webhooks secrets (`whsec_…`, several for "
        "rotation): every request gets `webhook-timestamp` and `webhook-signature` (HMAC-SHA256 "
        "over `id.timestamp.body`).",
        secret=True,
    ),
    Option(
        "cloudevents_mode",
        "choice",
        "structured",
        "With FORMAT=cloudevents: `structured` "
        "(one JSON document) or `binary` (`ce-*` headers, the record as the body, as Ceph "
        "sends).",
        choices=("structured", "binary"),
    ),
)

RETRYABLE_STATUS = {408, 425, 429}


def authorization(token: str) -> str | None:
    words = token.split()
    if len(words) == 1:
        return f"Bearer {words[0]}"
    if len(words) == 2:
        return token.strip()
    return None


class WebhookSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.endpoint = spec["endpoint"]
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{spec.variable('endpoint')}: not an http(s) URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.format = spec["format"]
        self.concurrency = spec["concurrency"]
        self.timeout = spec["timeout"]
        self.headers = {
            "Content-Type": content_type(self.format),
            "User-Agent": f"s3-notify-relay/{__version__}",
        }
        if spec["auth_token"]:
            auth = authorization(spec["auth_token"])
            if auth is None:
                raise ConfigError(
                    f"{spec.variable('auth_token')}: must be one word (a bearer token) or two "
                    "(scheme and credentials)"
                )
            self.headers["Authorization"] = auth
        self.ssl = (
            client_context(spec, ca="client_ca", cert="client_cert", key="client_key",
                           skip_verify=spec["skip_tls_verify"])
            if parts.scheme == "https"
            else None
        )  # fmt: skip
        try:
            self.signing_keys = [signing.secret_key(s) for s in spec["signing_secret"]]
        except ValueError as exc:
            raise ConfigError(f"{spec.variable('signing_secret')}: {exc}") from None
        self.binary = self.format == "cloudevents" and spec["cloudevents_mode"] == "binary"
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency, ssl=self.ssl if self.ssl is not None else True
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(5.0, self.timeout)),
                headers=self.headers,
            )

    async def send_event(self, entry: LogEntry) -> None:
        assert self.session is not None, "start() first"
        if self.binary:
            body = entry.event.record
            headers = cloudevent_headers(entry)
        else:
            body = render(entry, self.format)
            headers = {}
        headers["webhook-id"] = entry.event.event_id
        if entry.stale:
            headers["Relay-Stale"] = "true"
        if self.signing_keys:
            headers.update(signing.sign(self.signing_keys, entry.event.event_id, body))
        try:
            async with self.session.post(
                self.endpoint, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    await response.read()
                    return
                detail = (await response.content.read(200)).decode("utf-8", "replace").strip()
        except TimeoutError:
            raise Retryable(f"timed out after {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status >= 500 or status in RETRYABLE_STATUS:
            raise Retryable(message)
        if 300 <= status < 400:
            raise Permanent(f"{message} (redirects are not followed; fix the endpoint)")
        raise Permanent(message)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def health(self) -> Health:
        # What MinIO checks: can a TCP connection be opened to the endpoint.
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout=5
            )
        except (OSError, TimeoutError) as exc:
            return Health(False, f"cannot connect to {self.host}:{self.port}: {exc}")
        writer.close()
        return Health(True, f"{self.host}:{self.port} accepts connections")


def create(spec: SinkSpec) -> WebhookSink:
    return WebhookSink(spec)
