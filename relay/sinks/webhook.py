"""Webhook sink: POSTs each event to an HTTP endpoint, one event per request, as the stores'
own webhook targets do, so a receiver written for MinIO or RustFS works unchanged.

2xx = delivered; 408, 425, 429, 5xx and network errors = retryable; redirects are not
followed and, like every other 4xx, are permanent (the event is dead-lettered, `relay dlq
retry` sends it again once the receiver is fixed). Every request carries `webhook-id: <event
id>`, stable across retries and replays, so a receiver can drop duplicates; a stale event
(an older one than the receiver already had of the object) carries `Relay-Stale: true`.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

import aiohttp

from relay import __version__, signing
from relay.config import ConfigError, Key, SinkConfig, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import probe
from relay.sinks.base import Health, Permanent, Retryable, describe
from relay.sinks.formats import cloudevent_headers, content_type, render
from relay.sinks.tls import client_context

TYPE = "webhook"


class Config(SinkConfig, kw_only=True, frozen=True):
    endpoint: Annotated[str, Key("URL events are POSTed to.", required=True)] = ""
    auth_token: Annotated[
        str,
        Key(
            "One word → `Authorization: Bearer <token>`; two words (e.g. `Basic xyz`) are "
            "sent as written, as MinIO and RustFS do.",
            secret=True,
        ),
    ] = ""
    client_cert: Annotated[str, Key("PEM client certificate for mutual TLS.")] = ""
    client_key: Annotated[str, Key("PEM key of the client certificate.")] = ""
    client_ca: Annotated[str, Key("PEM CA bundle that signs the endpoint's certificate.")] = ""
    skip_tls_verify: Annotated[bool, Key("Do not verify the endpoint's certificate.")] = False
    signing_secret: Annotated[
        tuple[str, ...],
        Key(
            "Standard Webhooks secrets (`whsec_…`, several for rotation): every request gets "
            "`webhook-timestamp` and `webhook-signature` (HMAC-SHA256 over "
            "`id.timestamp.body`).",
            secret=True,
        ),
    ] = ()
    cloudevents_mode: Annotated[
        Literal["structured", "binary"],
        Key(
            "With FORMAT=cloudevents: `structured` (one JSON document) or `binary` (`ce-*` "
            "headers, the record as the body, as Ceph sends)."
        ),
    ] = "structured"


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
        self.config = config = spec.typed(Config)
        parts = urlsplit(config.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{spec.variable('endpoint')}: not an http(s) URL")
        self.target = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self.headers = {
            "Content-Type": content_type(config.format),
            "User-Agent": f"s3-notify-relay/{__version__}",
        }
        if config.auth_token:
            auth = authorization(config.auth_token)
            if auth is None:
                raise ConfigError(
                    f"{spec.variable('auth_token')}: must be one word (a bearer token) or two "
                    "(scheme and credentials)"
                )
            self.headers["Authorization"] = auth
        self.ssl = (
            client_context(spec, config, ca="client_ca", cert="client_cert", key="client_key",
                           skip_verify=config.skip_tls_verify)
            if parts.scheme == "https"
            else None
        )  # fmt: skip
        try:
            self.signing_keys = [signing.secret_key(s) for s in config.signing_secret]
        except ValueError as exc:
            raise ConfigError(f"{spec.variable('signing_secret')}: {exc}") from None
        self.binary = config.format == "cloudevents" and config.cloudevents_mode == "binary"
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is None:
            c = self.config
            connector = aiohttp.TCPConnector(
                limit=c.concurrency, ssl=self.ssl if self.ssl is not None else True
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=c.timeout, connect=min(5.0, c.timeout)),
                headers=self.headers,
            )

    def request(self, entry: LogEntry) -> tuple[bytes, dict[str, str]]:
        """The body and the per-event headers of one event's POST."""
        if self.binary:
            body = entry.event.record
            headers = cloudevent_headers(entry)
        else:
            body = render(entry, self.config.format)
            headers = {}
        headers["webhook-id"] = entry.event.event_id
        if entry.stale:
            headers["Relay-Stale"] = "true"
        if self.signing_keys:
            headers.update(signing.sign(self.signing_keys, entry.event.event_id, body))
        return body, headers

    async def send_event(self, entry: LogEntry) -> None:
        assert self.session is not None, "start() first"
        body, headers = self.request(entry)
        try:
            async with self.session.post(
                self.config.endpoint, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    await response.read()
                    return
                detail = (await response.content.read(200)).decode("utf-8", "replace").strip()
        except TimeoutError:
            raise Retryable(f"timed out after {self.config.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise Retryable(describe(exc)) from None
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
        return await probe.tcp([self.target])


def create(spec: SinkSpec) -> WebhookSink:
    return WebhookSink(spec)
