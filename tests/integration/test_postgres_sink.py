"""The PostgreSQL sink against a real PostgreSQL 15 (the shared one on 5432, db `test`; a
private instance for outages), driven by the real dispatcher and log."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay import sinks
from relay.config import ConfigError, load_sinks
from relay.events import Event
from relay.queue.log import LogEntry
from relay.sinks import redact
from relay.sinks.table import postgres
from relay.sinks.table.sink import TableSink
from tests.support.databases import private_postgres
from tests.support.pipeline import Pipeline, minio_event, pipeline
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

SHARED = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"
EVENT_TIME = datetime(2026, 3, 4, 10, 11, 12, 345000, tzinfo=UTC)  # tests.support.bodies

MINIO_NAMESPACE = "CREATE TABLE {t} (key VARCHAR PRIMARY KEY, value JSONB)"
MINIO_ACCESS = "CREATE TABLE {t} (event_time TIMESTAMP WITH TIME ZONE NOT NULL, event_data JSONB)"
RUSTFS_ACCESS = (
    "CREATE TABLE {t} (event_id VARCHAR PRIMARY KEY, event_name VARCHAR NOT NULL, "
    "key VARCHAR NOT NULL, value JSONB NOT NULL, queued_at_ms BIGINT NOT NULL)"
)


def bounded(seconds: float) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Fail a test that has not finished within `seconds` (a hung client must not stall CI)."""

    def wrap(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap


@pytest.fixture(scope="module")
async def server() -> str:
    try:
        async with asyncio.timeout(10):
            conn = await psycopg.AsyncConnection.connect(SHARED, autocommit=True)
            await conn.close()
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {SHARED!r} ({exc}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect 15 main start` (see infra.md)"
        )
    return SHARED


@pytest.fixture
async def table(server: str) -> AsyncIterator[str]:
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    yield name
    await sql(server, f"DROP TABLE IF EXISTS {name}")


async def sql(dsn: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async with asyncio.timeout(10):
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            cur = await conn.execute(statement, params)
            return await cur.fetchall() if cur.description else []
        finally:
            await conn.close()


def env(table: str, dsn: str = SHARED, **extra: str) -> dict[str, str]:
    return {
        "RUSTFS_NOTIFY_POSTGRES_ENABLE_T": "on",
        "RUSTFS_NOTIFY_POSTGRES_DSN_STRING_T": dsn,
        "RUSTFS_NOTIFY_POSTGRES_TABLE_T": table,
        "RUSTFS_NOTIFY_POSTGRES_BACKOFF_MAX_T": "300ms",
        **{f"RUSTFS_NOTIFY_POSTGRES_{k}_T": v for k, v in extra.items()},
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


def size(value: Any) -> int:
    return int(value["Records"][0]["s3"]["object"]["size"])


# -- namespace --------------------------------------------------------------------------------


@bounded(30)
async def test_namespace_insert_overwrite_delete(tmp_path: Path, table: str) -> None:
    async with pipeline(tmp_path, env(table)) as pipe:
        await pipe.append([minio_event("b", "k1", 1), minio_event("b", "dir/k 2", 2)])
        await pipe.settled()
        first = dict(await sql(SHARED, f"SELECT key, value FROM {table}"))
        assert set(first) == {"b/k1", "b/dir/k 2"}  # bucket/decoded key
        assert first["b/k1"]["EventName"] == "s3:ObjectCreated:Put"
        assert first["b/k1"]["Key"] == "b/k1" and size(first["b/k1"]) == 101

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
    rows = await sql(SHARED, f"SELECT key, value FROM {table}")
    assert [(k, size(v)) for k, v in rows] == [("b/k1", 106)]


@bounded(30)
async def test_namespace_replay_leaves_the_table_as_it_was(tmp_path: Path, table: str) -> None:
    events = [minio_event("b", f"k{n % 4}", n) for n in range(12)]
    events.append(minio_event("b", "k0", 12, "s3:ObjectRemoved:Delete"))
    await deliver_twice(tmp_path, env(table, FORMAT="namespace"), events)
    rows = await sql(SHARED, f"SELECT key, value FROM {table} ORDER BY key")
    assert [(k, size(v)) for k, v in rows] == [("b/k1", 109), ("b/k2", 110), ("b/k3", 111)]


@bounded(30)
async def test_minio_namespace_table_and_minio_delete_rule(tmp_path: Path, table: str) -> None:
    await sql(SHARED, MINIO_NAMESPACE.format(t=table))
    config = {
        "MINIO_NOTIFY_POSTGRES_ENABLE": "on",
        "MINIO_NOTIFY_POSTGRES_CONNECTION_STRING": "postgresql://postgres@127.0.0.1:5432/test",
        "MINIO_NOTIFY_POSTGRES_TABLE": table.upper(),  # unquoted: folded, as MinIO's SQL is
        "MINIO_NOTIFY_POSTGRES_FORMAT": "namespace",
        "MINIO_NOTIFY_POSTGRES_DELETE_ON": "s3:ObjectRemoved:Delete",  # what MinIO does
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
    rows = await sql(SHARED, f"SELECT key, value->'Records'->0->>'eventName' FROM {table}")
    assert rows == [("b/kept", "s3:ObjectRemoved:DeleteMarkerCreated")]


# -- access -----------------------------------------------------------------------------------


@bounded(30)
async def test_access_appends_each_event_once_across_replays(tmp_path: Path, table: str) -> None:
    events = [minio_event("b", f"k{n % 2}", n) for n in range(6)]
    events.append(minio_event("b", "k0", 6, "s3:ObjectRemoved:Delete"))
    await deliver_twice(tmp_path, env(table, FORMAT="access"), events)
    rows = await sql(
        SHARED, f"SELECT event_id, event_time, event_name, key, value FROM {table} ORDER BY key"
    )
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert {r[1] for r in rows} == {EVENT_TIME}
    by_id = {r[0]: r for r in rows}
    for event in events:
        _, _, name, key, value = by_id[event.event_id]
        assert (name, key) == (event.event_name, f"b/{event.key}")
        assert value["Records"][0]["eventName"] == event.event_name


@bounded(30)
async def test_access_event_time_falls_back_to_receipt(tmp_path: Path, table: str) -> None:
    event = minio_event("b", "k", 1)
    event.event_time = "not a time"
    before = datetime.now(UTC)
    async with pipeline(tmp_path, env(table, FORMAT="access")) as pipe:
        await pipe.append([event])
        await pipe.settled()
    ((stamp,),) = await sql(SHARED, f"SELECT event_time FROM {table}")
    assert before.timestamp() - 1 <= stamp.timestamp() <= time.time() + 1


@bounded(30)
async def test_rustfs_access_table(tmp_path: Path, table: str) -> None:
    await sql(SHARED, RUSTFS_ACCESS.format(t=table))
    events = [minio_event("b", "k", n) for n in range(4)]
    await deliver_twice(tmp_path, env(table, FORMAT="access"), events)
    rows = await sql(SHARED, f"SELECT event_id, event_name, key, value, queued_at_ms FROM {table}")
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert {(r[1], r[2]) for r in rows} == {("s3:ObjectCreated:Put", "b/k")}
    assert all(abs(r[4] / 1000 - time.time()) < 60 for r in rows)


@bounded(30)
async def test_minio_access_table_is_written_without_idempotence(
    tmp_path: Path, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    await sql(SHARED, MINIO_ACCESS.format(t=table))
    config = {
        "MINIO_NOTIFY_POSTGRES_ENABLE_PRIMARY": "on",
        "MINIO_NOTIFY_POSTGRES_CONNECTION_STRING_PRIMARY": SHARED,
        "MINIO_NOTIFY_POSTGRES_TABLE_PRIMARY": table,
        "MINIO_NOTIFY_POSTGRES_FORMAT_PRIMARY": "access",
    }
    caplog.set_level(logging.WARNING, logger="relay.sinks.table")
    async with pipeline(tmp_path, config) as pipe:
        await pipe.append([minio_event("b", f"k{n}", n) for n in range(3)])
        await pipe.settled()
        rows = await sql(SHARED, f"SELECT event_time, event_data FROM {table}")
        assert sorted(v["Key"] for _, v in rows) == ["b/k0", "b/k1", "b/k2"]
        assert {t for t, _ in rows} == {EVENT_TIME}
        await replay_all(pipe)  # no event id in this table: a replay adds rows (documented)
    assert len(await sql(SHARED, f"SELECT 1 FROM {table}")) == 6
    assert any("not idempotent" in r.getMessage() for r in caplog.records)


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["namespace", "access"])
@bounded(30)
async def test_a_poison_event_is_dead_lettered_alone(tmp_path: Path, table: str, fmt: str) -> None:
    config = env(table, FORMAT=fmt)
    specs, _ = load_sinks(config, sinks.declared_options())
    await sql(SHARED, postgres.ddl(specs[0]))  # the DDL the sink prints is the DDL it runs
    await sql(SHARED, f"ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK (key <> 'b/poison')")
    events = [minio_event("b", f"k{n}", n) for n in range(9)]
    events.insert(4, minio_event("b", "poison", 99))
    async with pipeline(tmp_path, config) as pipe:
        await pipe.append(events)
        await pipe.settled()
        dead = await pipe.dead_letters()
        poison_seqs = await pipe.seqs_of("poison")
    assert [seq for seq, _ in dead] == poison_seqs
    assert dead[0][1].startswith("23514") and "no_poison" in dead[0][1]
    keys = [k for (k,) in await sql(SHARED, f"SELECT key FROM {table} ORDER BY key")]
    assert keys == [f"b/k{n}" for n in range(9)]


@bounded(30)
async def test_a_table_of_the_wrong_shape_keeps_the_sink_down(tmp_path: Path, table: str) -> None:
    await sql(SHARED, MINIO_NAMESPACE.format(t=table))
    async with pipeline(tmp_path, env(table, FORMAT="access")) as pipe:
        await pipe.append([minio_event("b", "k", 1)])
        await eventually(lambda: pipe.dispatcher.up is False, timeout=10)
        assert await pipe.dead_letters() == []
        health = await pipe.sink.health()
    assert not health.ok and "FORMAT=namespace" in health.detail


@bounded(30)
async def test_a_connection_killed_while_idle_costs_no_failure(table: str) -> None:
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    specs, _ = load_sinks(
        env(table, dsn=f"{SHARED} application_name={name}", FORMAT="access"),
        sinks.declared_options(),
    )
    sink = sinks.create(specs[0])
    assert isinstance(sink, TableSink)
    await sink.start()
    try:
        assert await sink.send_batch([LogEntry(1, time.time(), minio_event("b", "k", 1))]) == [None]
        killed = await sql(
            SHARED,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        assert killed and all(ok for (ok,) in killed)
        assert await sink.send_batch([LogEntry(2, time.time(), minio_event("b", "k", 2))]) == [None]
    finally:
        await sink.close()
    assert len(await sql(SHARED, f"SELECT 1 FROM {table}")) == 2


@bounded(30)
async def test_errors_never_show_the_password(tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55"
    dsn = f"postgresql://relay:{secret}@127.0.0.1:1/test"  # nothing listens on port 1
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
        assert "Connection refused" in text, text  # the failure is told
        assert secret not in shown(text) and secret not in shown(f"{text} ({dsn})")
    assert secret not in repr(specs[0].redacted())


def test_config_errors_name_the_variable() -> None:
    both = env("t", CONNECTION_STRING=SHARED)
    with pytest.raises(ConfigError, match="both set"):
        sinks.create(load_sinks(both, sinks.declared_options())[0][0])
    bad = env("t", DELETE_ON="s3:Object*")
    with pytest.raises(ConfigError, match="DELETE_ON_T"):
        sinks.create(load_sinks(bad, sinks.declared_options())[0][0])
    bad_table = env("a.b.c")
    with pytest.raises(ConfigError, match="TABLE_T"):
        sinks.create(load_sinks(bad_table, sinks.declared_options())[0][0])


# -- outages (a private server, stopped and started again) -------------------------------------


@bounded(60)
async def test_outage_mid_stream_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    with private_postgres() as db:
        config = env("events", dsn=db.dsn, FORMAT="access", BATCH_SIZE="10", TIMEOUT="2s")
        events = [minio_event("b", f"k{n}", n) for n in range(1200)]
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append(events[:1000])

            # some batches are in (the cursor moves once their transaction committed)
            await eventually(lambda: pipe.dispatcher.cursor >= 20, timeout=20)
            await asyncio.to_thread(db.stop, "immediate")  # like a crash, mid-stream
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
    with private_postgres(started=False) as db:
        config = env("events", dsn=db.dsn, FORMAT="namespace", TIMEOUT="2s")
        async with pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", f"k{n}", n) for n in range(5)])
            await eventually(lambda: pipe.dispatcher.up is False, timeout=20)
            await asyncio.to_thread(db.start)
            await pipe.settled(timeout=30)
            assert pipe.dispatcher.up is True
        rows = await sql(db.dsn, "SELECT key FROM events ORDER BY key")
    assert [k for (k,) in rows] == [f"b/k{n}" for n in range(5)]


def test_ddl_is_printable() -> None:
    specs, _ = load_sinks(env('audit."Access Log"', FORMAT="access"), sinks.declared_options())
    text = postgres.ddl(specs[0])
    assert 'CREATE TABLE IF NOT EXISTS "audit"."Access Log"' in text
    assert "event_id   VARCHAR(64) PRIMARY KEY" in text
    assert 'CREATE INDEX IF NOT EXISTS "Access Log_event_time_idx" ON "audit"."Access Log"' in text
