"""AMQP 0-9-1 sink (RabbitMQ, aio-pika): one message per event, with publisher confirms.

Each message carries `message_id` = the event id (stable across retries, restarts and
replays: consumers deduplicate on it), `content_type` of the sink's `FORMAT`, and the
headers MinIO sends (`minio-bucket`, `minio-event`) plus `event-id`. `ROUTING_KEY` may be a
template: `{bucket}`, `{event}`, `{source}` are filled per event.

An event counts as delivered only when the broker confirmed it (`basic.ack`); publisher
confirms are always on, whatever MinIO's `PUBLISHING_CONFIRMS` says. Retried, not dropped:

- **Unroutable** (`MANDATORY=on`, the default, and no queue bound for the routing key: the
  broker returns it, reply 312 NO_ROUTE). This is almost always a missing binding, which
  an operator adds, after which the event goes out with no further action, so it is a
  retryable error that names the exchange and routing key. The object's events wait
  (parked) while the sink's other objects go on; when no event goes at all the sink shows
  as down. With a templated routing key where some keys are never bound, set
  `MAX_ATTEMPTS`/`MAX_AGE` so those go to the dead letters, or `MANDATORY=off` to let the
  broker drop them (RabbitMQ's behaviour, and MinIO's and RustFS's default).
- **Refused** (`basic.nack`, e.g. a full queue with `x-overflow=reject-publish`), no
  confirmation within `TIMEOUT`, connection or channel lost, exchange missing (create it,
  or set `DECLARE_EXCHANGE=on`).

The connection is opened on first use and, once it broke (closed, channel closed by the
broker, a confirmation that did not come), thrown away and opened again by the next event,
with a backoff between failed opens; a connection is not kept reconnecting in the
background (aio-pika's robust connection does not retry its first connect, aio-pika#202,
and holds publishes while it reconnects, aio-pika#636). Every publish is bounded by
`TIMEOUT`.

`USERNAME`/`PASSWORD` (RustFS) supply credentials for a URL that has none; both at once is a
configuration error. `DELIVERY_MODE` (MinIO: 0 = the broker's default, which is transient,
sent as 1; 1 transient; 2 persistent) wins over `PERSISTENT` (RustFS, default on = 2) when
set. The exchange is declared only with `DECLARE_EXCHANGE=on` (as `EXCHANGE_TYPE`,
`DURABLE`, `AUTO_DELETED`); by default it must exist, as with RustFS (MinIO declares it
before every publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Annotated, Literal

import aio_pika
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from yarl import URL

from relay.config import ConfigError, Key, SinkConfig, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import clientlogs, probe
from relay.sinks.base import Health, Permanent, Retryable, describe
from relay.sinks.connection import Connection
from relay.sinks.formats import content_type, render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

TYPE = "amqp"


class Config(SinkConfig, kw_only=True, frozen=True):
    url: Annotated[
        str,
        Key(
            "`amqp://[user:password@]host[:port][/vhost]` (or `amqps://`); it may hold a "
            "password, so it is treated as a secret (logs and errors show it as `***@`).",
            secret=True,
            required=True,
        ),
    ] = ""
    exchange: Annotated[
        str,
        Key(
            "Exchange the events are published to; empty = the default exchange (the "
            "routing key is then a queue name). It must exist unless DECLARE_EXCHANGE is on."
        ),
    ] = ""
    routing_key: Annotated[
        str, Key("Routing key; may hold `{bucket}`, `{event}` and `{source}`, filled per event.")
    ] = ""
    mandatory: Annotated[
        bool,
        Key(
            "An event no queue is bound for is an error and is retried (on), or dropped by "
            "the broker (off, the MinIO and RustFS default)."
        ),
    ] = True
    persistent: Annotated[
        bool,
        Key(
            "Persistent messages (delivery_mode 2), so a durable queue keeps them over a "
            "broker restart."
        ),
    ] = True
    delivery_mode: Annotated[
        Literal["0", "1", "2", ""],
        Key(
            "MinIO's: 0 (the broker's default: transient, sent as 1), 1 (transient) or 2 "
            "(persistent); when set, it wins over PERSISTENT."
        ),
    ] = ""
    declare_exchange: Annotated[
        bool, Key("Declare the exchange at connect (off: it must exist, as with RustFS).")
    ] = False
    exchange_type: Annotated[
        Literal["direct", "fanout", "topic", "headers"],
        Key(
            "Type the exchange is declared with (DECLARE_EXCHANGE=on). MinIO's default is "
            "empty, which RabbitMQ refuses."
        ),
    ] = "direct"
    durable: Annotated[bool, Key("Declare the exchange durable (DECLARE_EXCHANGE=on).")] = False
    auto_deleted: Annotated[
        bool, Key("Declare the exchange auto-delete (DECLARE_EXCHANGE=on).")
    ] = False
    username: Annotated[str, Key("User, when the URL holds none (RustFS).")] = ""
    password: Annotated[str, Key("Password, when the URL holds none (RustFS).", secret=True)] = ""
    tls_ca: Annotated[str, Key("PEM CA bundle that signs the broker's certificate (amqps).")] = ""
    tls_client_cert: Annotated[str, Key("PEM client certificate for mutual TLS (amqps).")] = ""
    tls_client_key: Annotated[str, Key("PEM key of the client certificate.")] = ""
    publisher_confirms: Annotated[
        bool,
        Key(
            "MinIO's switch, accepted and ignored: confirms are always on.",
            env_key="PUBLISHING_CONFIRMS",
        ),
    ] = True
    no_wait: Annotated[bool, Key("MinIO's, accepted and ignored.")] = False
    internal: Annotated[
        bool, Key("MinIO's; must be off (nothing can publish to an internal exchange).")
    ] = False


# closing a connection whose broker went away must not hold up an open that failed
_CLOSE_AFTER_FAILED_OPEN = 2.0


@dataclass(eq=False)
class _Link:
    """A connection and the confirming channel and exchange the events go through."""

    connection: AbstractConnection
    channel: AbstractChannel
    exchange: AbstractExchange

    @property
    def broken(self) -> bool:
        return self.connection.is_closed or self.channel.is_closed


class AmqpSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.config = config = spec.typed(Config)
        self.url = _url(spec, config)
        # the broker as errors and health name it: no credentials
        self.where = str(self.url.with_user(None))
        self.ssl_context = _tls(spec, config, self.url)
        validate_template(config.routing_key, spec.variable("routing_key"))
        if len(config.routing_key.encode()) > 255 and "{" not in config.routing_key:
            raise ConfigError(f"{spec.variable('routing_key')}: longer than 255 bytes")
        # MinIO's 0 means "no delivery_mode property", which RabbitMQ treats as transient;
        # aio-pika always sends the property, so 0 goes out as 1: the same behaviour.
        mode = config.delivery_mode or ("2" if config.persistent else "1")
        self.delivery_mode = (
            aio_pika.DeliveryMode.PERSISTENT
            if mode == "2"
            else aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        if config.internal:
            raise ConfigError(
                f"{spec.variable('internal')}: the relay publishes to the exchange, which an "
                "internal exchange does not allow; set it to off"
            )
        if config.declare_exchange and not config.exchange:
            raise ConfigError(
                f"{spec.variable('declare_exchange')}: the default exchange (EXCHANGE empty) "
                "cannot be declared; name an exchange or set DECLARE_EXCHANGE=off"
            )
        self.content_type = content_type(config.format)
        self.timeout = config.timeout
        self.connection: Connection[_Link] = Connection(
            self.name,
            f"amqp broker {self.where}",
            self._open,
            _close,
            self.timeout + _CLOSE_AFTER_FAILED_OPEN + 1,
        )
        clientlogs.quiet("aio_pika", "aiormq")

    def _exchange_text(self) -> str:
        return f"exchange {self.config.exchange or '(default)'!r} on {self.where}"

    async def _open(self) -> _Link:
        c = self.config
        connection = aio_pika.Connection(
            self.url,
            ssl_context=self.ssl_context,
            client_properties={"connection_name": f"s3-notify-relay {self.name}"},
        )
        try:
            async with asyncio.timeout(self.timeout):
                await connection.connect(timeout=self.timeout)
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                exchange: AbstractExchange
                if c.declare_exchange:
                    exchange = await channel.declare_exchange(
                        c.exchange,
                        c.exchange_type,
                        durable=c.durable,
                        auto_delete=c.auto_deleted,
                        timeout=self.timeout,
                    )
                elif c.exchange:
                    exchange = await channel.get_exchange(c.exchange, ensure=True)
                else:
                    exchange = channel.default_exchange
        except Exception as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), _CLOSE_AFTER_FAILED_OPEN)
            if self.ssl_context and isinstance(exc, OSError):  # aiormq: AMQPConnectionError
                # a refused TLS handshake reaches aiormq as a reset as often as an alert:
                # the probe's own handshake says which it was
                health = await self._probe()
                if not health.ok:
                    raise Retryable(health.detail) from None
            raise self._open_error(exc) from None
        return _Link(connection, channel, exchange)

    def _open_error(self, exc: BaseException) -> Retryable:
        if isinstance(exc, amqp_errors.ChannelNotFoundEntity):
            return Retryable(
                f"{self._exchange_text()} does not exist: create it, or set DECLARE_EXCHANGE=on"
            )
        if isinstance(exc, amqp_errors.ChannelPreconditionFailed):
            return Retryable(
                f"{self._exchange_text()} exists with other settings than EXCHANGE_TYPE/"
                f"DURABLE/AUTO_DELETED ask for: {describe(exc)}"
            )
        if isinstance(exc, amqp_errors.ChannelAccessRefused):
            return Retryable(f"access refused to {self._exchange_text()}: {describe(exc)}")
        if isinstance(
            exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError
        ):
            return Retryable(f"authentication failed at {self.where}: {describe(exc)}")
        if isinstance(exc, TimeoutError):
            return Retryable(f"no answer from {self.where} within {self.timeout:g}s")
        return Retryable(f"cannot connect to {self.where}: {describe(exc)}")

    async def _link(self) -> _Link:
        return await self.connection.get(broken=lambda link: link.broken)

    async def start(self) -> None:
        await self._link()

    async def send_event(self, entry: LogEntry) -> None:
        event = entry.event
        routing_key = render_template(self.config.routing_key, event)
        if len(routing_key.encode()) > 255:
            raise Permanent(f"routing key {routing_key[:60]!r}… is longer than 255 bytes")
        message = aio_pika.Message(
            render(entry, self.config.format),
            content_type=self.content_type,
            delivery_mode=self.delivery_mode,
            message_id=event.event_id,
            app_id="s3-notify-relay",
            headers={
                "minio-bucket": event.bucket,
                "minio-event": event.event_name,
                "event-id": event.event_id,
            },
        )
        link = await self._link()
        try:
            async with asyncio.timeout(self.timeout):
                await link.exchange.publish(
                    message, routing_key, mandatory=self.config.mandatory, timeout=self.timeout
                )
        except amqp_errors.PublishError as exc:  # basic.return: no queue for this key
            frame = exc.message.delivery if exc.message is not None else None
            reply = getattr(frame, "reply_code", "")
            text = getattr(frame, "reply_text", "") or "NO_ROUTE"
            raise Retryable(
                f"unroutable: no queue is bound to {self._exchange_text()} for routing key "
                f"{routing_key!r} ({reply} {text}); bind one, or set MANDATORY=off to let the "
                "broker drop such events"
            ) from None
        except amqp_errors.DeliveryError as exc:  # basic.nack / reject
            raise Retryable(f"the broker refused the message: {describe(exc)}") from None
        except TimeoutError:
            self.connection.drop("no confirmation in time", client=link)
            raise Retryable(f"no confirmation from {self.where} within {self.timeout:g}s") from None
        except amqp_errors.ChannelNotFoundEntity:  # the exchange went away: channel closed
            self.connection.drop("exchange gone", client=link)
            raise Retryable(
                f"{self._exchange_text()} does not exist: create it, or set DECLARE_EXCHANGE=on"
            ) from None
        except (
            amqp_errors.AMQPError,
            amqp_errors.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            self.connection.drop(type(exc).__name__, client=link)
            raise Retryable(describe(exc)) from None

    async def close(self) -> None:
        await self.connection.close()

    async def health(self) -> Health:
        link = self.connection.client
        if link is not None and not link.broken:
            return Health(True, f"connected to {self.where}")
        return await self._probe()

    async def _probe(self) -> Health:
        default_port = 5671 if self.url.scheme == "amqps" else 5672
        return await probe.tcp([(self.url.host or "localhost", self.url.port or default_port)],
                               ssl=self.ssl_context)  # fmt: skip


async def _close(link: _Link) -> None:
    await link.connection.close()


def _url(spec: SinkSpec, config: Config) -> URL:
    """The URL to connect to, with the credentials of USERNAME/PASSWORD when set."""
    variable = spec.variable("url")
    try:
        url = URL(config.url.strip())
    except ValueError:
        raise ConfigError(f"{variable}: not a URL (amqp://user:password@host:5672/vhost)") from None
    if url.scheme not in ("amqp", "amqps") or not url.host:
        raise ConfigError(f"{variable}: not an amqp:// or amqps:// URL with a host")
    username, password = config.username, config.password
    if username or password:
        if url.user or url.password:
            raise ConfigError(
                f"{variable} holds credentials and {spec.variable('username')}/"
                f"{spec.variable('password')} are set too; keep one of them"
            )
        if not username:
            raise ConfigError(f"{spec.variable('username')}: required with a password")
        url = url.with_user(username).with_password(password or None)
    return url


def _tls(spec: SinkSpec, config: Config, url: URL) -> ssl.SSLContext | None:
    if url.scheme != "amqps":
        if config.tls_ca or config.tls_client_cert or config.tls_client_key:
            raise ConfigError(
                f"{spec.variable('tls_ca')}: TLS files are set but {spec.variable('url')} is "
                "not amqps://"
            )
        return None
    return client_context(spec, config)


def create(spec: SinkSpec) -> AmqpSink:
    return AmqpSink(spec)
