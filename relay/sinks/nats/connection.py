"""How both NATS sinks reach their server: the keys (servers, credentials, TLS) and one
client per sink.

- The client is made on first use by relay/sinks/connection.py: the first connect bounded
  by the sink's timeout, made again with backoff when it failed or the client was closed.
- Once connected, nats-py reconnects by itself, forever: its default gives up after about
  two minutes of outage and closes the client for good.
- While it reconnects, nothing is published: a publish would wait in nats-py's reconnect
  buffer and reach the server after its batch was reported failed and sent again. The
  buffer therefore never holds more than the batch in hand (`pending_size`).
- The server's errors arrive through a callback only: the last one is why a connect
  failed; a refused publish (`Permissions Violation for Publish to "x"`) is remembered
  per subject, for the sink to answer the publish with.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client as NatsClient

from relay.config import ConfigError, Key, SinkConfig, SinkSpec
from relay.sinks import clientlogs, redact
from relay.sinks.base import Health, Retryable, describe
from relay.sinks.connection import Connection
from relay.sinks.tls import client_context

# The keys, as types, so that nats_objects (whose Config is the audit trail's) declares
# them exactly as `nats` does.
Address = Annotated[
    str,
    Key(
        "NATS server: `host:port` or `nats://host:port` (`tls://` for TLS); a "
        "comma-separated list for a cluster.",
        required=True,
    ),
]
Username = Annotated[str, Key("User name (with PASSWORD).")]
Password = Annotated[str, Key("Password of USERNAME.", secret=True)]
Token = Annotated[str, Key("Authentication token (instead of USERNAME/PASSWORD).", secret=True)]
CredentialsFile = Annotated[
    str,
    Key(
        "NATS `.creds` file (JWT + NKey seed), instead of a password or token. MinIO "
        "calls this key USER_CREDENTIALS (accepted too). Needs the `nkeys` package.",
        aliases=("USER_CREDENTIALS",),
    ),
]
TlsCa = Annotated[
    str,
    Key(
        "PEM CA bundle that signs the server's certificate (MinIO: CERT_AUTHORITY).",
        aliases=("CERT_AUTHORITY",),
    ),
]
TlsClientCert = Annotated[
    str,
    Key("PEM client certificate for mutual TLS (MinIO: CLIENT_CERT).", aliases=("CLIENT_CERT",)),
]
TlsClientKey = Annotated[
    str, Key("PEM key of TLS_CLIENT_CERT (MinIO: CLIENT_KEY).", aliases=("CLIENT_KEY",))
]
TlsRequired = Annotated[
    bool,
    Key("Refuse to talk to a server that does not use TLS (the sink stays down instead)."),
]


class NatsConfig(SinkConfig, kw_only=True, frozen=True):
    address: Address = ""
    username: Username = ""
    password: Password = ""
    token: Token = ""
    credentials_file: CredentialsFile = ""
    tls_ca: TlsCa = ""
    tls_client_cert: TlsClientCert = ""
    tls_client_key: TlsClientKey = ""
    tls_required: TlsRequired = False


_PERMISSION = re.compile(r"permissions violation for publish to \"?([^\s\"']+)", re.IGNORECASE)
_CREDENTIALS_REFUSED = "authorization violation"


class NatsConnection:
    """A sink's NATS client. `prepare` runs on every new client before it is used (the
    JetStream sink checks its stream there, the object store sink opens its store)."""

    def __init__(
        self,
        spec: SinkSpec,
        pending_size: int,
        prepare: Callable[[NatsClient], Awaitable[None]] | None = None,
    ) -> None:
        clientlogs.quiet("nats")
        config = spec.typed(NatsConfig)
        self.sink = spec.name
        self.timeout = config.timeout
        self.servers = servers(spec, config.address)
        self.where = ",".join(_host_port(s) for s in self.servers)
        self.tls_required = config.tls_required
        self.options = auth(spec, config)
        if (
            config.tls_ca
            or config.tls_client_cert
            or config.tls_required
            or any(s.startswith("tls://") for s in self.servers)
        ):
            self.options["tls"] = client_context(spec, config)
        self.pending_size = pending_size
        self._prepare = prepare
        self.last_error = ""
        self.denied: dict[str, float] = {}  # subject → when the server last refused it
        self._abandoned: set[asyncio.Task[None]] = set()
        self.connection: Connection[NatsClient] = Connection(
            spec.name, self.where, self._open, _close, self.timeout, reason=self._reason
        )

    async def client(self) -> NatsClient:
        """The connected client; Retryable while it is being made or reconnects."""
        nc = await self.connection.get()
        if nc.is_closed:  # closed underneath us (nats-py itself never gives up)
            self.connection.drop()
            nc = await self.connection.get()
        if not nc.is_connected:
            if _CREDENTIALS_REFUSED in self.last_error.lower():
                raise Retryable(f"{self.where} refused the credentials: {self.last_error}")
            why = f": {self.last_error}" if self.last_error else ""
            raise Retryable(f"not connected to {self.where} (reconnecting{why})")
        return nc

    def refused(self, subject: str, since: float) -> bool:
        """Whether the server refused a publish to `subject` since `since` (monotonic)."""
        return self.denied.get(subject, 0.0) >= since

    async def health(self, what: str) -> Health:
        try:
            # the open is bounded by the connection's own timeout, which says why it failed
            # (a bound of the same length here would race it and say only "TimeoutError")
            nc = await self.client()
            async with asyncio.timeout(min(self.timeout, 8.0)):
                rtt = await nc.rtt(timeout=max(1, round(min(self.timeout, 5.0))))
        except Exception as exc:
            return Health(False, describe(exc))
        return Health(True, f"{what} reachable (round trip {rtt * 1000:.1f} ms)")

    async def close(self) -> None:
        await self.connection.close()
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=self.timeout)

    # -- making a client -----------------------------------------------------------------------

    async def _open(self) -> NatsClient:
        self.last_error = ""
        nc = NatsClient()
        try:
            await nc.connect(
                servers=list(self.servers),
                name=f"s3-notify-relay {self.sink}",
                error_cb=self._on_error,
                reconnected_cb=self._on_reconnected,
                max_reconnect_attempts=-1,
                connect_timeout=max(1, round(min(self.timeout, 5.0))),
                pending_size=self.pending_size,
                flush_timeout=self.timeout,
                **self.options,
            )
            if self.tls_required and not _uses_tls(nc):
                raise Retryable(f"{self.where} does not use TLS and TLS_REQUIRED is on; "
                                "not publishing")  # fmt: skip
            if self._prepare is not None:
                await self._prepare(nc)
        except (OSError, nats.errors.Error) as exc:
            self._abandon(nc)
            raise Retryable(f"cannot connect to {self.where}: {self._reason() or describe(exc)}"
                            ) from None  # fmt: skip
        except BaseException:  # Retryable from above, or cancelled by the connect's timeout
            self._abandon(nc)
            raise
        return nc

    def _reason(self) -> str:
        """Why connecting failed, as the server or the socket last said (nats-py keeps trying
        inside connect() until the timeout, so the reason comes only through error_cb)."""
        if _CREDENTIALS_REFUSED in self.last_error.lower():
            return f"the server refused the credentials ({self.last_error})"
        return self.last_error

    def _abandon(self, nc: NatsClient) -> None:
        """Close a client that never became ours, in the background (an open that is being
        cancelled cannot wait for it)."""
        task = asyncio.get_running_loop().create_task(_close_within(nc, self.timeout))
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    # -- callbacks (nats-py calls them from its own tasks) -------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = describe(exc)
        refused = _PERMISSION.search(text)
        if refused:
            self.denied[refused.group(1)] = time.monotonic()
        else:
            self.last_error = text

    async def _on_reconnected(self) -> None:
        self.last_error = ""


async def _close(nc: NatsClient) -> None:
    await nc.close()


async def _close_within(nc: NatsClient, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await nc.close()
    except Exception:  # a client that never connected may fail to close; it is gone anyway
        return


def _uses_tls(nc: NatsClient) -> bool:
    # nats-py upgrades to TLS only when the server's INFO asks for it; that INFO is the
    # only record of it the client keeps.
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    return bool(info.get("tls_required"))


def _host_port(url: str) -> str:
    """A server as errors and health name it: the URL without its credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# -- the keys --------------------------------------------------------------------------------


def servers(spec: SinkSpec, address: str) -> tuple[str, ...]:
    """ADDRESS as nats-py's server URLs."""
    found = []
    for item in address.split(","):
        item = item.strip()
        if not item:
            continue
        url = item if "://" in item else f"nats://{item}"
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            message = f"{spec.variable('address')}: {url!r} is not host:port or nats://host:port"
            raise ConfigError(redact.for_spec(spec)(message))
        found.append(url)
    if not found:
        raise ConfigError(f"{spec.variable('address')}: required for the sink {spec.name}")
    return tuple(found)


def auth(spec: SinkSpec, config: NatsConfig) -> dict[str, Any]:
    """nats-py's connect() arguments for the one way of authenticating configured."""
    c = config
    methods = [k for k in ("password", "token", "credentials_file") if getattr(c, k)]
    if c.username and not c.password:
        raise ConfigError(f"{spec.variable('password')}: required with USERNAME")
    if c.password and not c.username:
        raise ConfigError(f"{spec.variable('username')}: required with PASSWORD")
    if len(methods) > 1:
        names = " and ".join(spec.variable(k) for k in methods)
        raise ConfigError(f"{names}: choose one way to authenticate")
    if c.username:
        return {"user": c.username, "password": c.password}
    if c.token:
        return {"token": c.token}
    if c.credentials_file:
        variable = spec.variable("credentials_file")
        if importlib.util.find_spec("nkeys") is None:
            raise ConfigError(
                f"{variable}: credentials files need the `nkeys` package, which is not "
                "installed (pip install nkeys)"
            )
        if not Path(c.credentials_file).is_file():
            raise ConfigError(f"{variable}: {c.credentials_file} is not a readable file")
        return {"user_credentials": c.credentials_file}
    return {}
