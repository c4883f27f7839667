"""NATS sink: publishes each event to a subject, on core NATS or on JetStream.

Core NATS is at-most-once: the relay publishes a batch, then waits for a PING/PONG round
trip (`flush`), which proves the server has read every message before it. That is the best
acknowledgement core NATS has; the server still drops a message nobody is subscribed to,
or that a slow consumer cannot take, and a batch that was not confirmed is sent again (a
subscriber may then see an event twice; core messages carry `Nats-Msg-Id` too).

With `JETSTREAM_ENABLE=on` every event is published with `Nats-Msg-Id: <event id>` and
counts as delivered only once its PubAck arrives, so an event sent again after a timeout
or a restart is stored once, as long as the resend falls inside the stream's duplicate
window (`duplicate_window`, 2 minutes by default: raise it to cover the outages you want
no duplicates from).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Result, Retryable
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

log = logging.getLogger("relay.sinks.nats")

TYPE = "nats"
OPTIONS = (
    Option(
        "address",
        "str",
        "",
        "NATS server: `host:port` or `nats://host:port` (`tls://` for TLS); a "
        "comma-separated list for a cluster.",
        required=True,
    ),
    Option(
        "subject",
        "str",
        "",
        "Subject each event is published to; may hold `{bucket}`, `{event}`, `{source}`.",
        required=True,
    ),
    Option("username", "str", "", "User name (with PASSWORD)."),
    Option("password", "str", "", "Password of USERNAME.", secret=True),
    Option("token", "str", "", "Authentication token (instead of USERNAME/PASSWORD).", secret=True),
    Option(
        "credentials_file",
        "str",
        "",
        "NATS `.creds` file (JWT + NKey seed), instead of a password or token. MinIO "
        "calls this key USER_CREDENTIALS (accepted too). Needs the `nkeys` package.",
        aliases=("USER_CREDENTIALS",),
    ),
    Option(
        "tls_ca",
        "str",
        "",
        "PEM CA bundle that signs the server's certificate (MinIO: CERT_AUTHORITY).",
        aliases=("CERT_AUTHORITY",),
    ),
    Option(
        "tls_client_cert",
        "str",
        "",
        "PEM client certificate for mutual TLS (MinIO: CLIENT_CERT).",
        aliases=("CLIENT_CERT",),
    ),
    Option(
        "tls_client_key",
        "str",
        "",
        "PEM key of TLS_CLIENT_CERT (MinIO: CLIENT_KEY).",
        aliases=("CLIENT_KEY",),
    ),
    Option(
        "tls_required",
        "bool",
        False,
        "Refuse to talk to a server that does not use TLS (the sink stays down instead).",
    ),
    Option(
        "jetstream_enable",
        "bool",
        False,
        "Publish to JetStream and wait for each PubAck (at-least-once, deduplicated by "
        "`Nats-Msg-Id` within the stream's duplicate window). A batch is published whole "
        "before its PubAcks are awaited: BATCH_SIZE is the window of unacknowledged "
        "publishes and CONCURRENCY does not apply. MinIO calls this key JETSTREAM "
        "(accepted too). Off: core NATS, at-most-once.",
        aliases=("JETSTREAM",),
    ),
    Option(
        "batch_size",
        "int",
        1000,
        "Most events handed to the sink at once. On JetStream, the window of publishes "
        "awaiting their PubAck: one round trip per batch (measured 1.16x the rate at 100).",
    ),
    Option(
        "jetstream_stream_name",
        "str",
        "",
        "Stream the events must land in. Checked at start: it must exist and its subjects "
        "must cover SUBJECT, otherwise the sink stays down with the reason. Each publish "
        "also carries `Nats-Expected-Stream`.",
    ),
)

_PERMISSION = re.compile(r"permissions violation for publish to \"?([^\s\"']+)", re.IGNORECASE)
MAX_COVERED = 10_000
_USERINFO = re.compile(r"//[^/@\s]*@")


class NatsSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.format = spec["format"]
        self.timeout: float = spec["timeout"]
        self.concurrency: int = spec["concurrency"]
        self.subject: str = spec["subject"]
        validate_template(self.subject, spec.variable("subject"))
        self.servers = _servers(spec)
        self.jetstream: bool = spec["jetstream_enable"]
        self.stream: str = spec["jetstream_stream_name"]
        self.stream_variable = spec.variable("jetstream_stream_name")
        if self.stream and not self.jetstream:
            raise ConfigError(
                f"{spec.variable('jetstream_stream_name')}: needs "
                f"{spec.variable('jetstream_enable')}=on"
            )
        if self.stream and not re.fullmatch(r"[^.*>\s]+", self.stream):
            raise ConfigError(f"{spec.variable('jetstream_stream_name')}: not a stream name")
        self.tls_required: bool = spec["tls_required"]
        # a secret under 4 characters would be "found" inside ordinary words
        self.secrets = [s for s in (spec["password"], spec["token"]) if len(s) >= 4]
        self.connect_options = _auth(spec)
        context = _ssl_context(spec)
        if context is not None:
            self.connect_options["tls"] = context
        # At most what one batch renders to: the relay never publishes while disconnected,
        # so the reconnect buffer never holds more than the batch in hand.
        self.pending_size = max(2 * 1024**2, 2 * spec["batch_bytes"])
        self.nc: NatsClient | None = None
        self.stream_subjects: tuple[str, ...] = ()
        self.covered: set[str] = set()  # subjects found in stream_subjects
        self.acks: PubAcks | None = None
        self.last_error: str = ""
        self.denied: dict[str, float] = {}  # subject → when the server refused it

    # -- connection ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            return
        await self._connect()

    async def _connect(self) -> None:
        await self._drop()
        self.last_error = ""
        nc = await connect(
            self,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self.nc = nc
        if self.jetstream and self.stream:
            try:
                await self._check_stream()
            except Exception:
                await self._drop()
                raise

    async def _check_stream(self) -> None:
        await self._load_stream()
        if "{" in self.subject.replace("{{", ""):
            return  # each rendered subject is checked when first used
        subject = self.subject.replace("{{", "{").replace("}}", "}")
        if not any(_covers(p, subject) for p in self.stream_subjects):
            raise Retryable(
                f"JetStream stream {self.stream!r} does not cover subject {subject!r} (its "
                f"subjects: {', '.join(self.stream_subjects)}); add the subject to the stream "
                f"or fix {self.stream_variable}"
            )

    async def _load_stream(self) -> None:
        assert self.nc is not None
        try:
            async with asyncio.timeout(self.timeout):
                info = await self.nc.jsm(timeout=self.timeout).stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise Retryable(
                f"JetStream stream {self.stream!r} does not exist on {self._where()}; create "
                f"it or fix {self.stream_variable}"
            ) from None
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise Retryable(f"JetStream is not enabled on {self._where()}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise Retryable(f"cannot read stream {self.stream!r}: {self._text(exc)}") from None
        self.stream_subjects = tuple(info.config.subjects or [self.stream])
        self.covered.clear()

    async def _drop(self) -> None:
        nc, self.nc, self.acks = self.nc, None, None
        if nc is not None:
            await _abandon(nc, self.timeout)

    async def _ready(self) -> NatsClient:
        """The client, rebuilt if it ended up closed; Retryable while it reconnects."""
        if self.nc is None or self.nc.is_closed:
            await self._connect()
        assert self.nc is not None
        if not self.nc.is_connected:
            # Publishing now would park messages in the reconnect buffer, to be sent after
            # the batch was already reported failed (and resent): refuse instead.
            if "authorization violation" in self.last_error.lower():
                raise Retryable(f"{self._where()} refused the credentials: {self.last_error}")
            why = f": {self.last_error}" if self.last_error else ""
            raise Retryable(f"not connected to {self._where()} (reconnecting{why})")
        return self.nc

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        nc = await self._ready()
        if self.jetstream:
            return await self._send_jetstream(batch)
        return await self._send_core(nc, batch)

    async def _send_core(self, nc: NatsClient, batch: Sequence[LogEntry]) -> list[Result]:
        results: list[Result] = [None] * len(batch)
        sent: list[tuple[int, str]] = []
        started = time.monotonic()
        for index, entry in enumerate(batch):
            try:
                subject = render_template(self.subject, entry.event)
                body = render(entry, self.format)
                await nc.publish(subject, body, headers={"Nats-Msg-Id": entry.event.event_id})
                sent.append((index, subject))
            except (ValueError, nats.errors.BadSubjectError) as exc:
                results[index] = Permanent(f"cannot publish: {self._text(exc) or 'bad subject'}")
            except nats.errors.MaxPayloadError:
                results[index] = Permanent("event larger than the server's max_payload")
            except (nats.errors.Error, OSError) as exc:
                # closed or buffer full mid-batch: the rest waits for the next attempt
                error = Retryable(f"publish failed: {self._text(exc)}")
                for later in range(index, len(batch)):
                    results[later] = error
                break
        if not sent:
            return results
        try:
            async with asyncio.timeout(self.timeout):
                await nc.flush(timeout=max(1, round(self.timeout)))
                # The server answers a forbidden publish with -ERR, which (measured on
                # 2.9) sometimes trails the first PONG; a second round trip catches it.
                await nc.flush(timeout=max(1, round(self.timeout)))
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            error = Retryable(f"server did not confirm the batch: {self._text(exc) or 'timeout'}")
            for index, _ in sent:
                results[index] = error
            return results
        # Forbidden publishes were dropped by the server, not delivered.
        for index, subject in sent:
            if self.denied.get(subject, 0.0) >= started:
                results[index] = Permanent(f"permission denied to publish to {subject!r}")
        return results

    async def _send_jetstream(self, batch: Sequence[LogEntry]) -> list[Result]:
        """Every event of the batch is published before any PubAck is awaited: one round trip
        per batch instead of one per event (BATCH_SIZE is the window of unacknowledged
        publishes). They leave in order on one connection, so the stream stores them in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        started = time.monotonic()
        results: list[Result] = [None] * len(batch)
        acks: dict[int, tuple[str, asyncio.Future[bool]]] = {}
        pubacks = await self._pubacks()
        for index, entry in enumerate(batch):
            nc = self.nc
            if nc is None or not nc.is_connected:
                results[index] = Retryable(f"not connected to {self._where()}")
                continue
            subject = self.subject
            try:
                subject = render_template(self.subject, entry.event)
                body = render(entry, self.format)
                headers = {"Nats-Msg-Id": entry.event.event_id}
                if self.stream:
                    await self._check_subject(subject)
                    headers["Nats-Expected-Stream"] = self.stream
                reply, ack = pubacks.expect()
                try:
                    await nc.publish(subject, body, reply=reply, headers=headers)
                except BaseException:
                    pubacks.forget(reply)
                    raise
            except ValueError as exc:
                results[index] = Permanent(str(exc))
            except Exception as exc:
                results[index] = self._failure(exc, subject, started)
            else:
                acks[index] = (subject, ack)
        if acks:
            waiting = [ack for _, ack in acks.values()]
            _, late = await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()))
            for ack in late:
                ack.cancel()
            pubacks.forget_done()
        duplicates = 0
        for index, (subject, ack) in acks.items():
            if ack.cancelled():
                results[index] = self._failure(None, subject, started)
            elif ack.exception() is not None:
                results[index] = self._failure(ack.exception(), subject, started)
            elif ack.result():
                duplicates += 1
        if duplicates:
            log.debug(
                "JetStream dropped resent events as duplicates",
                extra={"sink": self.name, "duplicates": duplicates},
            )
        return results

    async def _pubacks(self) -> PubAcks:
        nc = self.nc
        assert nc is not None
        if self.acks is None or self.acks.nc is not nc:
            self.acks = PubAcks(nc)
            await self.acks.subscribe()
        return self.acks

    def _failure(self, exc: BaseException | None, subject: str, started: float) -> Result:
        """What a failed publish or PubAck means for the event."""
        if isinstance(exc, Permanent | Retryable):
            return exc
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return Retryable(f"no JetStream stream takes subject {subject!r}")
        if isinstance(exc, nats.js.errors.APIError):
            return _api_error(exc, subject)
        if isinstance(exc, nats.errors.BadSubjectError):
            return Permanent(f"invalid subject {subject!r}")
        if isinstance(exc, nats.errors.MaxPayloadError):
            return Permanent("event larger than the server's max_payload")
        # the server answers a forbidden publish with -ERR and no PubAck
        if self.denied.get(subject, 0.0) >= started:
            return Permanent(f"permission denied to publish to {subject!r}")
        why = self._text(exc) if exc is not None else f"none within {self.timeout:g}s"
        return Retryable(f"no PubAck: {why or type(exc).__name__}")

    async def _check_subject(self, subject: str) -> None:
        if subject in self.covered:
            return
        if any(_covers(p, subject) for p in self.stream_subjects):
            if len(self.covered) >= MAX_COVERED:  # subjects templated on buckets: bounded
                self.covered.clear()
            self.covered.add(subject)
            return
        await self._load_stream()  # the stream may have been edited since
        if not any(_covers(p, subject) for p in self.stream_subjects):
            raise Permanent(
                f"subject {subject!r} is not in stream {self.stream!r} (its subjects: "
                f"{', '.join(self.stream_subjects)})"
            )

    # -- callbacks (nats-py calls them from its own tasks) ---------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = self._text(exc) or type(exc).__name__
        match = _PERMISSION.search(text)
        if match:
            self.denied[match.group(1)] = time.monotonic()
        else:
            self.last_error = text
        log.debug("nats client error", extra={"sink": self.name, "error": text})

    async def _on_disconnected(self) -> None:
        log.debug("nats disconnected", extra={"sink": self.name})

    async def _on_reconnected(self) -> None:
        self.last_error = ""
        log.debug("nats reconnected", extra={"sink": self.name})

    async def _on_closed(self) -> None:
        log.debug("nats connection closed", extra={"sink": self.name})

    # -- the rest -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self._drop()

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(min(self.timeout, 8.0)):
                if self.nc is None or self.nc.is_closed:
                    await self._connect()
                nc = await self._ready()
                rtt = await nc.rtt(timeout=max(1, round(min(self.timeout, 5.0))))
        except Exception as exc:
            return Health(False, self._text(exc) or type(exc).__name__)
        what = f"JetStream stream {self.stream!r}" if self.stream else self._where()
        return Health(True, f"{what} reachable (round trip {rtt * 1000:.1f} ms)")

    def _where(self) -> str:
        return ",".join(_USERINFO.sub("//", s) for s in self.servers)

    def _text(self, exc: BaseException) -> str:
        text = str(exc)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _USERINFO.sub("//***@", text)


class PubAcks:
    """The PubAcks of one connection's JetStream publishes, matched to them by reply subject.
    nats-py's `publish_async` does the same, but spent ~20 % of the relay's main thread per
    message on an `asyncio.wait_for` around a semaphore and an `os.urandom` call for the
    reply token (py-spy, 1M-event drain); a counter and a dict do here."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.prefix = f"{nc.new_inbox()}."
        self.waiting: dict[str, asyncio.Future[bool]] = {}  # reply subject → duplicate?
        self.sent = 0

    async def subscribe(self) -> None:
        # nats-py subscribes again by itself after a reconnect
        await self.nc.subscribe(self.prefix + "*", cb=self._reply)

    def expect(self) -> tuple[str, asyncio.Future[bool]]:
        self.sent += 1
        reply = f"{self.prefix}{self.sent}"
        ack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting[reply] = ack
        return reply, ack

    def forget(self, reply: str) -> None:
        self.waiting.pop(reply, None)

    def forget_done(self) -> None:
        """Drop what was answered or given up on (late PubAcks find nothing and are ignored)."""
        self.waiting = {r: ack for r, ack in self.waiting.items() if not ack.done()}

    async def _reply(self, msg: Msg) -> None:
        ack = self.waiting.pop(msg.subject, None)
        if ack is None or ack.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":  # no stream takes the subject
            ack.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = _PUBACK.decode(msg.data)
        except msgspec.DecodeError as exc:
            ack.set_exception(nats.errors.Error(f"unreadable PubAck: {exc}"))
            return
        if answer.error is not None:
            ack.set_exception(nats.js.errors.APIError.from_error(answer.error))
        else:
            ack.set_result(answer.duplicate)


class _PubAck(msgspec.Struct):
    duplicate: bool = False
    error: dict[str, Any] | None = None


_PUBACK = msgspec.json.Decoder(_PubAck)


async def connect(sink: Any, **callbacks: Any) -> NatsClient:
    """Connect as the relay's NATS sinks do (`sink` has servers, name, timeout, pending_size,
    connect_options, tls_required, last_error and _on_error): reconnect forever, the first
    connect bounded by the sink's timeout, TLS enforced. Retryable, with the reason, if not."""
    nc = NatsClient()
    try:
        async with asyncio.timeout(sink.timeout):
            await nc.connect(
                servers=list(sink.servers),
                name=f"s3-notify-relay {sink.name}",
                error_cb=sink._on_error,
                # the default (60 attempts, 2 s apart) closes the client for good after ~2
                # minutes of outage; -1 = keep reconnecting
                max_reconnect_attempts=-1,
                connect_timeout=max(1, round(min(sink.timeout, 5.0))),
                pending_size=sink.pending_size,
                flush_timeout=sink.timeout,
                **callbacks,
                **sink.connect_options,
            )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        # with max_reconnect_attempts=-1 connect() retries until our timeout cancels it;
        # the reason is what error_cb saw last
        await _abandon(nc)
        reason = sink.last_error or sink._text(exc) or "no answer"
        if "authorization violation" in reason.lower():
            # Retryable: the sink stays down and events wait until the credentials are
            # fixed, rather than the whole backlog going to the dead letters
            raise Retryable(f"{sink._where()} refused the credentials: {reason}") from None
        raise Retryable(f"cannot connect to {sink._where()}: {reason}") from None
    if sink.tls_required and not _uses_tls(nc):
        await _abandon(nc)
        raise Retryable(f"{sink._where()} does not use TLS and TLS_REQUIRED is on; not publishing")
    return nc


async def _abandon(nc: NatsClient, within: float = 2.0) -> None:
    """Close a client we no longer use, without waiting on a server that may be gone."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            await nc.close()


def _uses_tls(nc: NatsClient) -> bool:
    # nats-py upgrades to TLS only when the server's INFO asks for it; that INFO is the
    # only record of it the client keeps.
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    return bool(info.get("tls_required"))


def _api_error(exc: nats.js.errors.APIError, subject: str) -> Permanent | Retryable:
    code = exc.err_code or 0
    text = exc.description or str(exc)
    if exc.code == 503 or code in (10008, 10077):  # unavailable, or the stream's store
        return Retryable(f"JetStream unavailable: {text}")
    if code == 10060:  # Nats-Expected-Stream does not match the stream of the subject
        return Permanent(f"subject {subject!r} belongs to another stream: {text}")
    if exc.code is not None and exc.code >= 500:
        return Retryable(f"JetStream error {exc.code}: {text}")
    return Permanent(f"JetStream refused the event: {text}")


def _covers(pattern: str, subject: str) -> bool:
    """Whether a stream subject (with `*` and `>` wildcards) matches a subject."""
    tokens = subject.split(".")
    for i, token in enumerate(pattern.split(".")):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(pattern.split("."))


def _servers(spec: SinkSpec) -> tuple[str, ...]:
    servers = []
    for item in spec["address"].split(","):
        item = item.strip()
        if not item:
            continue
        url = item if "://" in item else f"nats://{item}"
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
            parts = parts._replace(netloc="")
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            raise ConfigError(
                f"{spec.variable('address')}: {_USERINFO.sub('//***@', url)!r} is not "
                "host:port or nats://host:port"
            )
        servers.append(url)
    if not servers:
        raise ConfigError(f"{spec.variable('address')}: required for the sink {spec.name}")
    return tuple(servers)


def _auth(spec: SinkSpec) -> dict[str, Any]:
    methods = [k for k in ("password", "token", "credentials_file") if spec[k]]
    if spec["username"] and not spec["password"]:
        raise ConfigError(f"{spec.variable('password')}: required with USERNAME")
    if spec["password"] and not spec["username"]:
        raise ConfigError(f"{spec.variable('username')}: required with PASSWORD")
    if len(methods) > 1:
        names = " and ".join(spec.variable(k) for k in methods)
        raise ConfigError(f"{names}: choose one way to authenticate")
    if spec["username"]:
        return {"user": spec["username"], "password": spec["password"]}
    if spec["token"]:
        return {"token": spec["token"]}
    if spec["credentials_file"]:
        variable = spec.variable("credentials_file")
        if importlib.util.find_spec("nkeys") is None:
            raise ConfigError(
                f"{variable}: credentials files need the `nkeys` package, which is not "
                "installed (pip install nkeys)"
            )
        if not Path(spec["credentials_file"]).is_file():
            raise ConfigError(f"{variable}: {spec['credentials_file']} is not a readable file")
        return {"user_credentials": spec["credentials_file"]}
    return {}


def _ssl_context(spec: SinkSpec) -> ssl.SSLContext | None:
    wanted = spec["tls_ca"] or spec["tls_client_cert"] or spec["tls_required"]
    if not wanted and "tls://" not in spec["address"]:
        return None
    return client_context(spec)


def create(spec: SinkSpec) -> NatsSink:
    return NatsSink(spec)
