"""MQTT sink: publishes each event to a topic, as MinIO's and RustFS's MQTT targets do.

With QOS 1 (the default) an event counts as delivered once the broker's PUBACK for it has
arrived (QOS 2: its PUBCOMP). Up to CONCURRENCY events are in flight at once on one
connection, one object's events one after the other; an event whose acknowledgement does
not come is sent again, so a subscriber may see it twice (MQTT 3.1.1 has no message id to
dedupe on: use FORMAT=cloudevents to carry the event id in the body). QOS 0 is
fire-and-forget: "delivered" only means written to the socket, and a broker that goes away
loses it. MQTT 3.1.1 has no negative acknowledgement either: a publish the broker's ACL
denies is acknowledged and dropped (Mosquitto), so check the ACL of the relay's user.

The relay owns the connection: after any error it is dropped and opened again on the next
attempt (at least RECONNECT_INTERVAL after a failed one), and nothing waits in the MQTT
client's own memory; undelivered events stay in the relay's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from relay.config import ConfigError, Duration, Key, SinkConfig, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import clientlogs
from relay.sinks.base import DeliveryError, Health, Permanent, Retryable, exc_text
from relay.sinks.connection import Connection
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

TYPE = "mqtt"


class Config(SinkConfig, kw_only=True, frozen=True):
    broker: Annotated[
        str,
        Key(
            "Broker: `host:port`, `tcp://host:port` (also `mqtt://`), or `ssl://host:port` "
            "for TLS (also `tls://`, `mqtts://`). MQTT over WebSocket is not supported.",
            required=True,
        ),
    ] = ""
    topic: Annotated[
        str,
        Key(
            "Topic each event is published to; may hold `{bucket}`, `{event}`, `{source}`.",
            required=True,
        ),
    ] = ""
    qos: Annotated[
        int,
        Key(
            "1: delivered once the broker acknowledged it (PUBACK). 2: PUBCOMP. 0: "
            "fire-and-forget, lost if the broker goes away (MinIO's default; not recommended)."
        ),
    ] = 1
    username: Annotated[str, Key("User name.")] = ""
    password: Annotated[str, Key("Password of USERNAME.", secret=True)] = ""
    tls_ca: Annotated[str, Key("PEM CA bundle that signs the broker's certificate.")] = ""
    tls_client_cert: Annotated[str, Key("PEM client certificate for mutual TLS.")] = ""
    tls_client_key: Annotated[str, Key("PEM key of TLS_CLIENT_CERT.")] = ""
    keep_alive_interval: Annotated[
        Duration,
        Key(
            "MQTT keep-alive: the broker (and the client) drop a connection silent for 1.5 "
            "times this."
        ),
    ] = 30.0
    reconnect_interval: Annotated[
        Duration, Key("Least time between two connection attempts after a failed one.")
    ] = 5.0
    retain: Annotated[bool, Key("Publish with the retain flag.")] = False


# CONNACK codes of a refused login (MQTT 3.1.1: 4, 5; as paho reports them for v5: 134, 135)
_REFUSED_LOGIN = {4, 5, 134, 135}
# paho's and aiomqtt's own lines (every connect, publish and acknowledgement at debug level)
_client_log = logging.getLogger("aiomqtt")
# paho's blocking connect runs in a thread bounded by its own 5 s, before the CONNACK wait
_CONNECT_SOCKET = 6.0


@dataclass(eq=False)
class _Session:
    """One connection to the broker."""

    client: aiomqtt.Client
    lost: asyncio.Task[None]  # done once the connection is gone


class MqttSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.config = config = spec.typed(Config)
        self.timeout = config.timeout
        validate_template(config.topic, spec.variable("topic"))
        if "+" in config.topic or "#" in config.topic:
            raise ConfigError(f"{spec.variable('topic')}: wildcards (+, #) cannot be published to")
        if config.qos not in (0, 1, 2):
            raise ConfigError(f"{spec.variable('qos')}: must be 0, 1 or 2")
        self.client_options = _client_options(spec, config)
        self.where = f"{self.client_options['hostname']}:{self.client_options['port']}"
        # a unique id: two relays (or a restart racing the old session) never kick each other
        self.identifier = f"s3-notify-relay-{spec.id}-{uuid.uuid4().hex[:8]}"
        self.connection: Connection[_Session] = Connection(
            self.name,
            f"mqtt broker {self.where}",
            self._open,
            _close,
            self.timeout + _CONNECT_SOCKET,
            least_wait=config.reconnect_interval,
        )
        clientlogs.quiet(_client_log.name)

    async def _open(self) -> _Session:
        concurrency = self.config.concurrency
        client = aiomqtt.Client(
            identifier=self.identifier,
            keepalive=max(1, round(self.config.keep_alive_interval)),
            timeout=self.timeout,
            # paho keeps unsent QoS>0 messages in memory for a reconnect that never comes
            # (a broken client is replaced, not reconnected); bounding its queue bounds that
            max_queued_outgoing_messages=concurrency,
            max_inflight_messages=concurrency,
            logger=_client_log,
            **self.client_options,
        )
        # every lane's publish in flight at once is expected, not a leak
        client.pending_calls_threshold = concurrency + 1
        try:
            await client.__aenter__()
        except Exception as exc:
            if _refused_login(exc):
                # the sink stays down and events wait until the login is fixed
                raise Retryable(f"{self.where} refused the login: {_describe(exc)}") from None
            raise Retryable(f"cannot connect to {self.where}: {_describe(exc)}") from None
        return _Session(client, asyncio.create_task(_until_disconnected(client)))

    async def _session(self) -> _Session:
        # lost since the last event (broker restart, keep-alive expiry): publishing on it
        # would only fail; a new connection, at once
        return await self.connection.get(broken=lambda session: session.lost.done())

    async def start(self) -> None:
        await self._session()

    async def send_event(self, entry: LogEntry) -> None:
        try:
            topic = render_template(self.config.topic, entry.event)
            body = render(entry, self.config.format)
        except ValueError as exc:
            raise Permanent(str(exc)) from None
        if not topic or "+" in topic or "#" in topic:
            raise Permanent(f"not a topic one can publish to: {topic!r}")
        session = await self._session()
        c = self.config
        publish = asyncio.ensure_future(
            session.client.publish(topic, body, qos=c.qos, retain=c.retain, timeout=self.timeout)
        )
        try:
            # aiomqtt leaves a publish waiting out its timeout when the connection is lost
            await asyncio.wait(
                {publish, session.lost}, timeout=self.timeout + 1,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
        finally:
            if not publish.done():
                publish.cancel()
        if publish.done() and not publish.cancelled():
            error = publish.exception()
            if error is None:
                return
            reason = _describe(error)
        elif session.lost.done():
            reason = "connection lost"
        else:
            reason = f"no acknowledgement within {self.timeout:g}s"
        # the connection is suspect (closed, or acknowledgements stopped): a new one on the
        # next attempt; the old client and whatever paho queued go with it
        self.connection.drop(reason, client=session)
        raise Retryable(f"publish to {self.where} failed: {reason}")

    async def close(self) -> None:
        await self.connection.close()

    async def health(self) -> Health:
        try:
            await self._session()
        except DeliveryError as exc:
            return Health(False, str(exc))
        return Health(True, f"connected to {self.where} (QoS {self.config.qos})")


async def _close(session: _Session) -> None:
    session.lost.cancel()
    await session.client.__aexit__(None, None, None)


async def _until_disconnected(client: aiomqtt.Client) -> None:
    # Nothing is subscribed, so the iterator yields nothing; it ends with MqttError when the
    # connection goes away, the one public signal aiomqtt gives for that.
    with contextlib.suppress(aiomqtt.MqttError):
        async for _ in client.messages:
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiomqtt.MqttCodeError):
        return f"{exc.rc}: {exc}" if str(exc) else str(exc.rc)
    return exc_text(exc)


def _refused_login(exc: BaseException) -> bool:
    if not isinstance(exc, MqttConnectError):
        return False
    code = getattr(exc.rc, "value", exc.rc)
    return isinstance(code, int) and code in _REFUSED_LOGIN


def _client_options(spec: SinkSpec, config: Config) -> dict[str, Any]:
    """aiomqtt's connection keywords. Errors name the variable, never echo its value."""
    raw = config.broker.strip()
    parts = urlsplit(raw if "://" in raw else f"tcp://{raw}")
    schemes = {"tcp": 1883, "mqtt": 1883, "ssl": 8883, "tls": 8883, "mqtts": 8883}
    variable = spec.variable("broker")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{variable}: invalid port") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{variable}: is not host:port, tcp://host:port or ssl://host:port")
    if parts.username or parts.password:
        raise ConfigError(f"{variable}: put the user in USERNAME and PASSWORD, not in the URL")
    if config.password and not config.username:
        raise ConfigError(f"{spec.variable('username')}: required with PASSWORD")
    options: dict[str, Any] = {
        "hostname": parts.hostname,
        "port": port or schemes[parts.scheme],
        "username": config.username or None,
        "password": config.password or None,
    }
    tls = parts.scheme in ("ssl", "tls", "mqtts")
    if not tls and (config.tls_ca or config.tls_client_cert or config.tls_client_key):
        raise ConfigError(
            f"{spec.variable('tls_ca')}: TLS files are set but {variable} is not ssl://"
        )
    if tls:
        options["tls_context"] = client_context(spec, config)
    return options


def create(spec: SinkSpec) -> MqttSink:
    return MqttSink(spec)
