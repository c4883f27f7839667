"""NATS sink: publishes each event to a subject, on core NATS or on JetStream.

Core NATS is at-most-once: the relay publishes a batch, then waits for a PING/PONG round
trip (`flush`), which proves the server has read every message before it. That is the best
acknowledgement core NATS has; the server still drops a message nobody is subscribed to,
or that a slow consumer cannot take. A batch that was not confirmed, or during which the
client reconnected (what it wrote before the break may be lost), is sent again: a
subscriber may then see an event twice (core messages carry `Nats-Msg-Id` too). One
connection delivers in the order published, so each object's events arrive in order.

With `JETSTREAM_ENABLE=on` every event is published with `Nats-Msg-Id: <event id>` and
counts as delivered only once its PubAck arrives, so an event sent again after a timeout
or a restart is stored once, as long as the resend falls inside the stream's duplicate
window (`duplicate_window`, 2 minutes by default: raise it to cover the outages you want
no duplicates from). A batch is published whole and its PubAcks awaited together, but it
holds one event of each object (`one_per_object`: the delivery layer sends an object's
next event in the next call, once the one before is stored). Publishing an object's events
together would let the stream store them out of order: measured on NATS 2.9, when the
stream refuses one event (its subject at a per-subject limit, no stream for the subject,
no stream leader) a later event of the same object on another subject of the stream is
still stored; sending both again in order stores the first, but the stream drops the
second as a duplicate of its own earlier copy, which stays before the first. The price is
paid by a single busy object only: its events go one round trip apart.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from relay.config import ConfigError, Key, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Result, Retryable, describe
from relay.sinks.formats import render
from relay.sinks.nats.connection import NatsConfig, NatsConnection
from relay.sinks.template import render_template, validate_template

TYPE = "nats"
MAX_COVERED = 10_000  # subjects remembered as covered by the stream (templated on buckets)


class Config(NatsConfig, kw_only=True, frozen=True):
    subject: Annotated[
        str,
        Key(
            "Subject each event is published to; may hold `{bucket}`, `{event}`, `{source}`.",
            required=True,
        ),
    ] = ""
    jetstream_enable: Annotated[
        bool,
        Key(
            "Publish to JetStream and wait for each PubAck (at-least-once, deduplicated by "
            "`Nats-Msg-Id` within the stream's duplicate window). MinIO calls this key "
            "JETSTREAM (accepted too). Off: core NATS, at-most-once.",
            aliases=("JETSTREAM",),
        ),
    ] = False
    jetstream_stream_name: Annotated[
        str,
        Key(
            "Stream the events must land in. Checked at start: it must exist and its subjects "
            "must cover SUBJECT, otherwise the sink stays down with the reason. Each publish "
            "also carries `Nats-Expected-Stream`."
        ),
    ] = ""
    batch_size: Annotated[
        int,
        Key(
            "Most events handed to the sink at once. Core NATS: published together, "
            "confirmed by one round trip. JetStream: the window of publishes awaiting their "
            "PubAck, each of another object (an object's next event waits for the PubAck of "
            "the one before; CONCURRENCY does not apply); measured 1.16x the rate at 100."
        ),
    ] = 1000


def create(spec: SinkSpec) -> CoreSink | JetStreamSink:
    config = spec.typed(Config)
    validate_template(config.subject, spec.variable("subject"))
    if config.jetstream_enable:
        return JetStreamSink(spec, config)
    if config.jetstream_stream_name:
        raise ConfigError(
            f"{spec.variable('jetstream_stream_name')}: needs "
            f"{spec.variable('jetstream_enable')}=on"
        )
    return CoreSink(spec, config)


def _pending_size(config: Config) -> int:
    # At most what one batch renders to: nothing is published while nats-py reconnects.
    return max(2 * 1024**2, 2 * config.batch_bytes)


def _headers(entry: LogEntry) -> dict[str, str]:
    headers = {"Nats-Msg-Id": entry.event.event_id}
    if entry.stale:
        headers["Relay-Stale"] = "true"
    return headers


class CoreSink:
    def __init__(self, spec: SinkSpec, config: Config) -> None:
        self.name = spec.name
        self.config = config
        self.link = NatsConnection(spec, _pending_size(config))

    async def start(self) -> None:
        await self.link.client()

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        nc = await self.link.client()
        reconnects = nc.stats["reconnects"]
        started = time.monotonic()
        results: list[Result] = [None] * len(batch)
        sent: list[tuple[int, str]] = []
        for index, entry in enumerate(batch):
            try:
                subject = render_template(self.config.subject, entry.event)
                body = render(entry, self.config.format)
                await nc.publish(subject, body, headers=_headers(entry))
                sent.append((index, subject))
            except (ValueError, nats.errors.BadSubjectError) as exc:
                results[index] = Permanent(f"cannot publish: {describe(exc)}")
            except nats.errors.MaxPayloadError:
                results[index] = Permanent("event larger than the server's max_payload")
            except (nats.errors.Error, OSError) as exc:
                # closed or buffer full mid-batch: the rest waits for the next attempt
                error = Retryable(f"publish failed: {describe(exc)}")
                results[index:] = [error] * (len(batch) - index)
                break
        if not sent:
            return results
        try:
            async with asyncio.timeout(self.config.timeout):
                flush = max(1, round(self.config.timeout))
                await nc.flush(timeout=flush)
                # The server answers a forbidden publish with -ERR, which (measured on
                # 2.9) sometimes trails the first PONG; a second round trip catches it.
                await nc.flush(timeout=flush)
            if nc.stats["reconnects"] != reconnects:
                raise nats.errors.Error("the connection broke during the batch")
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            why = describe(exc) if str(exc) else "timeout"
            error = Retryable(f"server did not confirm the batch: {why}")
            for index, _ in sent:
                results[index] = error
            return results
        for index, subject in sent:  # forbidden publishes were dropped, not delivered
            if self.link.refused(subject, started):
                results[index] = Permanent(f"permission denied to publish to {subject!r}")
        return results

    async def close(self) -> None:
        await self.link.close()

    async def health(self) -> Health:
        return await self.link.health(self.link.where)


class JetStreamSink:
    one_per_object = True  # an object's next event waits for the PubAck of the one before

    def __init__(self, spec: SinkSpec, config: Config) -> None:
        self.name = spec.name
        self.config = config
        self.stream = config.jetstream_stream_name
        self.stream_variable = spec.variable("jetstream_stream_name")
        if self.stream and not re.fullmatch(r"[^.*>\s]+", self.stream):
            raise ConfigError(f"{self.stream_variable}: not a stream name")
        self.link = NatsConnection(spec, _pending_size(config), prepare=self._prepare)
        self.acks: PubAcks | None = None
        self.stream_subjects: tuple[str, ...] = ()
        self.covered: set[str] = set()  # rendered subjects found in stream_subjects

    async def start(self) -> None:
        await self.link.client()

    async def _prepare(self, nc: NatsClient) -> None:
        """A new client: the stream checked (when one is named), PubAcks subscribed."""
        if self.stream:
            await self._load_stream(nc)
            subject = self.config.subject
            if "{" not in subject.replace("{{", ""):  # a templated one is checked per use
                subject = subject.replace("{{", "{").replace("}}", "}")
                if not any(_covers(p, subject) for p in self.stream_subjects):
                    raise Retryable(
                        f"JetStream stream {self.stream!r} does not cover subject {subject!r} "
                        f"(its subjects: {', '.join(self.stream_subjects)}); add the subject "
                        f"to the stream or fix {self.stream_variable}"
                    )
        acks = PubAcks(nc)
        await acks.subscribe()
        self.acks = acks

    async def _load_stream(self, nc: NatsClient) -> None:
        where = self.link.where
        try:
            async with asyncio.timeout(self.config.timeout):
                info = await nc.jsm(timeout=self.config.timeout).stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise Retryable(f"JetStream stream {self.stream!r} does not exist on {where}; "
                            f"create it or fix {self.stream_variable}") from None  # fmt: skip
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise Retryable(f"JetStream is not enabled on {where}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise Retryable(f"cannot read stream {self.stream!r}: {describe(exc)}") from None
        self.stream_subjects = tuple(info.config.subjects or [self.stream])
        self.covered.clear()

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        """Every event is published before any PubAck is awaited: one round trip for the
        batch instead of one per event. The batch holds one event per object at most (see
        the module's docstring), so BATCH_SIZE is the window of unacknowledged publishes."""
        nc = await self.link.client()
        acks = self.acks
        assert acks is not None and acks.nc is nc, "prepared with the client"
        started = time.monotonic()
        results: list[Result] = [None] * len(batch)
        waiting: dict[int, tuple[str, str, asyncio.Future[bool]]] = {}
        for index, entry in enumerate(batch):
            subject = self.config.subject
            if not nc.is_connected:  # it would wait in the reconnect buffer: see connection.py
                results[index] = Retryable(f"not connected to {self.link.where}")
                continue
            try:
                subject = render_template(subject, entry.event)
                body = render(entry, self.config.format)
                headers = _headers(entry)
                if self.stream:
                    await self._check_subject(nc, subject)
                    headers["Nats-Expected-Stream"] = self.stream
                reply, ack = acks.expect()
                waiting[index] = (subject, reply, ack)
                await nc.publish(subject, body, reply=reply, headers=headers)
            except ValueError as exc:
                results[index] = Permanent(str(exc))
            except Exception as exc:
                results[index] = self._failure(exc, subject, started)
        unanswered = [ack for index, (_, _, ack) in waiting.items() if results[index] is None]
        if unanswered:
            await asyncio.wait(unanswered, timeout=self.config.timeout)
        for index, (subject, reply, ack) in waiting.items():
            acks.forget(reply)
            if results[index] is not None:
                continue
            if not ack.done():
                ack.cancel()
                results[index] = self._failure(TimeoutError(), subject, started)
            elif ack.exception() is not None:
                results[index] = self._failure(ack.exception(), subject, started)  # type: ignore[arg-type]
        return results

    def _failure(self, exc: Exception, subject: str, started: float) -> Permanent | Retryable:
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
        if self.link.refused(subject, started):
            return Permanent(f"permission denied to publish to {subject!r}")
        if isinstance(exc, TimeoutError):
            return Retryable(f"no PubAck within {self.config.timeout:g}s")
        return Retryable(f"no PubAck: {describe(exc)}")

    async def _check_subject(self, nc: NatsClient, subject: str) -> None:
        if subject in self.covered:
            return
        if not any(_covers(p, subject) for p in self.stream_subjects):
            await self._load_stream(nc)  # the stream may have been edited since
            if not any(_covers(p, subject) for p in self.stream_subjects):
                raise Permanent(f"subject {subject!r} is not in stream {self.stream!r} (its "
                                f"subjects: {', '.join(self.stream_subjects)})")  # fmt: skip
        if len(self.covered) >= MAX_COVERED:
            self.covered.clear()
        self.covered.add(subject)

    async def close(self) -> None:
        await self.link.close()

    async def health(self) -> Health:
        what = f"JetStream stream {self.stream!r}" if self.stream else self.link.where
        return await self.link.health(what)


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
        """Stop waiting (a late PubAck then finds nothing and is ignored)."""
        self.waiting.pop(reply, None)

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
        if answer.error is None:
            ack.set_result(answer.duplicate)
            return
        try:
            nats.js.errors.APIError.from_error(answer.error)  # raises the error it makes
        except nats.js.errors.APIError as exc:
            ack.set_exception(exc)
        else:
            ack.set_exception(nats.js.errors.APIError(**answer.error))


class _PubAck(msgspec.Struct):
    duplicate: bool = False
    error: dict[str, Any] | None = None


_PUBACK = msgspec.json.Decoder(_PubAck)


def _api_error(exc: nats.js.errors.APIError, subject: str) -> Permanent | Retryable:
    code = exc.err_code or 0
    text = exc.description or str(exc)
    if exc.code == 503 or code in (10008, 10077):  # unavailable, or a limit of the stream
        return Retryable(f"JetStream cannot store it now: {text}")
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
