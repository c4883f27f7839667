"""The MySQL sink against a real MariaDB 10.11 (the shared one on 3306, db `test`; a private
instance for outages), driven by the real dispatcher and log."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncmy
import pytest

from relay import sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.queue.log import LogEntry
from relay.sinks import redact
from relay.sinks.table import mysql
from relay.sinks.table.sink import TableSink
from tests.support.databases import private_mariadb
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

SHARED = "root:@tcp(127.0.0.1:3306)/test"
EVENT_TIME = datetime(2026, 3, 4, 10, 11, 12, 345000)  # tests.support.bodies, UTC

# MinIO's namespace DDL declares key_hash `STORED NOT NULL PRIMARY KEY`, which MariaDB
# refuses; a MariaDB user has the same table with the key as UNIQUE.
MINIO_NAMESPACE = (
    "CREATE TABLE {t} (key_name VARCHAR(3072) NOT NULL, key_hash CHAR(64) GENERATED ALWAYS AS "
    "(SHA2(key_name, 256)) STORED, value JSON, UNIQUE KEY (key_hash)) "
    "CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = Dynamic"
)
MINIO_ACCESS = (  # verbatim
    "CREATE TABLE {t} (event_time DATETIME NOT NULL, event_data JSON) ROW_FORMAT = Dynamic"
)
RUSTFS_ACCESS = (
    "CREATE TABLE {t} (event_id VARCHAR(255) NOT NULL PRIMARY KEY, event_time DATETIME(6) "
    "NOT NULL, event_data JSON NOT NULL)"
)
OWN_NAMESPACE = "CREATE TABLE {t} (key_name VARCHAR(255) PRIMARY KEY, value JSON)"


def bounded(seconds: float) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Fail a test that has not finished within `seconds` (a hung client must not stall CI)."""

    def wrap(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap


def connect_args(dsn: str) -> dict[str, Any]:
    """`root:@tcp(127.0.0.1:PORT)/test` → asyncmy arguments."""
    address = dsn.split("tcp(")[1].split(")")[0]
    host, port = address.rsplit(":", 1)
    return {"host": host, "port": int(port), "user": "root", "database": "test",
            "autocommit": True, "connect_timeout": 5}  # fmt: skip


@pytest.fixture(scope="module")
async def server() -> str:
    try:
        async with asyncio.timeout(10):
            conn = await asyncmy.connect(**connect_args(SHARED))
            conn.close()
    except Exception as exc:
        pytest.fail(
            f"MariaDB is not reachable at {SHARED!r} ({exc}); start it with `start-stop-daemon "
            "--start --oknodo --background --exec /usr/sbin/mariadbd` (see infra.md)"
        )
    return SHARED


@pytest.fixture
async def table(server: str) -> AsyncIterator[str]:
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    yield name
    await sql(server, f"DROP TABLE IF EXISTS {name}")


async def sql(dsn: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async with asyncio.timeout(10):
        conn = await asyncmy.connect(**connect_args(dsn))
        try:
            async with conn.cursor() as cur:
                await cur.execute(statement, params or None)
                return list(await cur.fetchall() or [])
        finally:
            conn.close()


def env(table: str, dsn: str = SHARED, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_MYSQL_ENABLE_T": "on",
        "RUSTFS_NOTIFY_MYSQL_DSN_STRING_T": dsn,
        "RUSTFS_NOTIFY_MYSQL_TABLE_T": table,
        "RUSTFS_NOTIFY_MYSQL_BACKOFF_MAX_T": "300ms",
        **{f"RUSTFS_NOTIFY_MYSQL_{k}_T": v for k, v in extra.items()},
    }


async def replay_all(pipe: Pipeline) -> None:
    """What `relay replay` does: queue every event of the log again for the sink."""
    _, queued = await pipe.log.replay(
        pipe.sink.name, 0, time.time() + 60, None, None, lambda e: True
    )
    assert queued > 0
    await pipe.settled()


async def deliver_twice(tmp_path: Path, config: dict[str, str], events: list[Event]) -> None:
    """Deliver, replay through the log, then once more through a second relay with a fresh
    log holding the same events (a restored or second relay)."""
    async with pipeline(tmp_path / "first", config) as pipe:
        await pipe.append(events)
        await pipe.settled()
        await replay_all(pipe)
        assert await pipe.dead_letters() == []
    async with pipeline(tmp_path / "second", config) as pipe:
        await pipe.append(events)
        await pipe.settled()
        assert await pipe.dead_letters() == []


def size(value: str) -> int:
    return int(json.loads(value)["Records"][0]["s3"]["object"]["size"])


# -- namespace --------------------------------------------------------------------------------


@bounded(30)
async def test_namespace_insert_overwrite_delete(tmp_path: Path, table: str) -> None:
    async with pipeline(tmp_path, env(table, FORMAT="namespace")) as pipe:
        await pipe.append([minio_event("b", "k1", 1), minio_event("b", "dir/k 2", 2)])
        await pipe.settled()
        first = dict(await sql(SHARED, f"SELECT key_name, value FROM {table}"))
        assert set(first) == {"b/k1", "b/dir/k 2"}  # bucket/decoded key
        assert json.loads(first["b/k1"])["EventName"] == "s3:ObjectCreated:Put"
        assert size(first["b/k1"]) == 101

        # in one batch: k1 written twice (last wins), k 2 removed, k3 created then removed
        await pipe.append([
            minio_event("b", "k1", 3),
            minio_event("b", "dir/k 2", 4, "s3:ObjectRemoved:Delete"),
            minio_event("b", "k3", 5),
            minio_event("b", "k1", 6),
            minio_event("b", "k3", 7, "s3:ObjectRemoved:DeleteMarkerCreated"),
        ])  # fmt: skip
        await pipe.settled()
        assert await pipe.dead_letters() == []
    rows = await sql(SHARED, f"SELECT key_name, key_hash, value FROM {table}")
    assert [(k, size(v)) for k, _, v in rows] == [("b/k1", 106)]
    assert rows[0][1] == (await sql(SHARED, "SELECT SHA2('b/k1', 256)"))[0][0]


@bounded(30)
async def test_namespace_replay_leaves_the_table_as_it_was(tmp_path: Path, table: str) -> None:
    events = [minio_event("b", f"k{n % 4}", n) for n in range(12)]
    events.append(minio_event("b", "k0", 12, "s3:ObjectRemoved:Delete"))
    await deliver_twice(tmp_path, env(table, FORMAT="namespace"), events)
    rows = await sql(SHARED, f"SELECT key_name, value FROM {table} ORDER BY key_name")
    assert [(k, size(v)) for k, v in rows] == [("b/k1", 109), ("b/k2", 110), ("b/k3", 111)]


@bounded(30)
async def test_minio_namespace_table_and_minio_delete_rule(tmp_path: Path, table: str) -> None:
    await sql(SHARED, MINIO_NAMESPACE.format(t=table))
    config = {  # MinIO's keys, MinIO's default format, MinIO's delete rule
        "MINIO_NOTIFY_MYSQL_ENABLE": "on",
        "MINIO_NOTIFY_MYSQL_DSN_STRING": SHARED,
        "MINIO_NOTIFY_MYSQL_TABLE": table,
        "MINIO_NOTIFY_MYSQL_DELETE_ON": "s3:ObjectRemoved:Delete",
    }
    async with pipeline(tmp_path, config) as pipe:
        await pipe.append([minio_event("b", "kept", 1), minio_event("b", "gone", 2)])
        await pipe.settled()
        await pipe.append([
            minio_event("b", "kept", 3, "s3:ObjectRemoved:DeleteMarkerCreated"),
            minio_event("b", "gone", 4, "s3:ObjectRemoved:Delete"),
        ])  # fmt: skip
        await pipe.settled()
        assert await pipe.dead_letters() == []
    rows = await sql(SHARED, f"SELECT key_name, value FROM {table}")
    assert [(k, json.loads(v)["EventName"]) for k, v in rows] == [
        ("b/kept", "s3:ObjectRemoved:DeleteMarkerCreated")
    ]


@bounded(30)
async def test_namespace_table_keyed_by_name(tmp_path: Path, table: str) -> None:
    await sql(SHARED, OWN_NAMESPACE.format(t=table))
    async with pipeline(tmp_path, env(table, FORMAT="namespace")) as pipe:
        await pipe.append([minio_event("b", "a", 1), minio_event("b", "z", 2)])
        await pipe.settled()
        await pipe.append([minio_event("b", "a", 3, "s3:ObjectRemoved:Delete")])
        await pipe.settled()
        assert await pipe.dead_letters() == []
    assert [k for k, _ in await sql(SHARED, f"SELECT key_name, value FROM {table}")] == ["b/z"]


# -- access -----------------------------------------------------------------------------------


@bounded(30)
async def test_access_appends_each_event_once_across_replays(tmp_path: Path, table: str) -> None:
    events = [minio_event("b", f"k{n % 2}", n) for n in range(6)]
    events.append(minio_event("b", "k0", 6, "s3:ObjectRemoved:Delete"))
    # RUSTFS_NOTIFY_MYSQL_* without FORMAT: access, the only format RustFS's target has
    await deliver_twice(tmp_path, env(table), events)
    rows = await sql(
        SHARED, f"SELECT event_id, event_time, event_name, key_name, event_data FROM {table}"
    )
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert {r[1] for r in rows} == {EVENT_TIME}
    by_id = {r[0]: r for r in rows}
    for event in events:
        _, _, name, key, value = by_id[event.event_id]
        assert (name, key) == (event.event_name, f"b/{event.key}")
        assert json.loads(value)["Records"][0]["eventName"] == event.event_name


@bounded(30)
async def test_rustfs_access_table(tmp_path: Path, table: str) -> None:
    await sql(SHARED, RUSTFS_ACCESS.format(t=table))
    events = [minio_event("b", "k", n) for n in range(4)]
    await deliver_twice(tmp_path, env(table, FORMAT="access"), events)
    rows = await sql(SHARED, f"SELECT event_id, event_time, event_data FROM {table}")
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert {r[1] for r in rows} == {EVENT_TIME}


@bounded(30)
async def test_minio_access_table_is_written_without_idempotence(
    tmp_path: Path, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    await sql(SHARED, MINIO_ACCESS.format(t=table))
    config = {
        "MINIO_NOTIFY_MYSQL_ENABLE_PRIMARY": "on",
        "MINIO_NOTIFY_MYSQL_DSN_STRING_PRIMARY": SHARED,
        "MINIO_NOTIFY_MYSQL_TABLE_PRIMARY": table,
        "MINIO_NOTIFY_MYSQL_FORMAT_PRIMARY": "access",
    }
    caplog.set_level(logging.WARNING, logger="relay.sinks.table")
    async with pipeline(tmp_path, config) as pipe:
        await pipe.append([minio_event("b", f"k{n}", n) for n in range(3)])
        await pipe.settled()
        rows = await sql(SHARED, f"SELECT event_time, event_data FROM {table}")
        assert sorted(json.loads(v)["Key"] for _, v in rows) == ["b/k0", "b/k1", "b/k2"]
        assert {t for t, _ in rows} <= {EVENT_TIME.replace(microsecond=0),
                                        datetime(2026, 3, 4, 10, 11, 12)}  # fmt: skip
        await replay_all(pipe)  # no event id in this table: a replay adds rows (documented)
    assert len(await sql(SHARED, f"SELECT 1 FROM {table}")) == 6
    assert any("not idempotent" in r.getMessage() for r in caplog.records)


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["namespace", "access"])
@bounded(30)
async def test_a_poison_event_is_dead_lettered_alone(tmp_path: Path, table: str, fmt: str) -> None:
    config = env(table, FORMAT=fmt)
    specs, _ = load_sinks(config, sinks.declared_options())
    await sql(SHARED, mysql.ddl(specs[0]))  # the DDL the sink prints is the DDL it runs
    await sql(SHARED, f"ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK (key_name <> 'b/p')")
    events = [minio_event("b", f"k{n}", n) for n in range(9)]
    events.insert(4, minio_event("b", "p", 99))
    async with pipeline(tmp_path, config) as pipe:
        await pipe.append(events)
        await pipe.settled()
        dead = await pipe.dead_letters()
        poison_seqs = await pipe.seqs_of("p")
    assert [seq for seq, _ in dead] == poison_seqs
    assert dead[0][1].startswith("4025") and "no_poison" in dead[0][1]
    keys = [k for (k,) in await sql(SHARED, f"SELECT key_name FROM {table} ORDER BY key_name")]
    assert keys == [f"b/k{n}" for n in range(9)]


@bounded(30)
async def test_a_table_of_the_wrong_shape_keeps_the_sink_down(tmp_path: Path, table: str) -> None:
    await sql(SHARED, MINIO_ACCESS.format(t=table))
    async with pipeline(tmp_path, env(table, FORMAT="namespace")) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
        assert await pipe.dead_letters() == []
        health = await pipe.sink.health()
    assert not health.ok and "FORMAT=access" in health.detail


@bounded(30)
async def test_a_connection_killed_while_idle_costs_no_failure(table: str) -> None:
    specs, _ = load_sinks(env(table, FORMAT="access"), sinks.declared_options())
    sink = sinks.create(specs[0])
    assert isinstance(sink, TableSink)
    await sink.start()
    try:
        assert await sink.send_batch([LogEntry(1, time.time(), minio_event("b", "k", 1))]) == [None]
        assert sink.connection.client is not None
        pool = sink.connection.client.pool
        threads = [conn.thread_id() for conn in pool._free]  # the pooled connections
        assert threads
        for thread in threads:  # what wait_timeout or a server restart does to them
            await sql(SHARED, f"KILL {int(thread)}")
        assert await sink.send_batch([LogEntry(2, time.time(), minio_event("b", "k", 2))]) == [None]
    finally:
        await sink.close()
    assert len(await sql(SHARED, f"SELECT 1 FROM {table}")) == 2


class CuttingProxy:
    """A TCP proxy to the shared server that can silently drop its open connections: the
    client's socket stays open (the pooled connection looks healthy) and breaks only on the
    next query, as after a NAT timeout or a server restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listen_port = 0
        self.live: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.cut: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for client, upstream in self.live:
            client.close()
            upstream.close()

    def cut_all(self) -> None:
        for client, upstream in self.live:
            upstream.close()
            self.cut.add(client)
        self.live.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.live.append((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if writer in self.cut:
                    break
                dst.write(data)
                await dst.drain()
            writer.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer),
                             return_exceptions=True)  # fmt: skip


@bounded(30)
async def test_a_dropped_pooled_connection_is_retried_on_a_fresh_pool(table: str) -> None:
    async with CuttingProxy(3306) as proxy:
        dsn = f"root:@tcp(127.0.0.1:{proxy.listen_port})/test"
        specs, _ = load_sinks(env(table, dsn=dsn, FORMAT="access"), sinks.declared_options())
        sink = sinks.create(specs[0])
        assert isinstance(sink, TableSink)
        await sink.start()
        try:
            assert await sink.send_batch([LogEntry(1, time.time(), minio_event("b", "k", 1))]) == [
                None
            ]
            first = sink.connection.client
            proxy.cut_all()  # 2013 "Lost connection" on the next query, not before
            assert await sink.send_batch([LogEntry(2, time.time(), minio_event("b", "k", 2))]) == [
                None
            ]
            assert sink.connection.client is not first  # rebuilt, and the batch did not fail
        finally:
            await sink.close()
    assert len(await sql(SHARED, f"SELECT 1 FROM {table}")) == 2


@bounded(30)
async def test_errors_never_show_the_password(tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55"
    for dsn in (f"relay:{secret}@tcp(127.0.0.1:1)/test", f"mysql://relay:{secret}@127.0.0.1:1/t"):
        specs, _ = load_sinks(env("t", dsn=dsn, TIMEOUT="2s"), sinks.declared_options())
        sink = sinks.create(specs[0])
        health = await sink.health()
        with pytest.raises(Exception) as failure:
            await sink.start()
        await sink.close()
        assert not health.ok
        # what the dispatcher, `relay check` and the admin API show of an error
        shown = redact.for_spec(specs[0])
        for text in (health.detail, str(failure.value)):
            assert "2003" in text, text  # the failure is told: cannot connect
            assert secret not in shown(text) and secret not in shown(f"{text} ({dsn})")
        assert secret not in repr(specs[0].redacted())


def test_dsn_forms() -> None:
    def args(dsn: str) -> dict[str, Any]:
        specs, _ = load_sinks(env("t", dsn=dsn), sinks.declared_options())
        sink = sinks.create(specs[0])
        assert isinstance(sink, TableSink) and isinstance(sink.dialect, mysql.MySQL)
        return sink.dialect.connect_args

    go = args("us:p@ss:w/rd@tcp(db.example:3307)/events?tls=skip-verify&parseTime=true")
    assert (go["user"], go["password"], go["host"], go["port"], go["database"]) == (
        "us", "p@ss:w/rd", "db.example", 3307, "events")  # fmt: skip
    assert go["ssl"].verify_mode == 0  # skip-verify
    url = args("mysql://us:p%40ss@[::1]/events")
    assert (url["user"], url["password"], url["host"], url["port"]) == ("us", "p@ss", "::1", 3306)
    sock = args("root@unix(/run/mysqld/mysqld.sock)/events")
    assert sock["unix_socket"] == "/run/mysqld/mysqld.sock" and "ssl" not in sock


def test_config_errors_name_the_variable() -> None:
    for extra, variable in (
        ({"DSN_STRING": "not a dsn"}, "DSN_STRING_T"),
        ({"DSN_STRING": "root@tcp(h:3306)/"}, "DSN_STRING_T"),
        ({"DELETE_ON": "s3:Object*"}, "DELETE_ON_T"),
        ({"TABLE": "a.b.c"}, "TABLE_T"),
        ({"TLS_CLIENT_CERT": "/c.pem"}, "TLS_CLIENT_KEY_T"),
    ):
        with pytest.raises(ConfigError, match=variable):
            sinks.create(load_sinks({**env("t"), **{
                f"RUSTFS_NOTIFY_MYSQL_{k}_T": v for k, v in extra.items()}},
                sinks.declared_options())[0][0])  # fmt: skip


# -- outages (a private server, stopped and started again) -------------------------------------


@bounded(60)
async def test_outage_mid_stream_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    with private_mariadb() as db:
        config = env("events", dsn=db.dsn, FORMAT="access", BATCH_SIZE="10", TIMEOUT="2s")
        events = [minio_event("b", f"k{n}", n) for n in range(1200)]
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events[:1000])

            # some batches are in (the cursor moves once their transaction committed)
            await eventually(lambda: pipe.dispatcher.cursor >= 20, timeout=20)
            await asyncio.to_thread(db.stop, True)  # SIGKILL: like a crash, mid-stream
            await pipe.append(events[1000:])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=20)
            await asyncio.to_thread(db.start)
            await pipe.settled(timeout=40)
            assert await pipe.dead_letters() == []
        rows = await sql(db.dsn, "SELECT event_id FROM events")
    assert len(rows) == 1200
    assert {r[0] for r in rows} == {e.event_id for e in events}


@bounded(45)
async def test_started_with_the_database_down(tmp_path: Path) -> None:
    with private_mariadb(started=False) as db:
        config = env("events", dsn=db.dsn, FORMAT="namespace", TIMEOUT="2s")
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", f"k{n}", n) for n in range(5)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=20)
            await asyncio.to_thread(db.start)
            await pipe.settled(timeout=30)
            assert pipe.dispatcher.up is True
        rows = await sql(db.dsn, "SELECT key_name FROM events ORDER BY key_name")
    assert [k for (k,) in rows] == [f"b/k{n}" for n in range(5)]


def test_ddl_is_printable() -> None:
    specs, _ = load_sinks(env("audit.access_log"), sinks.declared_options())
    text = mysql.ddl(specs[0])
    assert "CREATE TABLE IF NOT EXISTS `audit`.`access_log`" in text
    assert "event_id   VARCHAR(64) NOT NULL PRIMARY KEY" in text
