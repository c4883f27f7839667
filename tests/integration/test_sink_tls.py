"""TLS of the PostgreSQL, MariaDB, AMQP, Kafka, NATS object store and audit bucket sinks,
each against a real server of its own: the server's certificate verified against a private
CA, a client certificate where the server asks for one, a wrong CA refused with an error
that says so (and no password), and a client certificate replaced on disk picked up by the
running sink, without a restart. (The webhook's, Redis's, MQTT's and the NATS sink's TLS are
tested in their own files, ingest's and the webhook's rotation in tests/e2e.)

The shared servers cannot be given TLS, so each test starts a private instance with its
certificate, requiring client certificates signed by the CA (tests/support/certs.py). The
rotation is seen from the server's side, which names the certificate of each connection (or,
for MariaDB, lets in only the new one), and the relay's connections are cut there so that
the sink reconnects: connections already open keep the certificate they were made with, new
ones use the new files. Two servers stand in partly: Tansu serves no TLS, so socat's OpenSSL
listener is the TLS server in front of it; Ceph RGW asks for no client certificate, so for
the audit bucket the CA bundle is what is replaced.

Where the files are read: a sink whose client takes an ssl.SSLContext gets one from
relay/sinks/tls.py, which relay/tls.py reloads in place when the files change (every two
seconds, and at once on SIGHUP; a test calls `relay.tls.check()`, what both run). libpq
(PostgreSQL) reads the files itself for every new connection; obstore (the audit bucket)
takes the CA bundle's bytes, and a new client is made when they change (CaBundle).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncmy
import nats
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer

from relay import sinks, tls
from relay.config import ConfigError, load_sinks
from relay.sinks import audit_bucket
from relay.sinks.base import Health
from relay.sinks.tls import CaBundle
from tests.support.ceph import INSTALL_HINT as CEPH_HINT
from tests.support.ceph import S3, Ceph, CephError, missing_binaries, start_ceph
from tests.support.certs import Pki, make_pki
from tests.support.databases import private_mariadb, private_postgres
from tests.support.pipeline import minio_event, pipeline
from tests.support.rabbit import PrivateRabbit
from tests.support.servers import nats_server
from tests.support.tansu import tansu_tls
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SECRET = "tls-test-pa55word"  # a password in each sink's configuration: never in an error


@pytest.fixture
async def pki(tmp_path: Path) -> Pki:
    return await asyncio.to_thread(make_pki, tmp_path / "pki")


def files(pki: Pki, ca: Path | None = None) -> dict[str, str]:
    """The TLS keys most sinks share: the CA and the client certificate's files."""
    return {"TLS_CA": str(ca or pki.ca.cert), "TLS_CLIENT_CERT": str(pki.cert),
            "TLS_CLIENT_KEY": str(pki.key)}  # fmt: skip


def sink_env(kind: str, **keys: str) -> dict[str, str]:
    prefix = f"RUSTFS_NOTIFY_{kind.upper()}_"
    return {f"{prefix}ENABLE_T": "on", f"{prefix}BACKOFF_MAX_T": "300ms",
            **{f"{prefix}{k}_T": v for k, v in keys.items()}}  # fmt: skip


async def rotated() -> None:
    """What the relay's watcher does every two seconds, and SIGHUP at once."""
    await asyncio.to_thread(tls.check)


async def refused(
    tmp_path: Path, config: dict[str, str], caplog: pytest.LogCaptureFixture
) -> tuple[str, Health]:
    """Run the sink with an event to send until the dispatcher marks it down: the error it
    logs (through the relay's one redaction), and what the sink's probe says."""
    caplog.set_level(logging.INFO, logger="relay")
    caplog.clear()
    async with asyncio.timeout(60), pipeline(tmp_path / uuid.uuid4().hex, config) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await eventually(lambda: pipe.dispatcher.up is False, timeout=30)
        health = await pipe.sink.health()
        shown = Health(health.ok, pipe.dispatcher.redact(health.detail))  # as `relay check`
    down = [r.error for r in caplog.records if r.getMessage() == "sink down"]  # type: ignore[attr-defined]
    assert down, "the sink was not reported down"
    return down[-1], shown


def assert_says_untrusted(error: str, health: Health) -> None:
    """The server's certificate was refused: the relay's error and its probe say so."""
    for text in (error, health.detail):
        assert "certificate verify failed" in text, text
        assert SECRET not in text
    assert not health.ok


def assert_says_refused(error: str, health: Health) -> None:
    """The server refused the relay's TLS (no client certificate): both say so."""
    for text in (error, health.detail):
        assert "certificate required" in text.lower(), text
        assert SECRET not in text
    assert not health.ok


# -- PostgreSQL ---------------------------------------------------------------------------------


async def pg_sql(dsn: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchall() if cursor.description else []


async def pg_clients(dsn: str) -> set[str]:
    """The client certificate of each connection of the relay, as the server saw it."""
    rows = await pg_sql(dsn, "SELECT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a "
                             "USING (pid) WHERE a.application_name = 's3-notify-relay'")  # fmt: skip
    return {row[0] for row in rows}


def pg_env(port: int, **keys: str) -> dict[str, str]:
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={SECRET}"
    return sink_env("postgres", DSN_STRING=dsn, TABLE="relay_tls", FORMAT="access", **keys)


async def test_postgres_verifies_the_server_and_picks_up_a_rotated_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    with private_postgres(tls=pki.server_tls) as server:
        config = pg_env(server.port, **files(pki))
        async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()
            assert await pg_clients(server.admin_dsn) == {"/CN=old"}

            pki.rotate()
            await rotated()
            # the server cuts the relay's connections: the next one is made with the new files
            await pg_sql(server.admin_dsn, "SELECT pg_terminate_backend(pid) FROM "
                         "pg_stat_activity WHERE application_name = 's3-notify-relay'")  # fmt: skip
            await pipe.append([minio_event("b", "k", 2)])
            await pipe.settled()
            assert await pg_clients(server.admin_dsn) == {"/CN=new"}
            assert await pipe.dead_letters() == []
        rows = await pg_sql(server.admin_dsn, "SELECT value->'Records'->0->'s3'->'object'->>"
                            "'sequencer' FROM relay_tls")  # fmt: skip
        assert sorted(r[0] for r in rows) == [f"{1:016X}", f"{2:016X}"]


async def test_postgres_refuses_a_server_its_ca_did_not_sign(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with private_postgres(tls=pki.server_tls) as server:
        error, health = await refused(
            tmp_path, pg_env(server.port, **files(pki, ca=pki.wrong.cert)), caplog
        )
        assert_says_untrusted(error, health)
        # the server refuses a relay without a client certificate
        error, health = await refused(
            tmp_path, pg_env(server.port, TLS_CA=str(pki.ca.cert)), caplog
        )
        assert "certificate" in error and SECRET not in error and not health.ok
        assert await pg_sql(server.admin_dsn, "SELECT to_regclass('relay_tls')") == [(None,)]


# -- MariaDB ------------------------------------------------------------------------------------


async def my_sql(args: dict[str, Any], statement: str) -> list[tuple[Any, ...]]:
    conn = await asyncmy.connect(**args)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement)
            return list(await cursor.fetchall() or [])
    finally:
        conn.close()


def my_env(port: int, **keys: str) -> dict[str, str]:
    dsn = f"relay:{SECRET}@tcp(127.0.0.1:{port})/test"
    return sink_env("mysql", DSN_STRING=dsn, TABLE="relay_tls", FORMAT="access", **keys)


async def test_mariadb_verifies_the_server_and_picks_up_a_rotated_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    with private_mariadb(tls=pki.server_tls) as server:
        admin = server.admin_args
        # the relay's user may only log in with the client certificate CN=old
        for statement in (f"CREATE USER 'relay'@'%' IDENTIFIED BY '{SECRET}' REQUIRE SUBJECT "
                          "'/CN=old'", "GRANT ALL ON test.* TO 'relay'@'%'"):  # fmt: skip
            await my_sql(admin, statement)
        async with (
            asyncio.timeout(60),
            pipeline(tmp_path, my_env(server.port, **files(pki))) as pipe,
        ):
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()

            pki.rotate()
            await rotated()
            # from now on only CN=new may log in; the relay's sessions are cut
            await my_sql(admin, "ALTER USER 'relay'@'%' REQUIRE SUBJECT '/CN=new'")
            for (session,) in await my_sql(
                admin, "SELECT id FROM information_schema.processlist WHERE user = 'relay'"
            ):
                await my_sql(admin, f"KILL {session}")
            await pipe.append([minio_event("b", "k", 2)])
            await pipe.settled()
            assert await pipe.dead_letters() == []
        rows = await my_sql(admin, "SELECT JSON_VALUE(event_data, '$.Records[0].s3.object."
                            "sequencer') FROM test.relay_tls")  # fmt: skip
        assert sorted(r[0] for r in rows) == [f"{1:016X}", f"{2:016X}"]


async def test_mariadb_refuses_a_server_its_ca_did_not_sign(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with private_mariadb(tls=pki.server_tls) as server:
        await my_sql(server.admin_args,
                     f"CREATE USER 'relay'@'%' IDENTIFIED BY '{SECRET}' REQUIRE X509")  # fmt: skip
        await my_sql(server.admin_args, "GRANT ALL ON test.* TO 'relay'@'%'")
        error, health = await refused(
            tmp_path, my_env(server.port, **files(pki, ca=pki.wrong.cert)), caplog
        )
        assert_says_untrusted(error, health)
        # the server refuses a relay without a client certificate
        error, health = await refused(
            tmp_path, my_env(server.port, TLS_CA=str(pki.ca.cert)), caplog
        )
        assert "Access denied" in error and SECRET not in error and not health.ok


# -- RabbitMQ (amqps) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def rabbit(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsRabbit]:
    """One RabbitMQ node for the module (it takes seconds to start), amqps on its own port,
    and a user `relay` with a password."""
    directory = tmp_path_factory.mktemp("rabbit-tls")
    pki = await asyncio.to_thread(make_pki, directory / "pki")
    node = await PrivateRabbit(directory / "node", tls=pki.server_tls).start()
    try:
        await node.ctl("add_user", "relay", SECRET)
        await node.ctl("set_permissions", "-p", "/", "relay", ".*", ".*", ".*")
        yield TlsRabbit(node, pki)
    finally:
        await node.stop()


@dataclass
class TlsRabbit:
    node: PrivateRabbit
    pki: Pki

    async def clients(self) -> set[str]:
        """The client certificate of each connection of the relay's user."""
        out = await self.node.ctl("list_connections", "user", "peer_cert_subject",
                                  "--formatter", "json", "--quiet")  # fmt: skip
        return {c["peer_cert_subject"] for c in json.loads(out) if c["user"] == "relay"}

    async def queue(self, exchange: str) -> None:
        """A durable queue named after the exchange, bound to it for bucket `b`."""
        connection = await aio_pika.connect(self.node.url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(exchange, "direct", durable=True)
            queue = await channel.declare_queue(exchange, durable=True)
            await queue.bind(exchange, "s3.b")

    async def read(self, exchange: str, count: int) -> list[str]:
        """The keys and sequencers of the first `count` messages of the queue."""
        connection = await aio_pika.connect(self.node.url)
        got: list[str] = []
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(exchange)
            while len(got) < count:
                message = await queue.get(timeout=10, fail=False)
                if message is None:
                    await asyncio.sleep(0.1)
                    continue
                await message.ack()
                record = json.loads(message.body)["Records"][0]["s3"]["object"]
                got.append(record["sequencer"])
        return got


def amqp_env(url: str, exchange: str, **keys: str) -> dict[str, str]:
    return sink_env("amqp", URL=url, EXCHANGE=exchange, ROUTING_KEY="s3.{bucket}", **keys)


async def test_amqps_verifies_the_broker_and_picks_up_a_rotated_client_certificate(
    tmp_path: Path, rabbit: TlsRabbit
) -> None:
    exchange = f"relay-tls-{uuid.uuid4().hex[:8]}"
    await rabbit.queue(exchange)
    config = amqp_env(rabbit.node.tls_url("relay", SECRET), exchange, **files(rabbit.pki))
    async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await pipe.settled()
        assert await rabbit.clients() == {"CN=old"}

        rabbit.pki.rotate()
        await rotated()
        await rabbit.node.ctl("close_all_connections", "certificate rotated")
        await pipe.append([minio_event("b", "k", 2)])
        await pipe.settled()
        assert await rabbit.clients() == {"CN=new"}
        assert await pipe.dead_letters() == []
    assert await rabbit.read(exchange, 2) == [f"{1:016X}", f"{2:016X}"]


async def test_amqps_refuses_a_broker_its_ca_did_not_sign(
    tmp_path: Path, rabbit: TlsRabbit, caplog: pytest.LogCaptureFixture
) -> None:
    pki = rabbit.pki
    url = rabbit.node.tls_url("relay", SECRET)
    error, health = await refused(
        tmp_path, amqp_env(url, "relay-tls", **files(pki, ca=pki.wrong.cert)), caplog
    )
    assert_says_untrusted(error, health)
    # the broker refuses a relay without a client certificate
    error, health = await refused(tmp_path, amqp_env(url, "relay-tls", TLS_CA=str(pki.ca.cert)),
                                  caplog)  # fmt: skip
    assert_says_refused(error, health)


# -- Kafka (Tansu behind a TLS front) -----------------------------------------------------------


def reader_context(pki: Pki) -> ssl.SSLContext:
    """The test's own client: verifies the server, presents a certificate of its own."""
    reader = pki.ca.issue("reader")
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(reader.cert), str(reader.key))
    return context


async def kafka_read(bootstrap: str, topic: str, context: ssl.SSLContext, count: int) -> list[str]:
    """The sequencers of the first `count` records of the one-partition `topic`."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        security_protocol="SSL", ssl_context=context, fetch_max_wait_ms=200,
    )  # fmt: skip
    await consumer.start()
    got: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        value = json.loads(record.value)
                        got.append(value["Records"][0]["s3"]["object"]["sequencer"])
    finally:
        await consumer.stop()
    return got


def kafka_env(bootstrap: str, topic: str, **keys: str) -> dict[str, str]:
    # ACKS=1: Tansu's memory engine grants no producer ids (tests/support/tansu.py)
    return sink_env("kafka", BROKERS=bootstrap, TOPIC=topic, ACKS="1", TLS_ENABLE="on", **keys)


async def test_kafka_verifies_the_broker_and_picks_up_a_rotated_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    """Tansu cannot serve TLS (tests/support/tansu.py): the broker is Tansu, the TLS server
    socat's OpenSSL in front of it."""
    reader = await asyncio.to_thread(reader_context, pki)
    with tansu_tls(tmp_path, pki.server_tls) as (broker, front):
        topic = f"relay-tls-{uuid.uuid4().hex[:8]}"
        await broker.create_topics(topic, partitions=1, ssl_context=reader)
        config = kafka_env(broker.bootstrap, topic, **files(pki))
        async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()
            relay = [c for c in front.clients() if c != "CN = reader"]
            assert relay and set(relay) == {"CN = old"}

            pki.rotate()
            await rotated()
            before = len(front.clients())
            await asyncio.to_thread(front.stop)  # every connection cut
            await asyncio.to_thread(front.start)
            await pipe.append([minio_event("b", "k", 2)])
            await pipe.settled()
            relay = [c for c in front.clients()[before:] if c != "CN = reader"]
            assert relay and set(relay) == {"CN = new"}
            assert await pipe.dead_letters() == []
        assert await kafka_read(broker.bootstrap, topic, reader, 2) == [f"{1:016X}", f"{2:016X}"]


async def test_kafka_refuses_a_broker_its_ca_did_not_sign(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with tansu_tls(tmp_path, pki.server_tls) as (broker, front):
        config = kafka_env(broker.bootstrap, "relay-tls", **files(pki, ca=pki.wrong.cert))
        error, health = await refused(tmp_path, config, caplog)
        assert_says_untrusted(error, health)
        # the front refuses a relay without a client certificate
        error, health = await refused(
            tmp_path, kafka_env(broker.bootstrap, "relay-tls", TLS_CA=str(pki.ca.cert)), caplog
        )
        assert_says_refused(error, health)
        assert front.clients() == []


# -- NATS object store --------------------------------------------------------------------------


def objects_env(port: int, bucket: str, **keys: str) -> dict[str, str]:
    return sink_env("nats_objects", ADDRESS=f"tls://127.0.0.1:{port}", BUCKET=bucket,
                    MAX_OBJECT_AGE="0", TIMEOUT="2s", TOKEN=SECRET, **keys)  # fmt: skip


async def audit_lines(port: int, bucket: str, context: ssl.SSLContext) -> list[str]:
    """The sequencers of the events in every object of the store, in object name order."""
    client = await nats.connect(f"tls://127.0.0.1:{port}", tls=context, token=SECRET,
                                allow_reconnect=False)  # fmt: skip
    try:
        store = await client.jetstream().object_store(bucket)
        names = sorted(i.name for i in await store.list(ignore_deletes=True))
        lines = []
        for name in names:
            body = (await store.get(name)).data or b""
            lines += [json.loads(line)["record"]["s3"]["object"]["sequencer"]
                      for line in body.splitlines()]  # fmt: skip
        return lines
    finally:
        await client.close()


async def test_nats_objects_verify_the_server_and_pick_up_a_rotated_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    reader = await asyncio.to_thread(reader_context, pki)
    with nats_server(tmp_path, tls=pki.server_tls, token=SECRET) as server:
        config = objects_env(server.port, "relay-tls", **files(pki))
        name = "s3-notify-relay nats_objects:t"
        async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", "k", 1)])
            await pipe.settled()
            assert await asyncio.to_thread(server.client_certificates, name) == {"CN=old"}

            pki.rotate()
            await rotated()
            # the server restarts (JetStream keeps its store on disk): the sink reconnects
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            await pipe.append([minio_event("b", "k", 2)])
            await pipe.settled()
            assert await asyncio.to_thread(server.client_certificates, name) == {"CN=new"}
            assert await pipe.dead_letters() == []
        assert await audit_lines(server.port, "relay-tls", reader) == [f"{1:016X}", f"{2:016X}"]


async def test_nats_objects_refuse_a_server_its_ca_did_not_sign(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with nats_server(tmp_path, tls=pki.server_tls, token=SECRET) as server:
        config = objects_env(server.port, "relay-tls", **files(pki, ca=pki.wrong.cert))
        error, health = await refused(tmp_path, config, caplog)
        assert_says_untrusted(error, health)
        # the server refuses a relay without a client certificate
        error, health = await refused(
            tmp_path, objects_env(server.port, "relay-tls", TLS_CA=str(pki.ca.cert)), caplog
        )
        assert SECRET not in error and not health.ok


# -- the audit bucket (Ceph RGW over HTTPS) -----------------------------------------------------


@pytest.fixture(scope="module")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ceph, Pki]]:
    """A one-node Ceph whose radosgw serves HTTPS with a private CA's certificate (~15 s to
    start, once for the module)."""
    missing = missing_binaries()
    if missing:  # a missing installation fails the run, it never skips
        pytest.fail(f"Ceph is not installed ({', '.join(missing)} missing): {CEPH_HINT}",
                    pytrace=False)  # fmt: skip
    directory = tmp_path_factory.mktemp("ceph-tls")
    pki = make_pki(directory / "pki")
    try:
        cluster = start_ceph(directory / "ceph", tls=pki.server_tls)
    except CephError as exc:
        pytest.fail(f"could not start the Ceph test cluster: {exc}", pytrace=False)
    try:
        yield cluster, pki
    finally:
        cluster.stop()


def put_in_place(source: Path, target: Path) -> None:
    """Replace `target` with `source`'s bytes as cert-manager does (write aside, rename)."""
    temporary = target.with_suffix(".new")
    temporary.write_bytes(source.read_bytes())
    temporary.replace(target)


async def test_audit_bucket_verifies_rgw_and_picks_up_a_replaced_ca_bundle(
    tmp_path: Path, rgw: tuple[Ceph, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    """RGW asks for no client certificate (and obstore could not present one): what rotates
    here is the CA bundle the relay trusts. It starts with the wrong one: refused, with an
    error that says so; the right one put in its place is picked up, without a restart."""
    ceph, pki = rgw
    bucket = f"relay-tls-{uuid.uuid4().hex[:8]}"
    async with S3(ceph) as s3:
        await s3.create_bucket(bucket)
    trust = tmp_path / "trust.pem"
    put_in_place(pki.wrong.cert, trust)
    config = sink_env("audit_bucket", ENDPOINT=ceph.tls_endpoint, BUCKET=bucket,
                      ACCESS_KEY=ceph.access_key, SECRET_KEY=ceph.secret_key, TLS_CA=str(trust),
                      MAX_OBJECT_AGE="0")  # fmt: skip
    caplog.set_level(logging.INFO, logger="relay")
    async with asyncio.timeout(90), pipeline(tmp_path, config) as pipe:
        await pipe.append([minio_event("photos", "k", 1)])
        await eventually(lambda: pipe.dispatcher.up is False, timeout=30)
        health = await pipe.sink.health()
        down = [r.error for r in caplog.records if r.getMessage() == "sink down"]  # type: ignore[attr-defined]
        shown = [pipe.dispatcher.redact(health.detail), *down]
        for text in shown:
            assert "certificate was refused (UnknownIssuer" in text, text
            assert ceph.secret_key not in text
        assert not health.ok

        put_in_place(pki.ca.cert, trust)  # the operator fixes the bundle on disk
        await rotated()
        await pipe.settled(timeout=60)
        assert await pipe.dead_letters() == []
        assert (await pipe.sink.health()).ok
    async with S3(ceph) as s3:
        (name,) = await s3.list_keys(bucket)
        body = (await s3.request("GET", bucket, name)).body
    (line,) = body.splitlines()
    assert json.loads(line)["record"]["s3"]["object"]["sequencer"] == f"{1:016X}"


def test_a_bundle_caught_half_written_leaves_the_last_good_one_in_use(pki: Pki) -> None:
    trust = pki.cert.parent / "bundle.pem"
    put_in_place(pki.ca.cert, trust)
    (spec,), _ = load_sinks(sink_env("audit_bucket", BUCKET="b", TLS_CA=str(trust)),
                            sinks.declared_options())  # fmt: skip
    bundle = CaBundle(spec, spec.typed(audit_bucket.Config))
    assert bundle.current == (0, pki.ca.cert.read_bytes())
    for half_written in (b"", pki.wrong.cert.read_bytes()[:100]):
        trust.write_bytes(half_written)
        tls.check()
        assert bundle.current == (0, pki.ca.cert.read_bytes())
    put_in_place(pki.wrong.cert, trust)
    tls.check()
    assert bundle.current == (1, pki.wrong.cert.read_bytes())
    trust.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS_CA_T: cannot load TLS files"):
        CaBundle(spec, spec.typed(audit_bucket.Config))
