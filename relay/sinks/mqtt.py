"""MQTT sink: publishes each event to a topic, as MinIO's and RustFS's MQTT targets do.

With QOS 1 (the default) an event counts as delivered once the broker's PUBACK for it has
arrived (QOS 2: its PUBCOMP). A batch is published in order on one connection and every
acknowledgement is awaited; an event whose acknowledgement does not come is sent again, so
a subscriber may see it twice (MQTT 3.1.1 has no message id to dedupe on: use
FORMAT=cloudevents to carry the event id in the body). QOS 0 is fire-and-forget: "delivered"
only means written to the socket, and a broker that goes away loses it. The relay owns the
connection: after any error it is dropped and opened again on the next attempt, and nothing
waits in the MQTT client's own memory; undelivered events stay in the relay's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Result, Retryable
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

log = logging.getLogger("relay.sinks.mqtt")

TYPE = "mqtt"
OPTIONS = (
    Option(
        "broker",
        "str",
        "",
        "Broker: `host:port`, `tcp://host:port` (also `mqtt://`), or `ssl://host:port` "
        "for TLS (also `tls://`, `mqtts://`). MQTT over WebSocket is not supported.",
        required=True,
    ),
    Option(
        "topic",
        "str",
        "",
        "Topic each event is published to; may hold `{bucket}`, `{event}`, `{source}`.",
        required=True,
    ),
    Option(
        "qos",
        "int",
        1,
        "1: delivered once the broker acknowledged it (PUBACK). 2: PUBCOMP. 0: "
        "fire-and-forget, lost if the broker goes away (MinIO's default; not recommended).",
    ),
    Option("username", "str", "", "User name."),
    Option("password", "str", "", "Password of USERNAME.", secret=True),
    Option("tls_ca", "str", "", "PEM CA bundle that signs the broker's certificate."),
    Option("tls_client_cert", "str", "", "PEM client certificate for mutual TLS."),
    Option("tls_client_key", "str", "", "PEM key of TLS_CLIENT_CERT."),
    Option(
        "keep_alive_interval",
        "duration",
        30.0,
        "MQTT keep-alive: the broker (and the client) drop a connection silent for 1.5 times this.",
    ),
    Option(
        "reconnect_interval",
        "duration",
        5.0,
        "Least time between two connection attempts after a failed one.",
    ),
    Option("retain", "bool", False, "Publish with the retain flag."),
)

_USERINFO = re.compile(r"//[^/@\s]*@")
# CONNACK codes of a refused login (MQTT 3.1.1: 4, 5; as paho reports them for v5: 134, 135)
_REFUSED_LOGIN = {4, 5, 134, 135}


class MqttSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.format = spec["format"]
        self.timeout: float = spec["timeout"]
        self.topic: str = spec["topic"]
        validate_template(self.topic, spec.variable("topic"))
        if "+" in self.topic or "#" in self.topic:
            raise ConfigError(f"{spec.variable('topic')}: wildcards (+, #) cannot be published to")
        self.qos: int = spec["qos"]
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"{spec.variable('qos')}: must be 0, 1 or 2")
        self.retain: bool = spec["retain"]
        self.keepalive = max(1, round(spec["keep_alive_interval"]))
        self.reconnect_interval: float = spec["reconnect_interval"]
        self.batch_size: int = spec["batch_size"]
        self.client_options = _client_options(spec)
        self.where = f"{self.client_options['hostname']}:{self.client_options['port']}"
        # a secret under 4 characters would be "found" inside ordinary words
        self.secrets = [s for s in (spec["password"],) if len(s) >= 4]
        # a unique id: two relays (or a restart racing the old session) never kick each other
        self.identifier = f"s3-notify-relay-{spec.id}-{uuid.uuid4().hex[:8]}"
        self.client: aiomqtt.Client | None = None
        self.stack: contextlib.AsyncExitStack | None = None
        self.watcher: asyncio.Task[None] | None = None  # ends when the connection is lost
        self.failed_at = 0.0
        self.last_error = ""

    # -- connection ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is None:
            await self._connect(respect_interval=False)

    async def _connect(self, respect_interval: bool = True) -> aiomqtt.Client:
        waited = time.monotonic() - self.failed_at
        if respect_interval and waited < self.reconnect_interval:
            raise Retryable(
                f"not connected to {self.where} ({self.last_error}); next attempt in "
                f"{self.reconnect_interval - waited:.1f}s"
            )
        client = aiomqtt.Client(
            identifier=self.identifier,
            keepalive=self.keepalive,
            timeout=self.timeout,
            # paho keeps unsent QoS>0 messages in memory for a reconnect that never comes
            # (we make a new client instead); bounding its queue bounds that memory
            max_queued_outgoing_messages=self.batch_size,
            max_inflight_messages=self.batch_size,
            logger=log,  # paho's chatter under the sink's logger, not a bare "mqtt"
            **self.client_options,
        )
        # every publish of a batch is in flight at once; that is expected, not a leak
        client.pending_calls_threshold = self.batch_size + 1
        stack = contextlib.AsyncExitStack()
        try:
            # paho's blocking connect runs in a thread bounded by its own 5 s connect
            # timeout, the CONNACK wait by `timeout`; the outer bound covers both
            async with asyncio.timeout(self.timeout + 6):
                await stack.enter_async_context(client)
        except Exception as exc:
            self.failed_at = time.monotonic()
            self.last_error = self._describe(exc)
            if _refused_login(exc):
                # the sink stays down and events wait until the login is fixed
                raise Retryable(f"{self.where} refused the login: {self.last_error}") from None
            raise Retryable(f"cannot connect to {self.where}: {self.last_error}") from None
        self.client, self.stack = client, stack
        self.watcher = asyncio.create_task(_until_disconnected(client))
        self.last_error = ""
        return client

    async def _drop(self) -> None:
        stack, self.stack, self.client = self.stack, None, None
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.cancel()
        if stack is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(self.timeout, 2.0)):
                    await stack.aclose()

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        if self.watcher is not None and self.watcher.done():
            # lost since the last batch (broker restart, keep-alive expiry): publishing on
            # this client would only fail; a new connection, at once
            await self._drop()
        client = self.client or await self._connect()
        results: list[Result] = [None] * len(batch)
        pending: list[tuple[int, asyncio.Task[None]]] = []
        for index, entry in enumerate(batch):
            try:
                topic = render_template(self.topic, entry.event)
                body = render(entry, self.format)
            except ValueError as exc:
                results[index] = Permanent(str(exc))
                continue
            if not topic or "+" in topic or "#" in topic:
                results[index] = Permanent(f"not a topic one can publish to: {topic!r}")
                continue
            # Each task calls paho's publish before its first await, so the messages are
            # queued in batch order; the broker keeps that order on one connection.
            task = asyncio.create_task(
                client.publish(topic, body, qos=self.qos, retain=self.retain, timeout=self.timeout)
            )
            pending.append((index, task))
        if not pending:
            return results
        outcomes = await self._acknowledged([task for _, task in pending])
        broken: str | None = None
        for (index, _), outcome in zip(pending, outcomes):
            if broken is not None:
                # after a failure nothing later counts as delivered: it is sent again with
                # the failed one, so events leave in order (duplicates rather than gaps)
                results[index] = Retryable(f"not confirmed: an earlier event failed ({broken})")
            elif isinstance(outcome, BaseException):
                broken = self._describe(outcome)
                results[index] = Retryable(f"publish to {self.where} failed: {broken}")
        if broken is not None:
            # the connection is suspect (closed, or acknowledgements stopped): a new one on
            # the next attempt; the old client and whatever paho queued go with it
            self.failed_at = time.monotonic() - self.reconnect_interval  # reconnect at once
            self.last_error = broken
            await self._drop()
        return results

    async def _acknowledged(self, tasks: list[asyncio.Task[None]]) -> list[BaseException | None]:
        """Wait for every acknowledgement, but no longer than `timeout`, and not at all once
        the connection is lost (aiomqtt leaves pending publishes waiting out their timeout
        then)."""
        gathering = asyncio.gather(*tasks, return_exceptions=True)
        watcher = self.watcher
        waits: set[asyncio.Future[Any]] = {gathering} | ({watcher} if watcher else set())
        await asyncio.wait(waits, timeout=self.timeout + 1, return_when=asyncio.FIRST_COMPLETED)
        if gathering.done():
            return list(gathering.result())
        lost = watcher is not None and watcher.done()
        reason = "connection lost" if lost else f"no acknowledgement within {self.timeout:g}s"
        gathering.cancel()
        outcomes: list[BaseException | None] = []
        for task in tasks:
            if task.done() and not task.cancelled():
                outcomes.append(task.exception())
            else:
                task.cancel()
                outcomes.append(ConnectionError(reason))
        with contextlib.suppress(asyncio.CancelledError):
            await gathering
        return outcomes

    # -- the rest -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self._drop()

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(min(self.timeout + 6, 9.0)):
                if self.client is None:
                    await self._connect(respect_interval=False)
        except Exception as exc:
            return Health(False, self._describe(exc))
        return Health(True, f"connected to {self.where} (QoS {self.qos})")

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, aiomqtt.MqttCodeError):
            text = f"{exc.rc}: {exc}" if str(exc) else str(exc.rc)
        else:
            text = str(exc) or type(exc).__name__
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _USERINFO.sub("//***@", text)


async def _until_disconnected(client: aiomqtt.Client) -> None:
    # Nothing is subscribed, so the iterator yields nothing; it ends with MqttError when the
    # connection goes away, the one public signal aiomqtt gives for that.
    with contextlib.suppress(aiomqtt.MqttError):
        async for _ in client.messages:
            pass


def _refused_login(exc: BaseException) -> bool:
    if not isinstance(exc, MqttConnectError):
        return False
    code = getattr(exc.rc, "value", exc.rc)
    return isinstance(code, int) and code in _REFUSED_LOGIN


def _client_options(spec: SinkSpec) -> dict[str, Any]:
    raw: str = spec["broker"].strip()
    url = raw if "://" in raw else f"tcp://{raw}"
    parts = urlsplit(url)
    shown = _USERINFO.sub("//***@", raw)
    schemes = {"tcp": 1883, "mqtt": 1883, "ssl": 8883, "tls": 8883, "mqtts": 8883}
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{spec.variable('broker')}: {shown!r} has an invalid port") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(
            f"{spec.variable('broker')}: {shown!r} is not host:port, tcp://host:port or "
            "ssl://host:port"
        )
    if parts.username or parts.password:
        raise ConfigError(
            f"{spec.variable('broker')}: put the user in USERNAME and PASSWORD, not in the URL"
        )
    if spec["password"] and not spec["username"]:
        raise ConfigError(f"{spec.variable('username')}: required with PASSWORD")
    options: dict[str, Any] = {
        "hostname": parts.hostname,
        "port": port or schemes[parts.scheme],
        "username": spec["username"] or None,
        "password": spec["password"] or None,
    }
    tls = parts.scheme in ("ssl", "tls", "mqtts")
    if spec["tls_ca"] or spec["tls_client_cert"] or spec["tls_client_key"]:
        if not tls:
            raise ConfigError(
                f"{spec.variable('tls_ca')}: TLS files are set but {spec.variable('broker')} "
                "is not ssl://"
            )
    if tls:
        options["tls_context"] = client_context(spec)
    return options


def create(spec: SinkSpec) -> MqttSink:
    return MqttSink(spec)
