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
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
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

from relay.config import COMMON_OPTIONS, ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Result, Retryable
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template

T = TypeVar("T")

TYPE = "redis"
_PAYLOAD_FORMATS = next(o for o in COMMON_OPTIONS if o.key == "format").choices
_MODES = ("publish", "namespace", "access", "stream")
_NEEDS_TYPE = {"namespace": "hash", "access": "list", "stream": "stream"}

OPTIONS = (
    Option(
        "url",
        "str",
        "",
        "Server as RustFS writes it: `redis://[user:password@]host:port[/db]`, "
        "`rediss://` for TLS.",
    ),
    Option("address", "str", "", "Server as MinIO writes it: `host:port` (instead of URL)."),
    Option("password", "str", "", "Password (AUTH).", secret=True),
    Option(
        "user",
        "str",
        "",
        "ACL user name (MinIO's key; RustFS's USERNAME too).",
        aliases=("USERNAME",),
    ),
    Option(
        "batch_size",
        "int",
        1000,
        "Most events handed to the sink at once, sent in one pipelined round trip (measured "
        "1.2-1.4x the rate at 100).",
    ),
    Option("tls_ca", "str", "", "PEM CA bundle that signs the server's certificate."),
    Option("tls_client_cert", "str", "", "PEM client certificate for mutual TLS."),
    Option("tls_client_key", "str", "", "PEM key of TLS_CLIENT_CERT."),
    Option(
        "mode",
        "choice",
        "",
        "`publish` (PUBLISH to CHANNEL: fire-and-forget, nothing is kept for a subscriber "
        "that is away), `namespace` (HSET/HDEL one field per object in the hash KEY), "
        "`access` (RPUSH to the list KEY), `stream` (XADD to the stream KEY, trimmed to "
        "about MAXLEN). Default: `namespace` for a MINIO_NOTIFY_ sink (MinIO's default), "
        "`publish` for a RUSTFS_NOTIFY_ one.",
        choices=_MODES,
    ),
    Option(
        "format",
        "choice",
        "minio",
        "Payload shape for `publish` and `stream`: `minio`, `records`, `cloudevents` or "
        "`raw` (see the common FORMAT). MinIO's `namespace` and `access` are accepted here "
        "too and select that MODE, so a MinIO target block moves over unchanged.",
        choices=(*_PAYLOAD_FORMATS, "namespace", "access"),
    ),
    Option(
        "channel",
        "str",
        "rustfs_notify_channel",
        "Channel of `publish` mode; may hold `{bucket}`, `{event}`, `{source}`.",
    ),
    Option(
        "key",
        "str",
        "",
        "Key of `namespace`, `access` and `stream` modes; may hold `{bucket}`, `{event}`, "
        "`{source}`. Its type (hash, list, stream) is checked at start.",
    ),
    Option(
        "maxlen",
        "int",
        1_000_000,
        "`stream` mode: trim the stream to about this many entries (`MAXLEN ~`); 0 = never.",
    ),
    Option(
        "keep_alive_interval",
        "duration",
        15.0,
        "An idle connection is checked with PING before it is used again after this long.",
    ),
)

_json = msgspec.json.Encoder()
_USERINFO = re.compile(r"//[^/@\s]*@")


class RedisSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.timeout: float = spec["timeout"]
        self.mode, self.format = _mode_and_format(spec)
        self.channel: str = spec["channel"]
        self.key: str = spec["key"]
        if self.mode == "publish":
            if not self.channel:
                raise ConfigError(f"{spec.variable('channel')}: required with MODE=publish")
            validate_template(self.channel, spec.variable("channel"))
        else:
            if not self.key:
                raise ConfigError(f"{spec.variable('key')}: required with MODE={self.mode}")
            validate_template(self.key, spec.variable("key"))
        self.maxlen: int = spec["maxlen"]
        if self.maxlen < 0:
            raise ConfigError(f"{spec.variable('maxlen')}: must be 0 or more")
        self.connection = _connection(spec)
        self.connection.update(
            socket_timeout=self.timeout,
            socket_connect_timeout=min(self.timeout, 5.0),
            socket_keepalive=True,
            health_check_interval=max(1, round(spec["keep_alive_interval"])),
            # The default connection retry is none at all (a health-check PING's error
            # escapes); three quick tries cover a server restart or a failover.
            retry=_Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            max_connections=4,
            client_name=f"s3-notify-relay.{spec.type}.{spec.id}",
        )
        # a secret under 4 characters would be "found" inside ordinary words
        self.secrets = [s for s in (self.connection.get("password") or "",) if len(s) >= 4]
        self.where = f"{self.connection['host']}:{self.connection['port']}"
        self.client: Redis | None = None

    # -- connection ---------------------------------------------------------------------------

    async def start(self) -> None:
        client = await self._ready()
        try:
            async with asyncio.timeout(self.timeout):
                await client.ping()
                if self.mode in _NEEDS_TYPE and not _templated(self.key):
                    await self._check_type(client, _literal(self.key))
        except Permanent:
            raise
        except Exception as exc:
            await self._reset()
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

    async def _ready(self) -> Redis:
        if self.client is None:
            self.client = Redis(**self.connection)
        return self.client

    async def _reset(self) -> None:
        """Throw the client and its pool away. redis-py's async pool can keep dead
        connections checked out after an outage and never recover; a new pool does."""
        client, self.client = self.client, None
        if client is not None:
            await _close_quietly(client)

    def _discard(self) -> None:
        """_reset for when we are being cancelled and must not wait."""
        client, self.client = self.client, None
        if client is not None:
            task = asyncio.get_running_loop().create_task(_close_quietly(client))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        client = await self._ready()
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
            self._discard()
            raise
        except Exception as exc:
            # a connection cut mid-pipeline leaves the client in an unknown state
            await self._reset()
            raise self._classify(exc, "pipeline failed on") from None
        for index, reply in zip(staged, replies):
            if isinstance(reply, Exception):
                results[index] = self._classify(reply, "command failed on")
        # Events after a retryable failure are sent again with it, in order: a namespace
        # HSET applied after the HDEL that followed it would bring a deleted object back.
        first = next((i for i, r in enumerate(results) if isinstance(r, Retryable)), None)
        if first is not None:
            skipped = Retryable(f"not confirmed: an earlier event failed ({results[first]})")
            for later in range(first + 1, len(results)):
                if results[later] is None:
                    results[later] = skipped
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
        text = self._text(exc)
        if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
            # credentials or ACLs: the sink stays down and events wait until they are fixed,
            # rather than the whole backlog going to the dead letters
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

    # -- the rest -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self._reset()

    async def health(self) -> Health:
        try:
            client = await self._ready()
            async with asyncio.timeout(min(self.timeout, 8.0)):
                await client.ping()
        except Exception as exc:
            await self._reset()
            return Health(False, str(self._classify(exc, "cannot reach")))
        target = f"channel {self.channel}" if self.mode == "publish" else f"key {self.key}"
        return Health(True, f"{self.where} answers PING ({self.mode} to {target})")

    def _text(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _USERINFO.sub("//***@", text)


def _mode_and_format(spec: SinkSpec) -> tuple[str, str]:
    fmt: str = spec["format"]
    mode: str = spec["mode"]
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


def _connection(spec: SinkSpec) -> dict[str, Any]:
    url, address = spec["url"], spec["address"]
    if url and address:
        raise ConfigError(f"{spec.variable('url')} and {spec.variable('address')}: set one of them")
    if not url and not address:
        raise ConfigError(f"{spec.variable('url')}: required (or ADDRESS, host:port)")
    shown = _USERINFO.sub("//***@", url or address)
    variable = spec.variable("url" if url else "address")
    parts = urlsplit(url if url else f"redis://{address}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{variable}: {shown!r} has an invalid port") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(
            f"{variable}: {shown!r} is not redis://host:port[/db], rediss://… or host:port"
        )
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"{variable}: {shown!r}: the database must be a number")
    users = {u for u in (spec["user"], unquote(parts.username or "")) if u}
    if len(users) > 1:
        raise ConfigError(
            f"{spec.variable('user')}, {spec.variable('username')} and the URL name different "
            "users; keep one"
        )
    password = spec["password"] or unquote(parts.password or "")
    if spec["password"] and parts.password and unquote(parts.password) != spec["password"]:
        raise ConfigError(
            f"{spec.variable('password')} and the password in {variable} differ; keep one"
        )
    options: dict[str, Any] = {
        "host": parts.hostname,
        "port": port,
        "db": int(db),
        "username": next(iter(users), None),
        "password": password or None,
    }
    tls_files = spec["tls_ca"] or spec["tls_client_cert"] or spec["tls_client_key"]
    if parts.scheme == "rediss" or (address and tls_files):
        if spec["tls_client_key"] and not spec["tls_client_cert"]:
            raise ConfigError(f"{spec.variable('tls_client_cert')}: required with TLS_CLIENT_KEY")
        options.update(
            ssl=True,
            ssl_ca_certs=spec["tls_ca"] or None,
            ssl_certfile=spec["tls_client_cert"] or None,
            ssl_keyfile=spec["tls_client_key"] or None,
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


_closing: set[asyncio.Task[None]] = set()


async def _close_quietly(client: Redis) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await client.aclose()


def _templated(template: str) -> bool:
    return "{" in template.replace("{{", "")


def _literal(template: str) -> str:
    return template.replace("{{", "{").replace("}}", "}")


def _rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create(spec: SinkSpec) -> RedisSink:
    return RedisSink(spec)
