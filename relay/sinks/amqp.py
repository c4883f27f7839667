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
  retryable error that names the exchange and routing key, and the sink shows as down
  meanwhile. Because the sink delivers in order, one unroutable event holds back the ones
  behind it: with a templated routing key where some keys are never bound, set
  `MAX_ATTEMPTS`/`MAX_AGE` so those go to the dead letters, or `MANDATORY=off` to let the
  broker drop them (RabbitMQ's behaviour, and MinIO's and RustFS's default).
- **Refused** (`basic.nack`), no confirmation within `TIMEOUT`, connection or channel lost,
  exchange missing (create it, or set `DECLARE_EXCHANGE=on`).

The connection is a robust one (it reconnects and restores the channel by itself), but its
first connect does not retry (aio-pika#202), so `start()` retries a few times itself and the
dispatcher keeps probing after that. A publish on a robust connection that lost its socket
waits for the reconnection (aio-pika#636): every publish is bounded by `TIMEOUT`.

`URL` may hold a password: it is never logged and shows redacted. `USERNAME`/`PASSWORD`
(RustFS) supply credentials for a URL that has none; both at once is a configuration error.
`DELIVERY_MODE` (MinIO: 0 = the broker's default, which is transient, sent as 1; 1 transient;
2 persistent) wins over `PERSISTENT` (RustFS, default on = 2) when set. The exchange is
declared only with `DECLARE_EXCHANGE=on` (as `EXCHANGE_TYPE`, `DURABLE`, `AUTO_DELETED`); by
default it must exist, as with RustFS (MinIO declares it before every publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import aio_pika
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random
from yarl import URL

from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Retryable
from relay.sinks.formats import content_type, render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

log = logging.getLogger("relay.sinks.amqp")

TYPE = "amqp"
OPTIONS = (
    Option(
        "url",
        "str",
        "",
        "`amqp://[user:password@]host[:port][/vhost]` (or `amqps://`); it may hold a "
        "password, so it is treated as a secret (logs and errors show it as `user:***@`).",
        secret=True,
        required=True,
    ),
    Option(
        "exchange",
        "str",
        "",
        "Exchange the events are published to; empty = the default exchange (the routing key "
        "is then a queue name). It must exist unless DECLARE_EXCHANGE is on.",
    ),
    Option(
        "routing_key",
        "str",
        "",
        "Routing key; may hold `{bucket}`, `{event}` and `{source}`, filled per event.",
    ),
    Option(
        "mandatory",
        "bool",
        True,
        "An event no queue is bound for is an error and is retried (on), or dropped by the "
        "broker (off, the MinIO and RustFS default).",
    ),
    Option(
        "persistent",
        "bool",
        True,
        "Persistent messages (delivery_mode 2), so a durable queue keeps them over a broker "
        "restart.",
    ),
    Option(
        "delivery_mode",
        "choice",
        "",
        "MinIO's: 0 (the broker's default: transient, sent as 1), 1 (transient) or 2 "
        "(persistent); when set, it wins over PERSISTENT.",
        choices=("0", "1", "2"),
    ),
    Option(
        "declare_exchange",
        "bool",
        False,
        "Declare the exchange at connect (off: it must exist, as with RustFS).",
    ),
    Option(
        "exchange_type",
        "choice",
        "direct",
        "Type the exchange is declared with (DECLARE_EXCHANGE=on). MinIO's default is empty, "
        "which RabbitMQ refuses.",
        choices=("direct", "fanout", "topic", "headers"),
    ),
    Option("durable", "bool", False, "Declare the exchange durable (DECLARE_EXCHANGE=on)."),
    Option(
        "auto_deleted", "bool", False, "Declare the exchange auto-delete (DECLARE_EXCHANGE=on)."
    ),
    Option("username", "str", "", "User, when the URL holds none (RustFS)."),
    Option("password", "str", "", "Password, when the URL holds none (RustFS).", secret=True),
    Option("tls_ca", "str", "", "PEM CA bundle that signs the broker's certificate (amqps)."),
    Option("tls_client_cert", "str", "", "PEM client certificate for mutual TLS (amqps)."),
    Option("tls_client_key", "str", "", "PEM key of the client certificate."),
    Option(
        "publisher_confirms",
        "bool",
        True,
        "MinIO's switch, accepted and ignored: confirms are always on.",
        env_key="PUBLISHING_CONFIRMS",
    ),
    Option("no_wait", "bool", False, "MinIO's, accepted and ignored."),
    Option(
        "internal",
        "bool",
        False,
        "MinIO's; must be off (nothing can publish to an internal exchange).",
    ),
)

CONNECT_ATTEMPTS = 3
RECONNECT_INTERVAL = 1.0  # seconds between the robust connection's reconnect attempts


def _quiet_client_logs() -> None:
    """aio-pika logs an error per failed reconnect attempt (every RECONNECT_INTERVAL while
    the broker is down). The sink logs the state changes itself; keep the client's logs for
    debugging."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in ("aio_pika", "aiormq"):
        client = logging.getLogger(name)
        if client.level == logging.NOTSET:
            client.setLevel(logging.CRITICAL)


class AmqpSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.url, self.shown_url, self._secrets = _url(spec)
        self.ssl_context = _tls(spec, self.url)
        self.exchange_name: str = spec["exchange"]
        self.routing_key: str = spec["routing_key"]
        validate_template(self.routing_key, spec.variable("routing_key"))
        if len(self.routing_key.encode()) > 255 and "{" not in self.routing_key:
            raise ConfigError(f"{spec.variable('routing_key')}: longer than 255 bytes")
        self.mandatory: bool = spec["mandatory"]
        # MinIO's 0 means "no delivery_mode property", which RabbitMQ treats as transient;
        # aio-pika always sends the property, so 0 goes out as 1: the same behaviour.
        mode = spec["delivery_mode"] or ("2" if spec["persistent"] else "1")
        self.delivery_mode = (
            aio_pika.DeliveryMode.PERSISTENT
            if mode == "2"
            else aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        self.declare: bool = spec["declare_exchange"]
        self.exchange_type: str = spec["exchange_type"]
        self.durable: bool = spec["durable"]
        self.auto_delete: bool = spec["auto_deleted"]
        if spec["internal"]:
            raise ConfigError(
                f"{spec.variable('internal')}: the relay publishes to the exchange, which an "
                "internal exchange does not allow; set it to off"
            )
        if self.declare and not self.exchange_name:
            raise ConfigError(
                f"{spec.variable('declare_exchange')}: the default exchange (EXCHANGE empty) "
                "cannot be declared; name an exchange or set DECLARE_EXCHANGE=off"
            )
        self.format: str = spec["format"]
        self.content_type = content_type(self.format)
        self.timeout: float = spec["timeout"]
        self.concurrency: int = spec["concurrency"]
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._linked = False  # the connection is up (for logging its changes once)
        self.connects = 0  # connections opened (test and debugging aid)
        _quiet_client_logs()

    def _where(self) -> str:
        return f"exchange {self.exchange_name or '(default)'!r} on {self.shown_url}"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        name = type(exc).__name__
        return self._scrub(f"{name}: {text}" if text and text != name else name)

    # -- connection ----------------------------------------------------------------------------

    async def _ready(self) -> AbstractExchange:
        if self.exchange is not None and self.connection is not None:
            if not self.connection.is_closed:
                return self.exchange
        async with self._lock:
            if self.connection is not None and self.connection.is_closed:
                self.connection, self.exchange = None, None
            if self.exchange is None:
                retrying = AsyncRetrying(
                    stop=stop_after_attempt(CONNECT_ATTEMPTS),
                    wait=wait_random(0.1, 0.5),
                    retry=retry_if_exception_type(Retryable),
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        await self._connect()
            assert self.exchange is not None
            return self.exchange

    async def _connect(self) -> None:
        # connect_robust(), spelled out so that a connection whose first connect failed is
        # closed here rather than left to aio-pika's __del__ (an un-awaited close()).
        connection = aio_pika.RobustConnection(
            self.url.update_query(reconnect_interval=RECONNECT_INTERVAL),
            ssl_context=self.ssl_context,
            client_properties={"connection_name": f"s3-notify-relay {self.name}"},
        )
        try:
            async with asyncio.timeout(self.timeout):
                await connection.connect(timeout=self.timeout)
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                exchange: AbstractExchange
                if self.declare:
                    exchange = await channel.declare_exchange(
                        self.exchange_name,
                        self.exchange_type,
                        durable=self.durable,
                        auto_delete=self.auto_delete,
                        timeout=self.timeout,
                    )
                elif self.exchange_name:
                    exchange = await channel.get_exchange(self.exchange_name, ensure=True)
                else:
                    exchange = channel.default_exchange
        except Exception as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self.timeout)
            raise self._connect_error(exc) from None
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)
        self.connection, self.exchange = connection, exchange
        self._linked = True
        self.connects += 1

    def _connect_error(self, exc: BaseException) -> Retryable:
        if isinstance(exc, amqp_errors.ChannelNotFoundEntity):
            return Retryable(
                f"{self._where()} does not exist: create it, or set DECLARE_EXCHANGE=on"
            )
        if isinstance(exc, amqp_errors.ChannelPreconditionFailed):
            return Retryable(
                f"{self._where()} exists with other settings than EXCHANGE_TYPE/DURABLE/"
                f"AUTO_DELETED ask for: {self._describe(exc)}"
            )
        if isinstance(exc, amqp_errors.ChannelAccessRefused):
            return Retryable(f"access refused to {self._where()}: {self._describe(exc)}")
        if isinstance(
            exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError
        ):
            return Retryable(f"authentication failed at {self.shown_url}: {self._describe(exc)}")
        if isinstance(exc, TimeoutError):
            return Retryable(f"no answer from {self.shown_url} within {self.timeout:g}s")
        return Retryable(f"cannot connect to {self.shown_url}: {self._describe(exc)}")

    def _on_close(self, _connection: Any, exc: BaseException | None = None) -> None:
        # called again for every failed reconnect attempt: log the change, once
        if self._linked and not self._closing:
            self._linked = False
            log.warning(
                "amqp connection lost; reconnecting",
                extra={"sink": self.name, "error": self._describe(exc) if exc else "closed"},
            )

    def _on_reconnect(self, _connection: Any) -> None:
        if not self._linked:
            self._linked = True
            log.info("amqp connection restored", extra={"sink": self.name})

    # -- Sink ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._ready()

    async def send_event(self, entry: LogEntry) -> None:
        await self._ready()
        connection = self.connection
        if connection is not None and not connection.connected.is_set():
            # the robust connection is reconnecting: every publish would only wait for it
            raise Retryable(f"connection to {self.shown_url} lost; reconnecting")
        exchange = self.exchange
        if exchange is None:
            raise Retryable(f"not connected to {self.shown_url}")
        event = entry.event
        routing_key = render_template(self.routing_key, event)
        if len(routing_key.encode()) > 255:
            raise Permanent(f"routing key {routing_key[:60]!r}… is longer than 255 bytes")
        message = aio_pika.Message(
            render(entry, self.format),
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
        try:
            # publish(timeout=) bounds the wait for the confirmation; the outer bound also
            # covers the wait for a channel while the robust connection reconnects (#636).
            async with asyncio.timeout(self.timeout):
                await exchange.publish(
                    message, routing_key, mandatory=self.mandatory, timeout=self.timeout
                )
        except amqp_errors.PublishError as exc:  # basic.return: no queue for this key
            frame = exc.message.delivery if exc.message is not None else None
            reply = getattr(frame, "reply_code", "")
            text = getattr(frame, "reply_text", "") or "NO_ROUTE"
            raise Retryable(
                f"unroutable: no queue is bound to {self._where()} for routing key "
                f"{routing_key!r} ({reply} {text}); bind one, or set MANDATORY=off to let the "
                "broker drop such events"
            ) from None
        except amqp_errors.DeliveryError as exc:  # basic.nack / reject
            raise Retryable(f"the broker refused the message: {self._describe(exc)}") from None
        except TimeoutError:
            raise Retryable(
                f"no confirmation from {self.shown_url} within {self.timeout:g}s"
            ) from None
        except amqp_errors.ChannelNotFoundEntity:
            raise Retryable(
                f"{self._where()} does not exist: create it, or set DECLARE_EXCHANGE=on"
            ) from None
        except (
            amqp_errors.AMQPError,
            amqp_errors.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise Retryable(self._describe(exc)) from None

    async def close(self) -> None:
        self._closing = True
        connection, self.connection, self.exchange = self.connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self.timeout)

    async def health(self) -> Health:
        if self.connection is not None and not self.connection.is_closed:
            if self.connection.connected.is_set():
                return Health(True, f"connected to {self.shown_url}")
        host, port = self.url.host or "localhost", self.url.port or 5672
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
        except (OSError, TimeoutError) as exc:
            return Health(False, f"cannot connect to {host}:{port}: {self._describe(exc)}")
        writer.close()
        return Health(True, f"{host}:{port} accepts connections")


def _url(spec: SinkSpec) -> tuple[URL, str, tuple[str, ...]]:
    """The URL to connect to, the same with the password redacted, and the secrets to scrub
    from error texts."""
    variable = spec.variable("url")
    try:
        url = URL(spec["url"].strip())
    except ValueError:
        raise ConfigError(f"{variable}: not a URL (amqp://user:password@host:5672/vhost)") from None
    if url.scheme not in ("amqp", "amqps") or not url.host:
        raise ConfigError(f"{variable}: not an amqp:// or amqps:// URL with a host")
    username, password = spec["username"], spec["password"]
    if username or password:
        if url.user or url.password:
            raise ConfigError(
                f"{variable} holds credentials and {spec.variable('username')}/"
                f"{spec.variable('password')} are set too; keep one of them"
            )
        if not username:
            raise ConfigError(f"{spec.variable('username')}: required with a password")
        url = url.with_user(username).with_password(password or None)
    shown = str(url.with_password("***")) if url.password else str(url)
    secrets = tuple(
        s for s in {url.password or "", url.raw_password or "", password} if s and len(s) > 1
    )
    return url, shown, secrets


def _tls(spec: SinkSpec, url: URL) -> ssl.SSLContext | None:
    files = spec["tls_ca"] or spec["tls_client_cert"] or spec["tls_client_key"]
    if url.scheme != "amqps":
        if files:
            raise ConfigError(
                f"{spec.variable('tls_ca')}: TLS files are set but {spec.variable('url')} is "
                "not amqps://"
            )
        return None
    return client_context(spec)


def create(spec: SinkSpec) -> AmqpSink:
    return AmqpSink(spec)
