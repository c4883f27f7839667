"""The sinks the benchmarks deliver to, on the machine's loopback servers: for each, what to
create before the relay starts (a JetStream stream, an AMQP exchange and queue), the relay's
environment for one sink instance, and what to remove afterwards (stream, key, exchange and
queue, table). Every name carries a random tag, so runs never share state.

Servers (see reference/infra.md): PostgreSQL 5432 db `test`, MariaDB 3306 root db `test`,
Redis 6379, RabbitMQ 5672 guest/guest, NATS+JetStream 4222; the webhook receiver runs in the
bench process (bench/receiver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from bench.receiver import CountingReceiver

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
MYSQL_DSN = "root:@tcp(127.0.0.1:3306)/test"
REDIS_URL = "redis://127.0.0.1:6379"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"

ALL = ("webhook", "nats", "redis", "amqp", "postgres", "mysql")
OPTIONAL = ("audit_bucket",)  # Ceph RGW, started for the run (tests/support/ceph.py): --ceph

# The second figure of the drain table: the one obvious knob per sink. Sinks that write a
# batch in one round trip (Redis pipeline, one SQL transaction) take BATCH_SIZE; sinks that
# send one request per event and wait for each answer (webhook POST, JetStream PubAck, AMQP
# confirm) are bound by how many are in flight: CONCURRENCY, with a batch big enough to
# keep them busy.
KNOBS: dict[str, dict[str, str]] = {
    "webhook": {"BATCH_SIZE": "1000", "CONCURRENCY": "32"},
    "nats": {"BATCH_SIZE": "100"},  # JetStream: the batch is the window of PubAcks
    "amqp": {"BATCH_SIZE": "1000", "CONCURRENCY": "64"},
    "redis": {"BATCH_SIZE": "100"},  # the former default
    # postgres, mysql: BATCH_SIZE is 1000 by default already; no second figure
    # audit_bucket: BATCH_SIZE is 10 000 events per object already; no second figure
}

CEPH_MEMSTORE_BYTES = 6 * 1024**3  # room for a 1M-event drain (~1.3 GB of audit objects)

# What each sink is, as the drain table says it (defaults unless stated).
DESCRIPTION = {
    "webhook": "webhook → aiohttp receiver in the bench process",
    "nats": "NATS JetStream (file stream, PubAck per event, a batch in flight)",
    "redis": "Redis stream (MODE=stream, XADD pipelined)",
    "amqp": "RabbitMQ (confirms, persistent, mandatory)",
    "postgres": "PostgreSQL (FORMAT default: namespace)",
    "mysql": "MariaDB (FORMAT default for RUSTFS_: access)",
    "audit_bucket": "audit bucket on Ceph RGW 16 (memstore OSD)",
}


def unavailable(kind: str) -> str:
    """Why a sink cannot be benchmarked here ("" when it can)."""
    if kind != "audit_bucket":
        return ""
    from relay import sinks

    if kind not in sinks.registry():
        return "the audit_bucket sink is not registered (s3_notify_relay.sinks entry points)"
    from tests.support.ceph import missing_binaries

    missing = missing_binaries()
    return f"Ceph is not installed ({', '.join(missing)} missing)" if missing else ""


def knob_text(kind: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in KNOBS.get(kind, {}).items())


@dataclass
class Target:
    """One sink instance: `env` for the relay, `name` as the relay calls it."""

    kind: str
    ident: str  # upper-case id in the variables; the sink's name has it lower-cased
    tag: str
    extra: dict[str, str] = field(default_factory=dict)
    receiver: CountingReceiver | None = None
    stream: str = ""  # NATS
    subject: str = ""
    key: str = ""  # Redis
    exchange: str = ""  # AMQP
    table: str = ""  # SQL
    ceph: Any = None  # audit_bucket: the cluster started for this target
    bucket: str = ""
    _cleanup: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.ident.lower()}"

    def env(self) -> dict[str, str]:
        keys: dict[str, str] = {"ENABLE": "on"}
        if self.kind == "webhook":
            assert self.receiver is not None
            keys["ENDPOINT"] = self.receiver.url
        elif self.kind == "nats":
            keys.update(ADDRESS="127.0.0.1:4222", SUBJECT=self.subject, JETSTREAM_ENABLE="on",
                        JETSTREAM_STREAM_NAME=self.stream)  # fmt: skip
        elif self.kind == "redis":
            keys.update(URL=REDIS_URL, MODE="stream", KEY=self.key)
        elif self.kind == "amqp":
            keys.update(URL=AMQP_URL, EXCHANGE=self.exchange, ROUTING_KEY="events")
        elif self.kind == "postgres":
            keys.update(DSN_STRING=PG_DSN, TABLE=self.table)
        elif self.kind == "mysql":
            keys.update(DSN_STRING=MYSQL_DSN, TABLE=self.table)
        elif self.kind == "audit_bucket":
            keys.update(ENDPOINT=self.ceph.endpoint, ALLOW_HTTP="on", BUCKET=self.bucket,
                        ACCESS_KEY=self.ceph.access_key, SECRET_KEY=self.ceph.secret_key)  # fmt: skip
        keys.update(self.extra)
        kind = self.kind.upper()
        return {f"RUSTFS_NOTIFY_{kind}_{k}_{self.ident}": v for k, v in keys.items()}

    async def setup(self) -> Target:
        if self.kind == "webhook" and self.receiver is None:
            self.receiver = await CountingReceiver().start()
            self._cleanup.append(self.receiver.stop)
        elif self.kind == "nats":
            await self._nats_setup()
        elif self.kind == "redis":
            self.key = f"bench-{self.tag}"
            self._cleanup.append(self._redis_cleanup)
        elif self.kind == "amqp":
            await self._amqp_setup()
        elif self.kind in ("postgres", "mysql"):
            self.table = f"bench_drain_{self.tag}"
            self._cleanup.append(self._pg_cleanup if self.kind == "postgres" else self._my_cleanup)
        elif self.kind == "audit_bucket":
            await self._ceph_setup()
        return self

    async def cleanup(self) -> None:
        while self._cleanup:
            step = self._cleanup.pop()
            with contextlib.suppress(Exception):
                await step()

    async def delivered(self) -> int | None:
        """What the target itself holds (None where it keeps no count)."""
        if self.kind == "webhook" and self.receiver is not None:
            return self.receiver.count
        if self.kind == "nats":
            import nats

            nc = await nats.connect(NATS_URL, connect_timeout=5)
            try:
                return int((await nc.jetstream().stream_info(self.stream)).state.messages)
            finally:
                await nc.close()
        return None

    # -- NATS ---------------------------------------------------------------------------------

    async def _nats_setup(self) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        self.stream = f"BENCH_{self.tag}"
        self.subject = f"bench.{self.tag}.events"
        nc = await nats.connect(NATS_URL, connect_timeout=5)
        try:
            await nc.jetstream().add_stream(StreamConfig(
                name=self.stream, subjects=[self.subject], storage=StorageType.FILE))  # fmt: skip
        finally:
            await nc.close()
        self._cleanup.append(self._nats_cleanup)

    async def _nats_cleanup(self) -> None:
        import nats

        nc = await nats.connect(NATS_URL, connect_timeout=5)
        try:
            await nc.jetstream().delete_stream(self.stream)
        finally:
            await nc.close()

    # -- Redis --------------------------------------------------------------------------------

    async def _redis_cleanup(self) -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)
        try:
            await client.delete(self.key)
        finally:
            await client.aclose()

    # -- AMQP ---------------------------------------------------------------------------------

    async def _amqp_setup(self) -> None:
        import aio_pika

        self.exchange = f"bench-{self.tag}"
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.exchange, "direct")
            # Nobody consumes during the benchmark: the queue keeps the newest 10 000 messages
            # (drop-head), so a million events cannot run the broker into its memory alarm.
            queue = await channel.declare_queue(self.exchange, arguments={"x-max-length": 10_000})
            await queue.bind(exchange, "events")
        finally:
            await connection.close()
        self._cleanup.append(self._amqp_cleanup)

    async def _amqp_cleanup(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.queue_delete(self.exchange)
            await channel.exchange_delete(self.exchange)
        finally:
            await connection.close()

    # -- Ceph RGW (audit bucket) -------------------------------------------------------------

    async def _ceph_setup(self) -> None:
        import shutil
        import tempfile
        from pathlib import Path

        from tests.support.ceph import S3, start_ceph

        directory = Path(tempfile.mkdtemp(prefix="relay-bench-ceph-"))

        async def remove() -> None:
            if self.ceph is not None:
                await asyncio.to_thread(self.ceph.stop)
            shutil.rmtree(directory, ignore_errors=True)

        self._cleanup.append(remove)
        # one mon, one memstore OSD, radosgw: ~15 s on 2 cores; its data dies with it. The
        # OSD keeps objects in memory: 1 GiB (the tests' size) fills at ~775 000 events
        self.ceph = await asyncio.to_thread(start_ceph, directory, 120.0, CEPH_MEMSTORE_BYTES)
        self.bucket = f"bench-{self.tag}"
        async with S3(self.ceph) as s3:
            await s3.create_bucket(self.bucket)

    # -- SQL ----------------------------------------------------------------------------------

    async def _pg_cleanup(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            await conn.execute(f'DROP TABLE IF EXISTS "{self.table}"')

    async def _my_cleanup(self) -> None:
        import asyncmy

        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", db="test",
                                     autocommit=True)  # fmt: skip
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"DROP TABLE IF EXISTS `{self.table}`")
        finally:
            conn.close()


async def make(kind: str, tag: str, knob: bool = False,
               receiver: CountingReceiver | None = None) -> Target:  # fmt: skip
    """A target set up and ready; call `cleanup()` when done."""
    target = Target(kind, f"B{tag.upper()}", tag, dict(KNOBS.get(kind, {})) if knob else {},
                    receiver=receiver)  # fmt: skip
    try:
        return await target.setup()
    except Exception:
        await target.cleanup()
        raise


def down_webhook(ident: str = "DOWN") -> tuple[str, dict[str, str]]:
    """A webhook sink whose server is down (a closed loopback port): nothing drains."""
    from bench.common import free_port

    port = free_port()  # bound and released: nothing listens there
    env = {
        f"RUSTFS_NOTIFY_WEBHOOK_ENABLE_{ident}": "on",
        f"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_{ident}": f"http://127.0.0.1:{port}/down",
    }
    return f"webhook:{ident.lower()}", env
