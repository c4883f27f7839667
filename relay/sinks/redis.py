"""Redis sink: publishes to a channel, keeps a hash of objects, appends to a list, or adds
to a stream, each batch in one pipelined round trip.

`MODE=publish` (RustFS's target): `PUBLISH <CHANNEL> <payload>`. Redis keeps nothing: a
subscriber that is not connected at that moment never sees the event, so "delivered" only
means the server accepted it. `MODE=namespace` and `MODE=access` are MinIO's targets, with
MinIO's values (`HSET <KEY> "<bucket>/<key>" {"Records":[record]}` and `HDEL` on
`s3:ObjectRemoved:Delete`; `RPUSH <KEY> [{"Event":[record],"EventTime":…}]`).
`MODE=stream`: `XADD <KEY> MAXLEN ~ <MAXLEN> * event-id <id> event-name <name> payload <body>`,
durable as far as the server's persistence goes. Redis has no idempotent add before 8.6, so
a batch resent after a lost reply may add an entry twice: stream readers dedupe on the
`event-id` field. Namespace writes are idempotent; events of a batch are applied in order.

Credentials and ACLs are for an operator to fix, so their refusals are retried, never
dead-lettered: a refused login holds the sink; a key or channel the ACL refuses (NOPERM)
parks the objects written there while the others go on, and what the server took of such
an object after its refused event is sent again behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.config import ConfigError, Duration, Key, SinkConfig, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import DeliveryError, Health, Permanent, Result, Retryable, exc_text
from relay.sinks.connection import Connection
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template

T = TypeVar("T")

TYPE = "redis"
_NEEDS_TYPE = {"namespace": "hash", "access": "list", "stream": "stream"}


class Config(SinkConfig, kw_only=True, frozen=True):
    url: Annotated[
        str,
        Key(
            "Server as RustFS writes it: `redis://[user:password@]host:port[/db]`, "
            "`rediss://` for TLS."
        ),
    ] = ""
    address: Annotated[str, Key("Server as MinIO writes it: `host:port` (instead of URL).")] = ""
    password: Annotated[str, Key("Password (AUTH).", secret=True)] = ""
    user: Annotated[
        str, Key("ACL user name (MinIO's key; RustFS's USERNAME too).", aliases=("USERNAME",))
    ] = ""
    batch_size: Annotated[
        int,
        Key(
            "Most events handed to the sink at once, sent in one pipelined round trip "
            "(measured 1.2-1.4x the rate at 100)."
        ),
    ] = 1000
    tls_ca: Annotated[str, Key("PEM CA bundle that signs the server's certificate.")] = ""
    tls_client_cert: Annotated[str, Key("PEM client certificate for mutual TLS.")] = ""
    tls_client_key: Annotated[str, Key("PEM key of TLS_CLIENT_CERT.")] = ""
    mode: Annotated[
        Literal["publish", "namespace", "access", "stream", ""],
        Key(
            "`publish` (PUBLISH to CHANNEL: fire-and-forget, nothing is kept for a subscriber "
            "that is away), `namespace` (HSET/HDEL one field per object in the hash KEY), "
            "`access` (RPUSH to the list KEY), `stream` (XADD to the stream KEY, trimmed to "
            "about MAXLEN). Default: `namespace` for a MINIO_NOTIFY_ sink (MinIO's default), "
            "`publish` for a RUSTFS_NOTIFY_ one."
        ),
    ] = ""
    # MinIO's Redis target spells its mode as FORMAT: a common key with more values here
    format: Annotated[
        Literal["minio", "records", "cloudevents", "envelope", "raw", "namespace", "access"],
        Key(
            "Payload shape for `publish` and `stream`: `minio`, `records`, `cloudevents`, "
            "`envelope` or `raw` (see the common FORMAT). MinIO's `namespace` and `access` "
            "are accepted here too and select that MODE, so a MinIO target block moves over "
            "unchanged."
        ),
    ] = "minio"  # type: ignore[assignment]
    channel: Annotated[
        str, Key("Channel of `publish` mode; may hold `{bucket}`, `{event}`, `{source}`.")
    ] = "rustfs_notify_channel"
    key: Annotated[
        str,
        Key(
            "Key of `namespace`, `access` and `stream` modes; may hold `{bucket}`, `{event}`, "
            "`{source}`. Its type (hash, list, stream) is checked at start."
        ),
    ] = ""
    maxlen: Annotated[
        int,
        Key("`stream` mode: trim the stream to about this many entries (`MAXLEN ~`); 0 = never."),
    ] = 1_000_000
    keep_alive_interval: Annotated[
        Duration,
        Key("An idle connection is checked with PING before it is used again after this long."),
    ] = 15.0


_json = msgspec.json.Encoder()


class RedisSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        config = spec.typed(Config)
        self.timeout = config.timeout
        self.mode, self.format = _mode_and_format(spec, config)
        self.channel = config.channel
        self.key = config.key
        if self.mode == "publish":
            if not self.channel:
                raise ConfigError(f"{spec.variable('channel')}: required with MODE=publish")
            validate_template(self.channel, spec.variable("channel"))
        else:
            if not self.key:
                raise ConfigError(f"{spec.variable('key')}: required with MODE={self.mode}")
            validate_template(self.key, spec.variable("key"))
        self.maxlen = config.maxlen
        if self.maxlen < 0:
            raise ConfigError(f"{spec.variable('maxlen')}: must be 0 or more")
        options = _server(spec, config)
        options.update(
            socket_timeout=self.timeout,
            socket_connect_timeout=min(self.timeout, 5.0),
            socket_keepalive=True,
            health_check_interval=max(1, round(config.keep_alive_interval)),
            # The default connection retry is none at all (a health-check PING's error
            # escapes); three quick tries cover a server restart or a failover.
            retry=_Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            max_connections=4,
            client_name=f"s3-notify-relay.{spec.type}.{spec.id}",
        )
        self.options = options
        self.where = f"{options['host']}:{options['port']}"
        # redis-py's async pool can keep dead connections checked out after an outage and
        # never recover: a client whose pipeline broke is dropped, and a new pool made
        self.connection: Connection[Redis] = Connection(
            self.name, f"redis at {self.where}", self._open, Redis.aclose, self.timeout
        )

    async def _open(self) -> Redis:
        client = Redis(**self.options)
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise self._classify(exc, "cannot reach") from None
        return client

    async def start(self) -> None:
        client = await self.connection.get()
        if self.mode not in _NEEDS_TYPE or _templated(self.key):
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._check_type(client, _literal(self.key))
        except DeliveryError:
            raise
        except Exception as exc:
            self.connection.drop(type(exc).__name__)
            raise self._classify(exc, "cannot reach") from None

    async def _check_type(self, client: Redis, key: str) -> None:
        reply = await client.type(key)
        found = reply.decode() if isinstance(reply, bytes) else str(reply)
        wanted = _NEEDS_TYPE[self.mode]
        if found not in ("none", wanted):
            raise Permanent(
                f"key {key!r} holds a {found}, but MODE={self.mode} needs a {wanted}; use "
                "another KEY or remove the key"
            )

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        client = await self.connection.get()
        results: list[Result] = [None] * len(batch)
        pipe = client.pipeline(transaction=False)
        staged: list[int] = []
        for index, entry in enumerate(batch):
            try:
                self._stage(pipe, entry)
            except ValueError as exc:
                results[index] = Permanent(f"cannot build the command: {exc}")
                continue
            staged.append(index)
        if not staged:
            return results
        try:
            async with asyncio.timeout(self.timeout):
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            self.connection.drop()
            raise
        except Exception as exc:
            # a connection cut mid-pipeline leaves the client in an unknown state
            self.connection.drop(f"pipeline failed: {type(exc).__name__}")
            raise self._classify(exc, "pipeline failed on") from None
        for index, reply in zip(staged, replies):
            if isinstance(reply, Exception):
                results[index] = self._classify(reply, "command failed on")
        return results

    def _stage(self, pipe: Pipeline, entry: LogEntry) -> None:
        event = entry.event
        if self.mode == "publish":
            pipe.publish(render_template(self.channel, event), render(entry, self.format))
            return
        key = render_template(self.key, event)
        if self.mode == "stream":
            fields: dict[Any, Any] = {
                "event-id": event.event_id,
                "event-name": event.event_name,
                "payload": render(entry, self.format),
            }
            if self.maxlen:
                pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)
            else:
                pipe.xadd(key, fields)
        elif self.mode == "namespace":
            field = f"{event.bucket}/{event.key}"
            if event.event_name == "s3:ObjectRemoved:Delete":
                pipe.hdel(key, field)
            else:
                pipe.hset(key, field, b'{"Records":[' + event.record + b"]}")
        else:  # access
            when = event.event_time or _rfc3339(entry.received_at)
            value = b'[{"Event":[' + event.record + b'],"EventTime":' + _json.encode(when) + b"}]"
            pipe.rpush(key, value)

    def _classify(self, exc: BaseException, doing: str) -> Permanent | Retryable:
        text = exc_text(exc)
        if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
            # Credentials or ACLs are fixed by an operator, after which the events go: a
            # refused login holds the sink (nothing goes through), a key or channel the
            # ACL denies parks the objects written there while the others go on.
            return Retryable(f"{self.where} refused: {text}")
        if isinstance(exc, (TimeoutError, RedisTimeoutError)):
            return Retryable(f"{doing} {self.where}: no answer within {self.timeout:g}s")
        if isinstance(exc, (RedisConnectionError, OSError, BusyLoadingError)):
            return Retryable(f"{doing} {self.where}: {text}")
        if isinstance(exc, (OutOfMemoryError, ReadOnlyError, TryAgainError)):
            return Retryable(f"{self.where}: {text}")  # the server may change its mind
        if isinstance(exc, ResponseError):
            if text.startswith("WRONGTYPE"):
                return Permanent(f"the key has the wrong type for MODE={self.mode}: {text}")
            return Permanent(f"{self.where} refused the command: {text}")
        return Retryable(f"{doing} {self.where}: {type(exc).__name__}: {text}")

    async def close(self) -> None:
        await self.connection.close()

    async def health(self) -> Health:
        try:
            client = await self.connection.get()
            async with asyncio.timeout(min(self.timeout, 8.0)):
                await client.ping()
        except DeliveryError as exc:
            return Health(False, str(exc))
        except Exception as exc:
            self.connection.drop(type(exc).__name__)
            return Health(False, str(self._classify(exc, "cannot reach")))
        target = f"channel {self.channel}" if self.mode == "publish" else f"key {self.key}"
        return Health(True, f"{self.where} answers PING ({self.mode} to {target})")


def _mode_and_format(spec: SinkSpec, config: Config) -> tuple[str, str]:
    fmt, mode = config.format, config.mode
    if fmt in ("namespace", "access"):
        if mode and mode != fmt:
            raise ConfigError(
                f"{spec.variable('format')}={fmt} and {spec.variable('mode')}={mode} disagree; "
                "keep one of them"
            )
        return fmt, "minio"
    if not mode:
        from_minio = spec.variable("enable").startswith("MINIO_NOTIFY_")
        mode = "namespace" if from_minio else "publish"
    if mode in ("namespace", "access") and "format" in spec.variables:
        raise ConfigError(
            f"{spec.variable('format')}: MODE={mode} writes MinIO's own values; FORMAT "
            "applies to the publish and stream modes only"
        )
    return mode, fmt


def _server(spec: SinkSpec, config: Config) -> dict[str, Any]:
    """redis-py's connection keywords. Errors name the variable, never echo its value (a
    URL may hold a password)."""
    url, address = config.url, config.address
    if url and address:
        raise ConfigError(f"{spec.variable('url')} and {spec.variable('address')}: set one of them")
    if not url and not address:
        raise ConfigError(f"{spec.variable('url')}: required (or ADDRESS, host:port)")
    variable = spec.variable("url" if url else "address")
    parts = urlsplit(url if url else f"redis://{address}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{variable}: invalid port") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{variable}: is not redis://host:port[/db], rediss://… or host:port")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"{variable}: the database must be a number")
    users = {u for u in (config.user, unquote(parts.username or "")) if u}
    if len(users) > 1:
        raise ConfigError(
            f"{spec.variable('user')}, {spec.variable('username')} and the URL name different "
            "users; keep one"
        )
    in_url = unquote(parts.password or "")
    if config.password and in_url and in_url != config.password:
        raise ConfigError(
            f"{spec.variable('password')} and the password in {variable} differ; keep one"
        )
    options: dict[str, Any] = {
        "host": parts.hostname,
        "port": port,
        "db": int(db),
        "username": next(iter(users), None),
        "password": config.password or in_url or None,
    }
    tls_files = config.tls_ca or config.tls_client_cert or config.tls_client_key
    if parts.scheme == "rediss" or (address and tls_files):
        if config.tls_client_key and not config.tls_client_cert:
            raise ConfigError(f"{spec.variable('tls_client_cert')}: required with TLS_CLIENT_KEY")
        options.update(
            ssl=True,
            ssl_ca_certs=config.tls_ca or None,
            ssl_certfile=config.tls_client_cert or None,
            ssl_keyfile=config.tls_client_key or None,
        )
    elif tls_files:
        raise ConfigError(
            f"{spec.variable('tls_ca')}: TLS files are set but {variable} is redis://; "
            "use rediss:// for TLS"
        )
    return options


class _Retry(Retry):
    """Retry on connection trouble, but never a refused password: AuthenticationError is a
    ConnectionError to redis-py, and retrying it (at the command and again at the connection
    level) turns "wrong password" into seconds of silence and then a timeout."""

    async def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, (AuthenticationError, AuthorizationError)):
                return False
            return is_retryable(error) if is_retryable is not None else True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def _templated(template: str) -> bool:
    return "{" in template.replace("{{", "")


def _literal(template: str) -> str:
    return template.replace("{{", "{").replace("}}", "}")


def _rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create(spec: SinkSpec) -> RedisSink:
    return RedisSink(spec)
