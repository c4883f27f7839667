"""Kafka sink (aiokafka): one record per event.

- **Key** `<bucket>/<decoded object key>` (MinIO's choice; RustFS uses the URL-encoded key),
  so every event of one object lands on one partition, in order.
- **Value** the payload in the sink's `FORMAT`; **headers** `event-name` (canonical, with
  `s3:`) and `event-id` (stable across retries, restarts and replays: consumers deduplicate
  on it).
- **Topic** may be a template: `{bucket}`, `{event}`, `{source}` are filled per event. Kafka
  allows only `A-Z a-z 0-9 . _ -` in topic names: the fixed text of the template must keep
  to them (checked at startup) and any other character in a filled-in value becomes `_`
  (`events.{event}` → `events.s3_ObjectCreated_Put`).
- **Acks** `all` by default, with the idempotent producer (no duplicates from the client's
  own retries, per-partition order kept). Kafka only allows idempotence with `acks=all`:
  `ACKS=1` or `ACKS=0` turn it off, so a retried request may then write a record twice and
  `ACKS=0` does not even learn whether the broker got it. MinIO and RustFS default to 1. A
  broker that grants no producer ids (Tansu's in-memory engine, a Kafka before 2.8 without
  the IdempotentWrite permission) needs `ACKS=1`.
- **Compression** `none` or `gzip`; `snappy`, `lz4` and `zstd` are accepted only when the
  `cramjam` package is installed (aiokafka's codecs for them).
- **TLS and SASL** (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with RustFS's and MinIO's names.

Delivery: every event of a batch is handed to the producer, then all acknowledgements are
awaited together; the whole batch is bounded by `TIMEOUT`, and each event gets its own
result (an event whose acknowledgement did not come in time is retried later). Order per
object is the delivery layer's: when an event fails and a later one of the same object
was acknowledged, the later one is sent again after it. A producer that timed out, or that
hit an error that ends a producer session (`OutOfOrderSequenceNumber`, `UnknownProducerId`,
fenced epoch; aiokafka#1017), is dropped and a new one is built for the next batch; the
dropped one is closed in the background without flushing, under a timeout (aiokafka#1101:
`stop()` can hang while the brokers are down). Idempotence only holds within one producer
session, so a resend after that (or after a relay restart) can write an event twice:
consumers drop repeats by the `event-id` header. Record too large, invalid topic and topic
authorisation errors are permanent (dead letter); everything else is retried.

Tested against Tansu, a real Kafka-protocol broker written independently of Apache Kafka
(with `ACKS=1`: it grants no producer ids), and librdkafka's mock cluster (the idempotent
producer, broker errors injected on demand): tests/integration/test_kafka_sink.py.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka import codec as kafka_codec
from aiokafka import errors as kafka_errors

from relay.config import ConfigError, Key, SinkConfig, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import clientlogs, probe
from relay.sinks.base import Health, Permanent, Result, Retryable, describe, exc_text
from relay.sinks.connection import Connection
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

TYPE = "kafka"

_CODEC_AVAILABLE = {
    "none": lambda: True,
    "gzip": kafka_codec.has_gzip,
    "snappy": kafka_codec.has_snappy,
    "lz4": kafka_codec.has_lz4,
    "zstd": kafka_codec.has_zstd,
}
AVAILABLE_CODECS = tuple(name for name, available in _CODEC_AVAILABLE.items() if available())
_SASL = {
    "plain": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-512": "SCRAM-SHA-512",
    "sha256": "SCRAM-SHA-256",  # MinIO's spellings
    "sha512": "SCRAM-SHA-512",
}


class Config(SinkConfig, kw_only=True, frozen=True):
    brokers: Annotated[
        tuple[str, ...], Key("Bootstrap brokers, `host:port`, comma-separated.", required=True)
    ] = ()
    topic: Annotated[
        str,
        Key(
            "Topic; may hold `{bucket}`, `{event}` and `{source}`, filled per event. "
            "Characters Kafka does not allow in a filled-in value become `_`.",
            required=True,
        ),
    ] = ""
    acks: Annotated[
        Literal["all", "-1", "1", "0"],
        Key(
            "`all` (= `-1`, with the idempotent producer), `1` or `0` (both turn idempotence "
            "off: a retried request may then write a record twice)."
        ),
    ] = "all"
    compression: Annotated[
        Literal["none", "gzip", "snappy", "lz4", "zstd"],
        Key(
            "`none` or `gzip`; `snappy`, `lz4` and `zstd` need the `cramjam` package "
            f"(available here: {', '.join(AVAILABLE_CODECS)}). MinIO: "
            "PRODUCER_COMPRESSION_CODEC.",
            aliases=("PRODUCER_COMPRESSION_CODEC",),
        ),
    ] = "none"
    tls_enable: Annotated[bool, Key("Connect with TLS (MinIO: TLS).", aliases=("TLS",))] = False
    tls_ca: Annotated[str, Key("PEM CA bundle that signs the brokers' certificates.")] = ""
    tls_client_cert: Annotated[
        str,
        Key(
            "PEM client certificate for mutual TLS (MinIO: CLIENT_TLS_CERT).",
            aliases=("CLIENT_TLS_CERT",),
        ),
    ] = ""
    tls_client_key: Annotated[
        str,
        Key(
            "PEM key of the client certificate (MinIO: CLIENT_TLS_KEY).",
            aliases=("CLIENT_TLS_KEY",),
        ),
    ] = ""
    tls_skip_verify: Annotated[bool, Key("Do not verify the brokers' certificates.")] = False
    sasl_enable: Annotated[
        bool,
        Key(
            "Authenticate with SASL; on by itself when SASL_USERNAME is set (as in RustFS). "
            "MinIO: SASL.",
            aliases=("SASL",),
        ),
    ] = False
    sasl_mechanism: Annotated[
        Literal["plain", "scram-sha-256", "scram-sha-512", "sha256", "sha512"],
        Key("`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (MinIO's `plain`/`sha256`/`sha512` too)."),
    ] = "plain"
    sasl_username: Annotated[str, Key("SASL user.")] = ""
    sasl_password: Annotated[str, Key("SASL password.", secret=True)] = ""
    version: Annotated[
        str, Key("MinIO's protocol version key: accepted, ignored (negotiated).")
    ] = ""


# Errors that no retry can fix: the event is dead-lettered.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
    kafka_errors.TopicAuthorizationFailedError,
)
# Errors that end a producer session: retry the events, with a new producer (new PID).
SESSION_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.InvalidProducerIdMapping,
    kafka_errors.ProducerFenced,
    kafka_errors.ProducerClosed,
    kafka_errors.IllegalStateError,
)

_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOPIC_LENGTH = 249
MAX_BATCH_BYTES = 1024**2  # one producer batch per partition per request
MAX_REQUEST_BYTES = 2 * 1024**2  # the broker's message.max.bytes decides; it answers "too large"


class KafkaSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.config = config = spec.typed(Config)
        validate_template(config.topic, spec.variable("topic"))
        _check_topic_template(config.topic, spec.variable("topic"))
        self.idempotent = config.acks in ("all", "-1")
        self.acks: int | str = "all" if self.idempotent else int(config.acks)
        self.compression = _compression(spec, config)
        self.security_protocol, self.ssl_context = _tls(spec, config)
        self.sasl = _sasl(spec, config)
        if self.sasl:
            self.security_protocol = "SASL_SSL" if self.ssl_context else "SASL_PLAINTEXT"
        self.where = f"kafka at {','.join(config.brokers)}"
        self.producer: Connection[AIOKafkaProducer] = Connection(
            self.name, self.where, self._open, self._close_without_flushing, config.timeout
        )
        clientlogs.quiet("aiokafka")

    # -- the producer ---------------------------------------------------------------------------

    async def _open(self) -> AIOKafkaProducer:
        c = self.config
        producer = AIOKafkaProducer(
            bootstrap_servers=list(c.brokers),
            client_id=f"s3-notify-relay.{self.name}",
            acks=self.acks,
            enable_idempotence=self.idempotent,
            compression_type=self.compression,
            request_timeout_ms=max(1000, int(c.timeout * 1000)),
            retry_backoff_ms=200,
            linger_ms=0,  # a batch is handed over at once; nothing to wait for
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=MAX_REQUEST_BYTES,
            security_protocol=self.security_protocol,
            ssl_context=self.ssl_context,
            **self.sasl,
        )
        try:
            await producer.start()
        except BaseException as exc:  # the Connection's timeout cancels a start that hangs
            self.producer.discard(producer)  # it may hold connections already
            if (
                self.idempotent
                and isinstance(exc, kafka_errors.KafkaError)
                and not isinstance(exc, kafka_errors.KafkaConnectionError)
            ):  # connected, then refused a producer id (InitProducerId)
                raise Retryable(
                    f"cannot start an idempotent producer on {self.where}: {describe(exc)}; "
                    "brokers that grant no producer ids need ACKS=1"
                ) from None
            if isinstance(exc, kafka_errors.KafkaConnectionError) and self.ssl_context:
                # aiokafka says only "Unable to bootstrap" when the handshake fails: say why
                health = await self.health()
                if not health.ok:
                    raise Retryable(f"{self.where}: {health.detail}") from None
            raise
        return producer

    async def _close_without_flushing(self, producer: AIOKafkaProducer) -> None:
        """What the producer still holds was reported as not delivered and stays in the log:
        flushing it would only add duplicates, and `stop()` would wait for it forever while
        the brokers are down (aiokafka#1101; with idempotence its batches never expire).
        aiokafka has no public "close without flushing": end its sender task, then close
        its connections, which fails what was in flight."""
        sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender is None or not hasattr(producer, "_closed"):
            await producer.stop()  # not started, or another aiokafka: its own stop()
            return
        producer._closed = True  # its stop() would flush; this one is only disconnected
        sender.cancel()
        await producer.client.close()
        await asyncio.wait([sender])

    async def _started(self) -> AIOKafkaProducer:
        producer = await self.producer.get()
        # aiokafka has no public "is alive": a sender task that ended (a fatal error such as
        # OutOfOrderSequenceNumber) leaves a producer that accepts records but never sends.
        sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender is not None and sender.done():
            error = None if sender.cancelled() else sender.exception()
            self.producer.drop(f"its sender stopped ({exc_text(error) or 'cancelled'})")
            producer = await self.producer.get()
        return producer

    # -- Sink ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.producer.get()

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        producer = await self._started()
        timeout = self.config.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        results: list[Result] = [None] * len(batch)
        in_flight: list[tuple[int, asyncio.Future[Any]]] = []
        broken: str | None = None  # why this producer must not be used again
        handed = 0
        try:
            async with asyncio.timeout_at(deadline):
                for index, entry in enumerate(batch):
                    handed = index
                    event = entry.event
                    try:
                        future = await producer.send(
                            self._topic(entry),
                            render(entry, self.config.format),
                            key=f"{event.bucket}/{event.key}".encode("utf-8", "surrogatepass"),
                            headers=[
                                ("event-name", event.event_name.encode()),
                                ("event-id", event.event_id.encode()),
                            ],
                        )
                    except Exception as exc:
                        results[index] = _classify(exc)
                        if isinstance(exc, SESSION_ERRORS):
                            broken = describe(exc)
                        continue
                    in_flight.append((index, future))
                handed = len(batch)
        except TimeoutError:
            # Stuck handing events over (metadata, buffer space): the rest is retried.
            for index in range(handed, len(batch)):
                results[index] = Retryable(f"not handed to Kafka within {timeout:g}s")
            broken = broken or f"no progress within {timeout:g}s"
        if in_flight:
            await asyncio.wait([f for _, f in in_flight], timeout=max(0.0, deadline - loop.time()))
        late = 0
        for index, future in in_flight:
            if not future.done():
                future.add_done_callback(_consume)  # resolved (or not) after we gave up
                late += 1
                results[index] = Retryable(f"no acknowledgement within {timeout:g}s")
                continue
            error = future.exception()
            if error is not None:
                results[index] = _classify(error)
                if isinstance(error, SESSION_ERRORS):
                    broken = describe(error)
        if late:
            broken = f"{late} acknowledgement(s) missing after {timeout:g}s"
        if broken is not None:
            self.producer.drop(broken)
        return results

    def _topic(self, entry: LogEntry) -> str:
        template = self.config.topic
        topic = render_template(template, entry.event)
        if topic is not template:  # a template: clean what the event filled in
            topic = _TOPIC_CHARS.sub("_", topic)
            if len(topic) > MAX_TOPIC_LENGTH or topic in (".", ".."):
                raise Permanent(f"topic {topic[:60]!r}… is not a valid Kafka topic name")
        return topic

    async def close(self) -> None:
        await self.producer.close()

    async def health(self) -> Health:
        # What MinIO checks: can a TCP connection be opened to one of the brokers (with the
        # sink's TLS, when it has some).
        brokers = [probe.endpoint(b, 9092) for b in self.config.brokers]
        return await probe.tcp(brokers, ssl=self.ssl_context)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _classify(exc: BaseException) -> Retryable | Permanent:
    if isinstance(exc, Retryable | Permanent):
        return exc
    text = describe(exc)
    if isinstance(exc, PERMANENT_ERRORS):
        return Permanent(text)
    if isinstance(exc, kafka_errors.KafkaTimeoutError):
        return Retryable(f"timed out: {text}")
    return Retryable(text)


def _check_topic_template(template: str, variable: str) -> None:
    fixed = template
    for placeholder in ("{bucket}", "{event}", "{source}"):
        fixed = fixed.replace(placeholder, "")
    fixed = fixed.replace("{{", "{").replace("}}", "}")
    bad = sorted(set(_TOPIC_CHARS.findall(fixed)))
    if bad:
        raise ConfigError(
            f"{variable}: {template!r}: Kafka topic names allow only letters, digits, "
            f"'.', '_' and '-' (found {' '.join(repr(c) for c in bad)})"
        )
    if "{" not in template and (len(template) > MAX_TOPIC_LENGTH or template in (".", "..")):
        raise ConfigError(f"{variable}: {template!r} is not a valid Kafka topic name")


def _compression(spec: SinkSpec, config: Config) -> str | None:
    codec = config.compression
    if codec not in AVAILABLE_CODECS:
        raise ConfigError(
            f"{spec.variable('compression')}: {codec} compression needs the `cramjam` package, "
            f"which is not installed in this relay (available: {', '.join(AVAILABLE_CODECS)})"
        )
    return None if codec == "none" else codec


def _tls(spec: SinkSpec, config: Config) -> tuple[str, ssl.SSLContext | None]:
    c = config
    if not c.tls_enable:
        if c.tls_ca or c.tls_client_cert or c.tls_client_key or c.tls_skip_verify:
            raise ConfigError(
                f"{spec.variable('tls_enable')}: TLS files or TLS_SKIP_VERIFY are set for the "
                f"sink {spec.name} but TLS is off; set it to on (or remove them)"
            )
        return "PLAINTEXT", None
    return "SSL", client_context(spec, config, skip_verify=c.tls_skip_verify)


def _sasl(spec: SinkSpec, config: Config) -> dict[str, Any]:
    username, password = config.sasl_username, config.sasl_password
    if not (config.sasl_enable or username):
        return {}
    if not username or not password:
        missing = "sasl_username" if not username else "sasl_password"
        raise ConfigError(f"{spec.variable(missing)}: required when SASL is on ({spec.name})")
    return {
        "sasl_mechanism": _SASL[config.sasl_mechanism],
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }


def create(spec: SinkSpec) -> KafkaSink:
    return KafkaSink(spec)
