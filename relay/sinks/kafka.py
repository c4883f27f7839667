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
  `ACKS=0` does not even learn whether the broker got it. MinIO and RustFS default to 1.
- **Compression** `none` or `gzip`; `snappy`, `lz4` and `zstd` are accepted only when the
  `cramjam` package is installed (aiokafka's codecs for them).
- **TLS and SASL** (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with RustFS's and MinIO's names.

Delivery: each event of a batch is handed to the producer, then all acknowledgements are
awaited together; the whole batch is bounded by `TIMEOUT`. Events whose acknowledgement
did not come in time are retried later. A producer that timed out, or that hit an error
that ends a producer session (`OutOfOrderSequenceNumber`, `UnknownProducerId`, fenced
epoch; aiokafka#1017), is abandoned and a new one is built for the next batch: it is
closed in the background under a timeout and never awaited unbounded (aiokafka#1101:
`stop()` can hang while the brokers are down). Idempotence only holds within one producer
session, so a resend after that (or after a relay restart) can write an event twice:
consumers drop repeats by the `event-id` header. When a send fails, a later event of the
same object in the same batch is not sent (it would overtake); one whose acknowledgement
was already in flight is delivered and, since the log resumes at the failed event, sent
again after it. Record too large, invalid topic and topic authorisation errors are
permanent (dead letter); everything else is retried.

Verified against librdkafka's mock cluster (tests/support/kafka_mock.py), not a real Kafka
broker: none can be installed on the machines the tests run on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import codec as kafka_codec
from aiokafka import errors as kafka_errors

from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Result, Retryable, exc_text
from relay.sinks.formats import render
from relay.sinks.template import render_template, validate_template
from relay.sinks.tls import client_context

log = logging.getLogger("relay.sinks.kafka")

TYPE = "kafka"

_CODEC_AVAILABLE = {
    "none": lambda: True,
    "gzip": kafka_codec.has_gzip,
    "snappy": kafka_codec.has_snappy,
    "lz4": kafka_codec.has_lz4,
    "zstd": kafka_codec.has_zstd,
}
CODECS = tuple(_CODEC_AVAILABLE)
AVAILABLE_CODECS = tuple(name for name, available in _CODEC_AVAILABLE.items() if available())
_SASL = {
    "plain": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-512": "SCRAM-SHA-512",
    "sha256": "SCRAM-SHA-256",  # MinIO's spellings
    "sha512": "SCRAM-SHA-512",
}

OPTIONS = (
    Option(
        "brokers", "list", (), "Bootstrap brokers, `host:port`, comma-separated.", required=True
    ),
    Option(
        "topic",
        "str",
        "",
        "Topic; may hold `{bucket}`, `{event}` and `{source}`, filled per event. "
        "Characters Kafka does not allow in a filled-in value become `_`.",
        required=True,
    ),
    Option(
        "acks",
        "choice",
        "all",
        "`all` (= `-1`, with the idempotent producer), `1` or `0` (both turn idempotence "
        "off: a retried request may then write a record twice).",
        choices=("all", "-1", "1", "0"),
    ),
    Option(
        "compression",
        "choice",
        "none",
        "`none` or `gzip`; `snappy`, `lz4` and `zstd` need the `cramjam` package "
        f"(available here: {', '.join(AVAILABLE_CODECS)}). MinIO: "
        "PRODUCER_COMPRESSION_CODEC.",
        choices=CODECS,
        aliases=("PRODUCER_COMPRESSION_CODEC",),
    ),
    Option("tls_enable", "bool", False, "Connect with TLS (MinIO: TLS).", aliases=("TLS",)),
    Option("tls_ca", "str", "", "PEM CA bundle that signs the brokers' certificates."),
    Option(
        "tls_client_cert",
        "str",
        "",
        "PEM client certificate for mutual TLS (MinIO: CLIENT_TLS_CERT).",
        aliases=("CLIENT_TLS_CERT",),
    ),
    Option(
        "tls_client_key",
        "str",
        "",
        "PEM key of the client certificate (MinIO: CLIENT_TLS_KEY).",
        aliases=("CLIENT_TLS_KEY",),
    ),
    Option("tls_skip_verify", "bool", False, "Do not verify the brokers' certificates."),
    Option(
        "sasl_enable",
        "bool",
        False,
        "Authenticate with SASL; on by itself when SASL_USERNAME is set (as in RustFS). "
        "MinIO: SASL.",
        aliases=("SASL",),
    ),
    Option(
        "sasl_mechanism",
        "choice",
        "plain",
        "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (MinIO's `plain`/`sha256`/`sha512` too).",
        choices=tuple(_SASL),
    ),
    Option("sasl_username", "str", "", "SASL user."),
    Option("sasl_password", "str", "", "SASL password.", secret=True),
    Option("version", "str", "", "MinIO's protocol version key: accepted, ignored (negotiated)."),
)

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


def _quiet_client_logs() -> None:
    """aiokafka logs a warning or an error per reconnect attempt and per retried request:
    many lines a second while a broker is down. The sink reports what matters itself (the
    dispatcher marks the sink down with the error, the sink logs a producer it abandons),
    so aiokafka's own lines are kept only when debugging."""
    client = logging.getLogger("aiokafka")
    if client.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        client.setLevel(logging.CRITICAL)


class KafkaSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.brokers: tuple[str, ...] = spec["brokers"]
        if not self.brokers:
            raise ConfigError(f"{spec.variable('brokers')}: required for the sink {spec.name}")
        self.topic: str = spec["topic"]
        validate_template(self.topic, spec.variable("topic"))
        _check_topic_template(self.topic, spec.variable("topic"))
        self.format: str = spec["format"]
        self.timeout: float = spec["timeout"]
        acks = spec["acks"]
        self.idempotent = acks in ("all", "-1")
        self.acks: int | str = "all" if self.idempotent else int(acks)
        self.compression = _compression(spec)
        self.security_protocol, self.ssl_context = _tls(spec)
        self.sasl = _sasl(spec)
        if self.sasl:
            self.security_protocol = "SASL_SSL" if self.ssl_context else "SASL_PLAINTEXT"
        self._producer: AIOKafkaProducer | None = None
        self._disposals: set[asyncio.Task[None]] = set()
        self.builds = 0  # producers built so far, started or not (the first one included)
        self.abandoned = 0  # producers given up on (timeouts, session errors)
        _quiet_client_logs()

    # -- producer lifecycle --------------------------------------------------------------------

    def _new_producer(self) -> AIOKafkaProducer:
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.brokers),
            "client_id": f"s3-notify-relay.{self.name}",
            "acks": self.acks,
            "enable_idempotence": self.idempotent,
            "compression_type": self.compression,
            "request_timeout_ms": max(1000, int(self.timeout * 1000)),
            "retry_backoff_ms": 200,
            "linger_ms": 0,  # a batch is handed over at once; nothing to wait for
            "max_batch_size": MAX_BATCH_BYTES,
            "max_request_size": MAX_REQUEST_BYTES,
            "security_protocol": self.security_protocol,
            "ssl_context": self.ssl_context,
        }
        options.update(self.sasl)
        return AIOKafkaProducer(**options)

    async def _ready(self) -> AIOKafkaProducer:
        producer = self._producer
        if producer is not None:
            # aiokafka has no public "is alive": a sender task that ended (a fatal error such
            # as OutOfOrderSequenceNumber) leaves a producer that accepts but never sends.
            task = getattr(getattr(producer, "_sender", None), "sender_task", None)
            if task is not None and task.done():
                error = None if task.cancelled() else task.exception()
                self._abandon(f"its sender stopped ({exc_text(error) or 'cancelled'})")
                producer = None
        if producer is None:
            producer = self._new_producer()
            self.builds += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await producer.start()
            except TimeoutError:
                self._dispose_later(producer)
                raise Retryable(
                    f"no answer from {','.join(self.brokers)} within {self.timeout:g}s"
                ) from None
            except Exception as exc:  # connection refused, TLS, SASL, DNS, ...
                self._dispose_later(producer)
                raise Retryable(
                    f"cannot connect to {','.join(self.brokers)}: {_describe(exc)}"
                ) from None
            self._producer = producer
        return producer

    def _abandon(self, reason: str) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self.abandoned += 1
        log.warning(
            "kafka producer abandoned; the next batch builds a new one",
            extra={"sink": self.name, "reason": reason},
        )
        self._dispose_later(producer)

    def _dispose_later(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.create_task(self._dispose(producer))
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)

    async def _dispose(self, producer: AIOKafkaProducer) -> None:
        """Close a producer that is given up on, bounded by the timeout, without flushing:
        what it still holds was reported as not delivered and stays in the log, so sending
        it now would only add duplicates, and `stop()` would wait for it forever while the
        brokers are down (aiokafka#1101; with idempotence its batches never expire).
        aiokafka has no public "close without flushing": stop its sender task, then close
        its connections."""
        sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
        try:
            if sender is not None and not sender.done():
                sender.cancel()
                await asyncio.wait([sender], timeout=self.timeout)
            if hasattr(producer, "_closed"):
                producer._closed = True  # stop() would flush; this one is only disconnected
                await asyncio.wait_for(producer.client.close(), self.timeout)
            else:  # another aiokafka: fall back to its public, bounded stop()
                await asyncio.wait_for(producer.stop(), self.timeout)
        except Exception as exc:
            log.debug(
                "abandoned kafka producer did not close cleanly",
                extra={"sink": self.name, "error": _describe(exc)},
            )

    # -- Sink ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._ready()

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        producer = await self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        results: list[Result] = [None] * len(batch)
        sent: list[tuple[int, asyncio.Future[Any]]] = []
        failed_objects: dict[tuple[str, str], str] = {}
        session_error: str | None = None
        next_index = 0
        try:
            async with asyncio.timeout_at(deadline):
                for index, entry in enumerate(batch):
                    next_index = index
                    event = entry.event
                    lane = (event.bucket, event.key)
                    if lane in failed_objects:
                        results[index] = Retryable(
                            "not sent: an earlier event of this object failed "
                            f"({failed_objects[lane]})"
                        )
                        continue
                    try:
                        future = await producer.send(
                            self._topic(entry),
                            render(entry, self.format),
                            key=f"{event.bucket}/{event.key}".encode("utf-8", "surrogatepass"),
                            headers=[
                                ("event-name", event.event_name.encode()),
                                ("event-id", event.event_id.encode()),
                            ],
                        )
                    except Exception as exc:
                        result = results[index] = _classify(exc)
                        if isinstance(result, Retryable):  # a dead letter does not hold the rest
                            failed_objects[lane] = exc_text(result)
                        if isinstance(exc, SESSION_ERRORS):
                            session_error = _describe(exc)
                        continue
                    sent.append((index, future))
                next_index = len(batch)
        except TimeoutError:
            # Stuck handing events over (metadata or buffer space): the rest is retried.
            for index in range(next_index, len(batch)):
                results[index] = Retryable(f"not handed to Kafka within {self.timeout:g}s")
            session_error = session_error or f"no progress within {self.timeout:g}s"
        futures = [future for _, future in sent]
        if futures:
            await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        late = 0
        for index, future in sent:
            if not future.done():
                future.add_done_callback(_consume)  # resolved (or not) after we gave up
                late += 1
                results[index] = Retryable(f"no acknowledgement within {self.timeout:g}s")
                continue
            error = future.exception()
            if error is not None:
                results[index] = _classify(error)
                if isinstance(error, SESSION_ERRORS):
                    session_error = _describe(error)
        if late:
            session_error = f"{late} acknowledgement(s) missing after {self.timeout:g}s"
        if session_error is not None:
            self._abandon(session_error)
        return results

    def _topic(self, entry: LogEntry) -> str:
        topic = render_template(self.topic, entry.event)
        if topic is not self.topic:  # a template: clean what the event filled in
            topic = _TOPIC_CHARS.sub("_", topic)
            if len(topic) > MAX_TOPIC_LENGTH or topic in (".", ".."):
                raise Permanent(f"topic {topic[:60]!r}… is not a valid Kafka topic name")
        return topic

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:  # nothing is pending between batches: a clean stop is quick
                await asyncio.wait_for(producer.stop(), self.timeout)
            except Exception:
                await self._dispose(producer)
        if self._disposals:
            await asyncio.wait(set(self._disposals), timeout=self.timeout)

    async def health(self) -> Health:
        # What MinIO checks: can a TCP connection be opened to one of the brokers.
        errors = []
        for broker in self.brokers:
            host, _, port = broker.rpartition(":")
            host, port_number = (host, int(port)) if port.isdigit() else (broker, 9092)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host.strip("[]"), port_number), timeout=5
                )
            except (OSError, TimeoutError) as exc:
                errors.append(f"{broker}: {_describe(exc)}")
                continue
            writer.close()
            return Health(True, f"{broker} accepts connections")
        return Health(False, "no broker reachable: " + "; ".join(errors))


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _classify(exc: BaseException) -> Retryable | Permanent:
    if isinstance(exc, Retryable | Permanent):
        return exc
    text = _describe(exc)
    if isinstance(exc, PERMANENT_ERRORS):
        return Permanent(text)
    if isinstance(exc, kafka_errors.KafkaTimeoutError):
        return Retryable(f"timed out: {text}")
    return Retryable(text)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name


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


def _compression(spec: SinkSpec) -> str | None:
    codec = spec["compression"]
    key = "compression"
    if codec not in AVAILABLE_CODECS:
        raise ConfigError(
            f"{spec.variable(key)}: {codec} compression needs the `cramjam` package, which "
            f"is not installed in this relay (available: {', '.join(AVAILABLE_CODECS)})"
        )
    return None if codec == "none" else codec


def _tls(spec: SinkSpec) -> tuple[str, ssl.SSLContext | None]:
    if not spec["tls_enable"]:
        if (
            spec["tls_ca"] or spec["tls_client_cert"] or spec["tls_client_key"]
            or spec["tls_skip_verify"]
        ):  # fmt: skip
            raise ConfigError(
                f"{spec.variable('tls_enable')}: TLS files or TLS_SKIP_VERIFY are set for the "
                f"sink {spec.name} but TLS is off; set it to on (or remove them)"
            )
        return "PLAINTEXT", None
    return "SSL", client_context(spec, skip_verify=spec["tls_skip_verify"])


def _sasl(spec: SinkSpec) -> dict[str, Any]:
    username, password = spec["sasl_username"], spec["sasl_password"]
    if not (spec["sasl_enable"] or username):
        return {}
    if not username or not password:
        missing = "sasl_username" if not username else "sasl_password"
        raise ConfigError(f"{spec.variable(missing)}: required when SASL is on ({spec.name})")
    return {
        "sasl_mechanism": _SASL[spec["sasl_mechanism"]],
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }


def create(spec: SinkSpec) -> KafkaSink:
    return KafkaSink(spec)
